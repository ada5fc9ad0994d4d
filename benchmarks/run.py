"""``make bench``: run every benchmark and rewrite its results block in BENCHMARKS.md.

Modes (``--mode``): ``quick`` (``make bench``: 3 runs per figure, small datasets, a
few minutes on 2 cores), ``full`` (``make bench-full``: 5 runs, the issues' full sizes
up to 100M trades, an hour or more) and ``tiny`` (seconds per group, meaningless
numbers: the harness's own test). Each group rewrites its ``<!-- results:NAME -->``
block as soon as it has run, then the ``header`` block is rewritten with the machine,
the versions, the commit, the load and the time each group took.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_backfill,
    bench_capture,
    bench_decode,
    bench_log_embedded,
    bench_log_kafka,
    bench_query,
    bench_scaling,
    bench_sink,
    environment,
)
from benchmarks.harness import Result, render
from k2.errors import ConfigError
from k2.ops.log import configure_logging

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


@dataclass(frozen=True)
class Group:
    """One results block: how to run it (``run(runs, **sizes)``) and render it."""

    run: Callable[..., list[Result]]
    render: Callable[[list[Result], str], str] = render


#: Every benchmark group, in the order they run and appear.
GROUPS: dict[str, Group] = {
    "decode": Group(bench_decode.run),
    "capture": Group(bench_capture.run),
    "log-embedded": Group(bench_log_embedded.run),
    "log-kafka": Group(bench_log_kafka.run),
    "sink": Group(bench_sink.run),
    "backfill": Group(bench_backfill.run),
    "query": Group(bench_query.run, bench_query.render),
    "scaling": Group(bench_scaling.run, bench_scaling.render),
}


@dataclass(frozen=True)
class Mode:
    """Runs per figure and, per group, the keyword arguments of its ``run``."""

    runs: int
    about: str
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)


M = 1_000_000
MODES: dict[str, Mode] = {
    "full": Mode(
        5,
        "5 runs per figure; the full datasets: query 100M trades, scaling up to 100M trades",
        {"scaling": {"plan": bench_scaling.Plan()}},
    ),
    "quick": Mode(
        3,
        "3 runs per figure; query on 2M trades (30 s per question type, 10 s of API "
        "load); scaling at 1M and 10M trades and 5/100/1000 symbols",
        {
            "capture": {"seconds": 4.0},
            "log-kafka": {"total": 100_000},
            "query": {"trades": bench_query.QUICK_TRADES, "budget_s": 30.0, "api_seconds": 10.0},
            "scaling": {
                "plan": bench_scaling.Plan(
                    capture_frames=100_000,
                    sink_trades=(M, 10 * M),
                    query_trades=(M, 10 * M),
                    questions=60,
                    budget_s=30.0,
                )
            },
        },
    ),
    "tiny": Mode(
        1,
        "1 run per figure on tiny inputs: checks the harness end to end, numbers meaningless",
        {
            "decode": {"total": 20_000},
            "capture": {"seconds": 2.0},
            "log-embedded": {"total": 20_000},
            "log-kafka": {"total": 20_000},
            "sink": {"total": 100_000},
            "backfill": {"trades": 50_000},
            "query": {"trades": 100_000, "budget_s": 2.0, "api_seconds": 2.0},
            "scaling": {
                "plan": bench_scaling.Plan(
                    capture_symbols=(5, 50),
                    capture_frames=10_000,
                    sink_trades=(50_000, 100_000),
                    query_trades=(100_000, 200_000),
                    symbols=(5, 50),
                    symbols_trades=100_000,
                    questions=5,
                    budget_s=2.0,
                )
            },
        },
    ),
}


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the ``<!-- results:NAME -->`` block's content replaced by ``body``."""
    start, end = f"<!-- results:{name}:start -->", f"<!-- results:{name}:end -->"
    if start not in text or end not in text:
        raise ConfigError(
            f"BENCHMARKS.md has no {start} … {end} block: restore it (see the file in git) "
            "or run the other groups with --only"
        )
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def render_header(
    facts: dict[str, str],
    mode: str,
    argv: list[str],
    timings: dict[str, float],
    wanted: list[str],
) -> str:
    """The header block: what ran, how long, on what machine and software."""
    done = list(timings)
    total = sum(timings.values())
    ran = ", ".join(f"{name} {_duration(s)}" for name, s in timings.items())
    pending = [n for n in wanted if n not in timings]
    status = f"took {_duration(total)}" if not pending else f"still running {pending[0]}"
    kept = [n for n in GROUPS if n not in done]
    peer = bench_decode.peer_version()
    versions = ", ".join(f"{k} {v}" for k, v in environment.versions().items())
    command = shlex.join(["python", "-m", "benchmarks.run", *argv])
    lines = [
        f"Last run: `{command}` ({mode} mode: {MODES[mode].about}), {status}: "
        f"{ran or 'nothing yet'}.",
    ]
    if kept:
        lines.append(
            f"Blocks not rewritten by that run ({', '.join(kept)}) keep the figures and "
            "the footer line of the run that wrote them."
        )
    lines += [
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in facts.items()),
        f"| load average at end (this run included) | {environment.load_average()} |",
        f"| libraries | {versions} |",
        f"| peers | {peer} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), run the groups, rewrite the file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--quick", action="store_true", help="the same as --mode quick")
    parser.add_argument("--runs", type=int, help="runs per figure (default: the mode's)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the file")
    parser.add_argument(
        "--file", type=Path, default=BENCHMARKS_MD, help="the file to rewrite (BENCHMARKS.md)"
    )
    parser.add_argument(
        "--only", choices=list(GROUPS), action="append", help="run only these (repeatable)"
    )
    parser.add_argument(
        "--trades",
        type=int,
        help="query: trades in the synthetic table (default: the mode's; full: "
        "K2_BENCH_QUERY_TRADES or 100,000,000)",
    )
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else args.mode
    mode = MODES[mode_name]
    runs = args.runs or mode.runs
    configure_logging("console", "ERROR")
    facts = environment.facts()
    text = args.file.read_text()
    wanted = args.only or list(GROUPS)
    for name in ("header", *wanted):  # a missing block fails now, not after the run
        replace_block(text, name, "")
    timings: dict[str, float] = {}
    flags = ["--mode", mode_name] if mode_name != "full" else []
    if args.runs:
        flags += ["--runs", str(args.runs)]
    for name in wanted:
        sizes = dict(mode.sizes.get(name, {}))
        command = shlex.join(["python", "-m", "benchmarks.run", *flags, "--only", name])
        if name == "query" and args.trades:
            sizes["trades"] = args.trades
            command += f" --trades {args.trades}"
        began = time.monotonic()
        results = GROUPS[name].run(runs, **sizes)
        timings[name] = time.monotonic() - began
        block = GROUPS[name].render(results, command)
        print(f"## {name} ({_duration(timings[name])})\n{block}", flush=True)
        # Read again: the file may have been edited (another block, the prose) meanwhile.
        text = text if args.no_write else args.file.read_text()
        text = replace_block(text, name, block)
        header = render_header(facts, mode_name, argv, timings, wanted)
        text = replace_block(text, "header", header)
        if not args.no_write:
            args.file.write_text(text)
    print(render_header(facts, mode_name, argv, timings, wanted))


if __name__ == "__main__":
    main()
