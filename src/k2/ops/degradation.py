"""Graceful degradation: shed the least important data first when K2 falls behind.

:class:`DegradationManager` turns two pressures — how far the log lags (seconds, and
optionally records) and how much memory the process holds — into one of five levels.
Pressure reaching a level's enter threshold raises the level at once, several levels
in one step if need be. Recovery is deliberately slow: a level is left only when every
pressure is below its threshold × (1 − ``hysteresis``), and only after ``cooldown_s``
at that level, one level at a time.

What each level sheds (tier 1 = the most important symbols, tier 3 = the rest)::

    level              trades          quotes
    NORMAL (0)         none            none
    SOFT (1)           none            tier 3
    GRACEFUL (2)       tier 3          tiers 2-3
    AGGRESSIVE (3)     tiers 2-3       all
    CIRCUIT_BREAK (4)  all             all

Shedding never loses data silently. Shed trades go into a :class:`ShedLedger` as
trade-id ranges; once the level recovers, the ranges are drained into gap records and
backfill requests, so the lake still ends up complete. A quote is a snapshot that the
next one supersedes and cannot be fetched again, so shed quotes are counted instead.

The decisions here are pure bookkeeping on an injected clock; the capture wiring
measures the pressures and acts on the answers.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import NoDecode

from k2.errors import TerminalError
from k2.ops.log import get_logger

#: What can be shed (the same values as :data:`k2.config.DataType`, which imports this).
DataType = Literal["trade", "quote"]

__all__ = [
    "DegradationManager",
    "DegradationSettings",
    "Level",
    "LevelChange",
    "ShedLedger",
    "ShedRange",
    "Thresholds",
    "memory_limit_bytes",
    "process_memory_fraction",
    "process_rss_bytes",
    "sheds",
]

_log = get_logger(__name__)


class Level(IntEnum):
    """A degradation level; the value is the gauge reading."""

    NORMAL = 0
    SOFT = 1
    GRACEFUL = 2
    AGGRESSIVE = 3
    CIRCUIT_BREAK = 4


# Highest tier still kept, per level and data type (tier > kept → shed): the table above.
_KEPT_TIER: dict[Level, dict[str, int]] = {
    Level.NORMAL: {"trade": 3, "quote": 3},
    Level.SOFT: {"trade": 3, "quote": 2},
    Level.GRACEFUL: {"trade": 2, "quote": 1},
    Level.AGGRESSIVE: {"trade": 1, "quote": 0},
    Level.CIRCUIT_BREAK: {"trade": 0, "quote": 0},
}


def sheds(level: Level, tier: int, data_type: DataType) -> bool:
    """Whether ``level`` sheds ``data_type`` of a symbol in ``tier`` (1-3)."""
    return tier > _KEPT_TIER[level][data_type]


class Thresholds(BaseModel):
    """One pressure's enter thresholds for the levels above NORMAL, strictly rising."""

    model_config = ConfigDict(frozen=True)

    soft: float = Field(gt=0)
    graceful: float = Field(gt=0)
    aggressive: float = Field(gt=0)
    circuit_break: float = Field(gt=0)

    @model_validator(mode="after")
    def _rising(self) -> Thresholds:
        if not self.soft < self.graceful < self.aggressive < self.circuit_break:
            raise ValueError(
                "thresholds must rise strictly: soft < graceful < aggressive < circuit_break"
            )
        return self

    def enter(self, level: Level) -> float:
        """The pressure at which ``level`` (SOFT or above) is entered."""
        return (self.soft, self.graceful, self.aggressive, self.circuit_break)[level - 1]


def _symbols(v: Any) -> Any:
    if isinstance(v, str):
        v = [s for s in (part.strip() for part in v.split(",")) if s]
    return [str(s).upper() for s in v] if isinstance(v, list) else v


class DegradationSettings(BaseModel):
    """When to degrade, how fast to recover, and which symbols matter most."""

    enabled: bool = Field(True, description="shed by priority when the platform falls behind")
    lag_s: Thresholds = Field(
        default=Thresholds(soft=15.0, graceful=30.0, aggressive=90.0, circuit_break=180.0),
        description="log lag, seconds behind",
    )
    lag_records: Thresholds | None = Field(
        default=Thresholds(
            soft=200_000, graceful=500_000, aggressive=1_000_000, circuit_break=2_000_000
        ),
        description="log lag, records behind (None: off)",
    )
    memory_fraction: Thresholds = Field(
        default=Thresholds(soft=0.70, graceful=0.80, aggressive=0.90, circuit_break=0.95),
        description="process RSS as a fraction of memory_limit_bytes (or of the machine)",
    )
    memory_limit_bytes: int | None = Field(
        default=None, gt=0, description="memory budget; unset: the cgroup or machine total"
    )
    hysteresis: float = Field(0.2, ge=0, lt=1, description="leave below threshold × (1 − this)")
    cooldown_s: float = Field(30.0, ge=0, description="least time at a level before stepping down")
    tier1_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT"]
    )
    tier2_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BNBUSDT", "SOLUSDT", "XRPUSDT"]
    )

    @field_validator("tier1_symbols", "tier2_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v: Any) -> Any:
        return _symbols(v)

    @model_validator(mode="after")
    def _tiers_disjoint(self) -> DegradationSettings:
        both = sorted(set(self.tier1_symbols) & set(self.tier2_symbols))
        if both:
            raise ValueError(f"symbols in both tier 1 and tier 2: {', '.join(both)}")
        return self


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A level change at ``at`` (seconds on the manager's clock) and why."""

    at: float
    old: Level
    new: Level
    reason: str


class DegradationManager:
    """Tracks the degradation level and answers what to shed. Thread-safe."""

    def __init__(
        self,
        settings: DegradationSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else DegradationSettings()
        self._clock = clock
        self._lock = threading.RLock()
        self._level = Level.NORMAL
        self._entered_at = clock()
        self._history: deque[LevelChange] = deque(maxlen=1000)
        self._listeners: list[Callable[[LevelChange], None]] = []
        self._tier1 = frozenset(self.settings.tier1_symbols)
        self._tier2 = frozenset(self.settings.tier2_symbols)

    @property
    def level(self) -> Level:
        """The current level."""
        return self._level

    @property
    def entered_at(self) -> float:
        """When the current level was entered (clock seconds)."""
        return self._entered_at

    @property
    def history(self) -> tuple[LevelChange, ...]:
        """The most recent level changes (up to 1000), oldest first."""
        with self._lock:
            return tuple(self._history)

    def on_change(self, callback: Callable[[LevelChange], None]) -> None:
        """Call ``callback(change)`` on every level change, in order (under the lock:
        keep it quick; an exception from it is logged)."""
        with self._lock:
            self._listeners.append(callback)

    def update(
        self, lag_s: float, memory_fraction: float, lag_records: float | None = None
    ) -> Level:
        """Feed the current pressures; return the level they lead to.

        ``lag_s`` seconds the log is behind, ``memory_fraction`` RSS over the memory
        budget (see :func:`process_memory_fraction`), ``lag_records`` records behind
        (ignored unless ``settings.lag_records`` is set).
        """
        signals = [("lag", lag_s, self.settings.lag_s, " s"),
                   ("memory", memory_fraction, self.settings.memory_fraction, "")]  # fmt: skip
        if lag_records is not None and self.settings.lag_records is not None:
            signals.append(("backlog", lag_records, self.settings.lag_records, " records"))
        for what, value, _, _ in signals:
            if math.isnan(value):
                raise ValueError(f"{what} pressure is NaN; measure it before calling update()")
        with self._lock:
            now = self._clock()
            current = self._level
            target, why = _pressure_level(signals, 1.0)
            if target > current:
                self._move(target, now, why)
            elif target < current:
                hold, _ = _pressure_level(signals, 1.0 - self.settings.hysteresis)
                if hold < current and now - self._entered_at >= self.settings.cooldown_s:
                    keep = 1.0 - self.settings.hysteresis
                    exits = ", ".join(
                        f"{w} {v:g}{u} < {t.enter(current) * keep:g}{u}" for w, v, t, u in signals
                    )
                    self._move(Level(current - 1), now, f"recovering: {exits}")
            return self._level

    def tier(self, symbol: str) -> int:
        """The priority tier of ``symbol``: 1, 2 or 3."""
        symbol = symbol.upper()
        return 1 if symbol in self._tier1 else 2 if symbol in self._tier2 else 3

    def should_shed(self, symbol: str, data_type: DataType) -> bool:
        """Whether to drop ``data_type`` of ``symbol`` at the current level (the table in
        the module docstring). Shed trades belong in a :class:`ShedLedger`."""
        return sheds(self._level, self.tier(symbol), data_type)

    def _move(self, new: Level, now: float, reason: str) -> None:
        change = LevelChange(now, self._level, new, reason)
        self._level, self._entered_at = new, now
        self._history.append(change)
        log = _log.warning if new > change.old else _log.info
        log("degradation level changed", old=change.old.name, new=new.name, reason=reason)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                _log.exception("degradation listener failed", new=new.name)


def _pressure_level(
    signals: list[tuple[str, float, Thresholds, str]], factor: float
) -> tuple[Level, str]:
    """The highest level any signal reaches with thresholds scaled by ``factor``."""
    best, why = Level.NORMAL, "no pressure"
    for what, value, thresholds, unit in signals:
        for level in reversed(Level):
            if level > best and value >= thresholds.enter(level) * factor:
                best = level
                why = f"{what} {value:g}{unit} >= {thresholds.enter(level) * factor:g}{unit}"
                break
    return best, why


@dataclass(frozen=True, slots=True)
class ShedRange:
    """Trade ids ``first_id..last_id`` (inclusive) of ``symbol`` that were shed."""

    symbol: str
    first_id: int
    last_id: int

    @property
    def count(self) -> int:
        """How many trades the range holds."""
        return self.last_id - self.first_id + 1


class ShedLedger:
    """Shed trades as per-symbol id ranges, merged when they touch or overlap, kept
    until :meth:`drain` hands them over for gap records and backfill. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranges: dict[str, list[tuple[int, int]]] = {}
        self._quotes: Counter[str] = Counter()

    def record(self, symbol: str, trade_id: int) -> None:
        """Note one shed trade."""
        self.record_range(symbol, trade_id, trade_id)

    def record_many(self, symbol: str, trade_ids: Iterable[int]) -> None:
        """Note shed trades given in any order (a batch's ids)."""
        ids = sorted(set(trade_ids))
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or ids[i] != ids[i - 1] + 1:
                self.record_range(symbol, ids[start], ids[i - 1])
                start = i

    def record_range(self, symbol: str, first_id: int, last_id: int) -> None:
        """Note shed trades ``first_id..last_id`` (inclusive)."""
        if last_id < first_id:
            raise ValueError(f"last_id ({last_id}) < first_id ({first_id})")
        with self._lock:
            ranges = self._ranges.setdefault(symbol, [])
            i = bisect_left(ranges, first_id, key=lambda r: r[0])
            if i > 0 and ranges[i - 1][1] >= first_id - 1:
                i -= 1
            j, lo, hi = i, first_id, last_id
            while j < len(ranges) and ranges[j][0] <= hi + 1:
                lo, hi = min(lo, ranges[j][0]), max(hi, ranges[j][1])
                j += 1
            ranges[i:j] = [(lo, hi)]

    def record_quotes(self, symbol: str, count: int = 1) -> None:
        """Count shed quotes (they cannot be backfilled, so they are only counted)."""
        with self._lock:
            self._quotes[symbol] += count

    @property
    def quotes_shed(self) -> dict[str, int]:
        """Quotes shed per symbol since the ledger was created."""
        with self._lock:
            return dict(self._quotes)

    def pending(self) -> int:
        """Shed trades recorded and not yet drained."""
        with self._lock:
            return sum(hi - lo + 1 for rs in self._ranges.values() for lo, hi in rs)

    def drain(self) -> list[ShedRange]:
        """Every pending range, by symbol then id, and forget them."""
        with self._lock:
            ranges, self._ranges = self._ranges, {}
        return [ShedRange(s, lo, hi) for s in sorted(ranges) for lo, hi in ranges[s]]


def process_rss_bytes(proc_root: Path = Path("/proc")) -> int:
    """This process's resident memory in bytes, from ``/proc/self/statm``; where that is
    missing, the peak RSS from ``resource`` (an overestimate, never an underestimate)."""
    try:
        pages = int((proc_root / "self" / "statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError, AttributeError):
        pass
    try:
        import resource
    except ImportError as exc:
        raise TerminalError(
            "cannot measure this process's memory here (no /proc, no resource module); "
            "memory-driven degradation needs Linux or macOS"
        ) from exc
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS bytes, Linux KiB


def memory_limit_bytes(
    proc_root: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """The memory this process may use: the container's cgroup limit when there is
    one, else the machine's total (``MemTotal`` in ``/proc/meminfo``)."""
    total: int | None = None
    try:
        for line in (proc_root / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, IndexError, ValueError):
        pass
    try:
        cgroup = int((cgroup_root / "memory.max").read_text().strip())  # "max": no limit
        total = cgroup if total is None else min(total, cgroup)
    except (OSError, ValueError):
        pass
    if total is None:
        raise TerminalError(
            "cannot tell how much memory this machine has (no /proc/meminfo or cgroup "
            "memory.max); set degradation.memory_limit_bytes"
        )
    return total


def process_memory_fraction(limit_bytes: int | None = None) -> float:
    """RSS over ``limit_bytes`` (default: :func:`memory_limit_bytes`); may exceed 1."""
    limit = limit_bytes if limit_bytes is not None else memory_limit_bytes()
    return process_rss_bytes() / limit
