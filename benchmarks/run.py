"""``make bench``: run every benchmark and rewrite BENCHMARKS.md's results section."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks import bench_capture, bench_decode
from benchmarks.harness import Result, render

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per benchmark (median)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the file")
    args = parser.parse_args()
    results: list[Result] = [bench_decode.run(args.runs), *bench_capture.run(args.runs)]
    table = render(results, f"make bench (python -m benchmarks.run --runs {args.runs})")
    print(table)
    if not args.no_write:
        text = BENCHMARKS_MD.read_text()
        block = f"{START}\n{table}\n{END}"
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), block, text, flags=re.S)
        BENCHMARKS_MD.write_text(text)


if __name__ == "__main__":
    main()
