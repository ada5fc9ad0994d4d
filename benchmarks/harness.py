"""The shared harness: repeat a measurement, report median and spread, render a table."""

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

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.runs), max(self.runs)

    @property
    def meets_goal(self) -> bool | None:
        return None if self.goal is None else self.median >= self.goal


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


def render(results: list[Result], command: str) -> str:
    """A Markdown section for ``results``."""
    lines = [
        "| benchmark | median | min – max | runs | goal | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        low, high = r.spread
        goal = f"≥ {fmt(r.goal)} {r.unit}" if r.goal is not None else "–"
        met = {None: "–", True: "yes", False: "**no**"}[r.meets_goal]
        lines.append(
            f"| {r.name} | {fmt(r.median)} {r.unit} | {fmt(low)} – {fmt(high)} | "
            f"{len(r.runs)} | {goal} | {met} |"
        )
    notes = [f"- **{r.name}**: {r.notes}" for r in results if r.notes]
    info = machine()
    env = ", ".join(f"{k} {v}" for k, v in info.items())
    return "\n".join([*lines, "", *notes, "", f"Command: `{command}`. Machine: {env}.", ""])
