"""``make bench``: run every benchmark and rewrite its results block in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    bench_backfill,
    bench_capture,
    bench_decode,
    bench_log_embedded,
    bench_log_kafka,
    bench_query,
    bench_sink,
)
from benchmarks.harness import Result, render
from benchmarks.query_data import DEFAULT_TRADES
from k2.ops.log import configure_logging

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
#: Every benchmark: name → run(runs) returning its results.
BENCHMARKS: dict[str, Callable[[int], list[Result]]] = {
    "decode": lambda runs: [bench_decode.run(runs)],
    "capture": bench_capture.run,
    "log-embedded": bench_log_embedded.run,
    "log-kafka": bench_log_kafka.run,
    "sink": bench_sink.run,
    "backfill": bench_backfill.run,
    "query": bench_query.run,
}
#: Groups whose results block has its own layout (name → render(results, command)).
RENDERERS: dict[str, Callable[[list[Result], str], str]] = {"query": bench_query.render}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per benchmark (median)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the file")
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="run only these (repeatable)"
    )
    parser.add_argument(
        "--trades",
        type=int,
        help="query: trades in the synthetic table (default: K2_BENCH_QUERY_TRADES or "
        f"100,000,000; {bench_query.QUICK_TRADES:,} makes a quick run)",
    )
    args = parser.parse_args()
    configure_logging("console", "ERROR")
    if args.trades is not None:
        BENCHMARKS["query"] = functools.partial(bench_query.run, trades=args.trades)
    text = BENCHMARKS_MD.read_text()
    for name in args.only or BENCHMARKS:
        results = BENCHMARKS[name](args.runs)
        command = f"python -m benchmarks.run --only {name} --runs {args.runs}"
        if name == "query" and (args.trades or bench_query.trades_setting()) != DEFAULT_TRADES:
            command += f" --trades {args.trades or bench_query.trades_setting()}"
        table = RENDERERS.get(name, render)(results, command)
        print(f"## {name}\n{table}")
        start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
        if start not in text:
            raise SystemExit(f"BENCHMARKS.md has no {start} block")
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{table}\n{end}{rest.split(end, 1)[1]}"
    if not args.no_write:
        BENCHMARKS_MD.write_text(text)


if __name__ == "__main__":
    main()
