"""The shared harness: repeat a measurement, report median and spread, render a table.

A :class:`Result` is one figure over several runs. A peer's figure names the K2 figure
it is measured against (``peer_of``), and the table then shows K2's ratio to it, both
from the same run. A result with ``extra["kind"] == "dataset"`` is not a figure but
the block's dataset description, printed above the table.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata


@dataclass
class Result:
    """One benchmark's outcome: a rate (higher is better) over several runs."""

    name: str
    unit: str
    runs: list[float]
    goal: float | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: For a peer's figure: the name of the K2 figure it is compared with.
    peer_of: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.runs), max(self.runs)

    @property
    def meets_goal(self) -> bool | None:
        return None if self.goal is None else self.median >= self.goal

    @property
    def higher_is_better(self) -> bool:
        """Rates (``…/s``) are better high; times and sizes are better low."""
        return self.unit.endswith("/s")


def dataset_result(text: str) -> Result:
    """A block's dataset description, carried with its results."""
    return Result("dataset", "", [], notes=text, extra={"kind": "dataset"})


def is_dataset(result: Result) -> bool:
    return result.extra.get("kind") == "dataset"


def speedup(k2: Result, peer: Result) -> float:
    """How many times better K2's median is than the peer's (above 1: K2 is better),
    whichever direction the unit runs."""
    if k2.higher_is_better:
        return k2.median / peer.median
    return peer.median / k2.median


def repeat(measure: Callable[[], float], runs: int) -> list[float]:
    """Call ``measure`` ``runs`` times (after one warm-up call) and return its values."""
    measure()
    return [measure() for _ in range(runs)]


def machine() -> dict[str, str]:
    """Facts about the machine and the versions that produced a result table."""
    versions = {
        name: metadata.version(name)
        for name in ("msgspec", "pyarrow", "websockets", "aiohttp", "confluent-kafka", "fastavro")
    }
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        **versions,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def describe_speedup(factor: float) -> str:
    """``2.10× faster`` or ``1.60× slower``: K2 against a peer, never a fraction."""
    if factor >= 1:
        return f"K2 {factor:.2f}× faster"
    return f"K2 {1 / factor:.2f}× slower"


def footer(command: str) -> str:
    """The last line of a results block: the command, when, on what, which commit."""
    from benchmarks.environment import stamp

    return f"Command: `{command}`. Ran {stamp()}; versions in the header above."


def render(results: list[Result], command: str) -> str:
    """A Markdown section for ``results``: dataset, table (with K2's ratio to each
    peer measured in the same run), notes, command."""
    data = [f"Dataset: {r.notes}" for r in results if is_dataset(r)]
    figures = [r for r in results if not is_dataset(r)]
    by_name = {r.name: r for r in figures}
    lines = [
        "| benchmark | median | min – max | runs | goal | met | K2 vs this peer |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in figures:
        if not r.runs:  # a figure that could not be measured here: its note says why
            lines.append(f"| {r.name} | not measured | – | 0 | – | – | – |")
            continue
        low, high = r.spread
        goal = f"≥ {fmt(r.goal)} {r.unit}" if r.goal is not None else "–"
        met = {None: "–", True: "yes", False: "**no**"}[r.meets_goal]
        k2 = by_name.get(r.peer_of or "")
        ratio = describe_speedup(speedup(k2, r)) if k2 is not None and k2.runs else "–"
        lines.append(
            f"| {r.name} | {fmt(r.median)} {r.unit} | {fmt(low)} – {fmt(high)} | "
            f"{len(r.runs)} | {goal} | {met} | {ratio} |"
        )
    notes = [f"- **{r.name}**: {r.notes}" for r in figures if r.notes]
    return "\n".join([*data, *([""] if data else []), *lines, "", *notes, "", footer(command), ""])
