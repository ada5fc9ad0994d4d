"""``k2 chaos``: break a running platform on purpose and watch it recover.

Each experiment acts on the platform ``k2 up`` runs in this data directory (found
through ``<run_dir>/up.json``), watches what the stages report, and returns what it
observed:

- :func:`high_lag` — freeze the lake sink (SIGSTOP) for a while: the log lag grows,
  the capture degrades level by level and sheds low-priority data; after SIGCONT the
  levels come back down and shed trades are backfilled.
- :func:`kill_sink` — SIGKILL the sink: ``k2 up`` restarts it and the new sink resumes
  exactly where the lake ends.
- :func:`disconnect_exchange` — have the simulator drop every WebSocket and refuse
  reconnects for a while: the capture reconnects with backoff and repairs the gap from
  the exchange's REST history. Needs ``k2 up --simulate`` (Binance cannot be
  disconnected on demand).
- :func:`slow_storage` — make every lake commit wait (``<run_dir>/chaos.json``, which
  the sink reads before each commit): lag builds up, then drains.

Progress goes to ``say``, one line at a time. The readings come from the status files
the stages rewrite every ``ops.status_interval_s``, so times are as precise as that.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from k2.config import Settings
from k2.errors import ConfigError, ConnectionLost, TerminalError, TransientError
from k2.ops.status_files import is_fresh, read_status, run_dir, status_path

__all__ = [
    "DisconnectResult",
    "HighLagResult",
    "KillSinkResult",
    "LevelChange",
    "Pace",
    "Sample",
    "SlowStorageResult",
    "chaos_path",
    "disconnect_exchange",
    "high_lag",
    "kill_sink",
    "slow_storage",
    "storage_delay_s",
]

Say = Callable[[str], None]

_START_HINT = "start it with `k2 up --simulate`"
#: Lake table → the data type of the log topic that feeds it.
_FED_BY = {"trades": "trade", "quotes": "quote", "gaps": "gap"}


def _quiet(line: str) -> None:
    """The default ``say``: report nothing."""


@dataclass(frozen=True)
class Pace:
    """How an experiment watches: a reading every ``interval_s`` seconds of ``clock``,
    waiting with ``sleep`` in between."""

    interval_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Sample:
    """One reading of the ingest's status file, ``at_s`` seconds into the experiment.

    ``trades_shed`` and ``trades_backfilled`` are the ingest's running totals;
    ``shed_pending`` counts shed trades not yet backfilled."""

    at_s: float
    level: str
    lag_records: int
    lag_s: float
    connections: int
    trades_shed: int
    shed_pending: int
    trades_backfilled: int


@dataclass(frozen=True)
class LevelChange:
    """The degradation level seen to change between two readings, ``at_s`` seconds
    into the experiment (``reason`` as the ingest gave it, when it did)."""

    at_s: float
    old: str
    new: str
    reason: str | None = None


@dataclass
class _Observed:
    """What the degradation watch saw (shared by :func:`high_lag` and :func:`slow_storage`)."""

    samples: list[Sample] = field(default_factory=list)
    levels: list[LevelChange] = field(default_factory=list)
    peak_level: str = "NORMAL"
    peak_lag_records: int = 0
    trades_shed: int = 0
    trades_backfilled: int = 0
    recovered: bool = False
    recovered_after_s: float | None = None


@dataclass
class HighLagResult(_Observed):
    """:func:`high_lag`: the sink ``sink_pid`` was stopped for ``stopped_s`` seconds;
    ``recovered_after_s`` counts from its resumption until the level was NORMAL again
    with nothing left to backfill (``None`` if not within the deadline)."""

    sink_pid: int = 0
    stopped_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlowStorageResult(_Observed):
    """:func:`slow_storage`: every lake commit waited ``delay_s`` for ``slowed_s``
    seconds; ``recovered_after_s`` counts from the end of the slowdown."""

    delay_s: float = 0.0
    slowed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KillSinkResult:
    """:func:`kill_sink`: ``old_pid`` was killed; ``k2 up`` started ``new_pid``
    (``restarts`` is its restart count) ``restarted_after_s`` later, and
    ``caught_up_after_s`` after the kill the lake held everything the log held at the
    kill. Lags are records in the log and not in the lake, summed over tables."""

    old_pid: int
    new_pid: int | None = None
    restarts: int = 0
    restarted_after_s: float | None = None
    caught_up_after_s: float | None = None
    lag_at_kill: int = 0
    lag_peak: int = 0
    lag_after: int = 0
    recovered: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DisconnectResult:
    """:func:`disconnect_exchange`: the simulator dropped ``closed`` connections and
    refused new ones for ``seconds``. The capture was seen disconnected
    ``dropped_after_s`` and connected again ``reconnected_after_s`` after the call
    (``reconnects`` reconnections). Gaps are this experiment's: found by the capture,
    and recorded in the log by status (``repaired``, ``unrepairable``)."""

    seconds: float
    closed: int = 0
    dropped_after_s: float | None = None
    reconnected_after_s: float | None = None
    reconnects: int = 0
    gaps_detected: int = 0
    gaps_repaired: int = 0
    gaps_unrepairable: int = 0
    gaps: dict[str, int] = field(default_factory=dict)
    recovered: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the platform ---------------------------------------------------------------------


def _platform(settings: Settings) -> dict[str, Any]:
    """``up.json`` of the running platform; TerminalError if none runs here."""
    path = status_path(settings, "up")
    up = read_status(path)
    if up is None:
        raise TerminalError(f"no K2 platform is running here (no {path}): {_START_HINT}")
    if not is_fresh(up, settings.ops.status_interval_s):
        age = time.time() - float(up.get("updated_at", 0))
        raise TerminalError(
            f"the K2 platform in {path.parent} is not running ({path.name} last written "
            f"{age:,.0f} s ago): {_START_HINT}"
        )
    if up.get("stopping"):
        raise TransientError("the K2 platform is stopping; start it again and retry")
    return up


def _stage(up: Mapping[str, Any], name: str) -> dict[str, Any]:
    stages = up.get("stages") or {}
    if name not in stages:
        raise TerminalError(
            f"the platform runs without a {name} (stages: {', '.join(stages) or 'none'}); "
            "restart it with every stage: `k2 up --simulate`"
        )
    info: dict[str, Any] = stages[name]
    return info


def _running(settings: Settings, name: str) -> tuple[int, dict[str, Any]]:
    """The pid of stage ``name`` and its entry, as ``k2 up`` last reported them."""
    info = _stage(_platform(settings), name)
    pid = info.get("pid")
    if not isinstance(pid, int):
        raise TransientError(
            f"the {name} is not running right now (state {info.get('state', '?')}); "
            "retry once `k2 status` shows it running"
        )
    return pid, info


def _ingest(settings: Settings) -> dict[str, Any]:
    """The ingest's status file, which must be fresh (the ingest is alive)."""
    path = status_path(settings, "ingest")
    status = read_status(path)
    if not is_fresh(status, settings.ops.status_interval_s):
        raise TransientError(
            f"the ingest is not reporting ({path} missing or stale); this experiment "
            "watches it: check `k2 status`, or " + _START_HINT
        )
    assert status is not None
    return status


def _signal(pid: int, sig: signal.Signals, what: str) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError as exc:
        raise TransientError(f"the {what} (pid {pid}) exited just now; retry") from exc
    except PermissionError as exc:
        raise TerminalError(
            f"not allowed to signal the {what} (pid {pid}): run as the user of `k2 up`"
        ) from exc


# -- watching the degradation level ---------------------------------------------------


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _sample(status: Mapping[str, Any], at_s: float) -> Sample:
    degradation = status.get("degradation") or {}
    stats = status.get("stats") or {}
    return Sample(
        at_s=round(at_s, 2),
        level=str(degradation.get("level_name", "NORMAL")),
        lag_records=_int(degradation.get("lag_records")),
        lag_s=float(degradation.get("lag_s") or 0.0),
        connections=_int(status.get("connections")),
        trades_shed=_int(degradation.get("trades_shed")),
        shed_pending=_int(degradation.get("shed_pending")),
        trades_backfilled=_int(stats.get("trades_backfilled")),
    )


class _LevelWatch:
    """Reads the ingest's status every pace interval and keeps what it saw."""

    def __init__(self, settings: Settings, out: _Observed, say: Say, pace: Pace) -> None:
        self._settings = settings
        self._out = out
        self._say = say
        self._pace = pace
        self._start = pace.clock()
        first = _sample(_ingest(settings), 0.0)
        self._first = first
        self._last = first
        out.samples.append(first)

    @property
    def last(self) -> Sample:
        return self._last

    def now(self) -> float:
        return self._pace.clock() - self._start

    def read(self) -> Sample:
        """One reading (the previous one again if the file cannot be read just now)."""
        status = read_status(status_path(self._settings, "ingest"))
        if status is None:
            return self._last
        sample = _sample(status, self.now())
        out = self._out
        out.samples.append(sample)
        if sample.level != self._last.level:
            reason = _reason(status, sample.level)
            out.levels.append(LevelChange(sample.at_s, self._last.level, sample.level, reason))
            self._say(
                f"{sample.at_s:6.1f} s  level {self._last.level} → {sample.level}"
                + (f" ({reason})" if reason else "")
            )
        out.peak_lag_records = max(out.peak_lag_records, sample.lag_records)
        if _rank(sample.level) > _rank(out.peak_level):
            out.peak_level = sample.level
        # Running totals of one ingest: a restarted ingest starts again from 0.
        out.trades_shed = max(0, sample.trades_shed - self._first.trades_shed)
        out.trades_backfilled = max(0, sample.trades_backfilled - self._first.trades_backfilled)
        self._last = sample
        return sample

    def watch_for(self, seconds: float) -> None:
        """Read every interval for ``seconds``, reporting the lag as it goes."""
        end = self._pace.clock() + seconds
        while self._pace.clock() < end:
            self._pace.sleep(min(self._pace.interval_s, max(0.0, end - self._pace.clock())))
            sample = self.read()
            self._say(
                f"{sample.at_s:6.1f} s  {sample.level:<13} lag {sample.lag_records:,} records "
                f"({sample.lag_s:.1f} s), {sample.trades_shed - self._first.trades_shed:,} "
                "trades shed"
            )

    def watch_recovery(self, timeout_s: float) -> None:
        """Read until the level is NORMAL with no shed trades left to backfill, at most
        ``timeout_s``; records the outcome in the result."""
        began = self.now()
        end = self._pace.clock() + timeout_s
        sample = self.read()
        while not (sample.level == "NORMAL" and sample.shed_pending == 0):
            if self._pace.clock() >= end:
                self._say(
                    f"not recovered after {timeout_s:.0f} s: level {sample.level}, "
                    f"{sample.shed_pending:,} shed trades still to backfill"
                )
                return
            self._pace.sleep(self._pace.interval_s)
            sample = self.read()
        self._out.recovered = True
        self._out.recovered_after_s = round(sample.at_s - began, 2)
        self._say(
            f"recovered in {self._out.recovered_after_s:.1f} s: level NORMAL, "
            f"{self._out.trades_shed:,} trades shed and {self._out.trades_backfilled:,} "
            "backfilled"
        )


_LEVELS = ("NORMAL", "SOFT", "GRACEFUL", "AGGRESSIVE", "CIRCUIT_BREAK")


def _rank(level: str) -> int:
    return _LEVELS.index(level) if level in _LEVELS else -1


def _reason(status: Mapping[str, Any], level: str) -> str | None:
    history = (status.get("degradation") or {}).get("history") or []
    for change in reversed(history):
        if isinstance(change, dict) and change.get("new") == level:
            reason = change.get("reason")
            return str(reason) if reason else None
    return None


def _recovery_timeout(settings: Settings) -> float:
    """Long enough to step down from the top level (one cooldown per level) and
    backfill what was shed."""
    return 4 * settings.degradation.cooldown_s + 60.0


# -- high lag -------------------------------------------------------------------------


def high_lag(
    settings: Settings,
    seconds: float = 30.0,
    *,
    recover_timeout_s: float | None = None,
    say: Say = _quiet,
    pace: Pace | None = None,
) -> HighLagResult:
    """Stop the lake sink (SIGSTOP) for ``seconds``, then resume it (SIGCONT), reading
    the ingest's degradation level and lag every ``pace.interval_s`` while it is
    stopped and afterwards until the level is NORMAL again and shed trades are
    backfilled (at most ``recover_timeout_s``; default: four cooldowns plus a minute).

    The sink is resumed whatever happens, Ctrl-C included. Raises TerminalError or
    TransientError when no platform runs here or its sink or ingest is not running.
    """
    if seconds <= 0:
        raise ConfigError(f"seconds must be positive, got {seconds}")
    pace = pace or Pace()
    pid, _ = _running(settings, "sink")
    out = HighLagResult(sink_pid=pid)
    watch = _LevelWatch(settings, out, say, pace)
    _signal(pid, signal.SIGSTOP, "sink")
    stopped_at = watch.now()
    try:
        say(
            f"sink (pid {pid}) stopped for {seconds:g} s; the log keeps filling "
            f"(if this command dies, resume it with `kill -CONT {pid}`)"
        )
        watch.watch_for(seconds)
    finally:
        out.stopped_s = round(watch.now() - stopped_at, 2)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            say(f"the sink (pid {pid}) exited while stopped; k2 up restarts it")
    say(f"sink resumed after {out.stopped_s:.1f} s; waiting for the platform to recover")
    watch.watch_recovery(
        recover_timeout_s if recover_timeout_s is not None else _recovery_timeout(settings)
    )
    return out


# -- slow storage ---------------------------------------------------------------------


def chaos_path(settings: Settings) -> Path:
    """``<run_dir>/chaos.json``: faults the stages read while it is in force."""
    return run_dir(settings) / "chaos.json"


def storage_delay_s(settings: Settings, now: float | None = None) -> float:
    """How long the sink should wait before its next lake commit, in seconds:
    ``storage_delay_s`` from ``chaos.json`` while its ``until`` (unix seconds) is
    ahead of ``now``; else 0 (also when the file is missing or unreadable)."""
    status = read_status(chaos_path(settings))
    if status is None:
        return 0.0
    try:
        delay = float(status.get("storage_delay_s", 0.0))
        until = float(status.get("until", 0.0))
    except (TypeError, ValueError):
        return 0.0
    current = time.time() if now is None else now
    return max(0.0, delay) if current < until else 0.0


def _write_json(path: Path, body: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def slow_storage(
    settings: Settings,
    delay_s: float = 2.0,
    seconds: float = 30.0,
    *,
    recover_timeout_s: float | None = None,
    say: Say = _quiet,
    pace: Pace | None = None,
) -> SlowStorageResult:
    """Make every lake commit wait ``delay_s`` for ``seconds`` (by writing
    ``chaos.json``, see :func:`storage_delay_s`), reading the ingest's lag and
    degradation level every ``pace.interval_s``; then remove the file and read on until
    the level is NORMAL with nothing left to backfill (at most ``recover_timeout_s``).

    The file is removed whatever happens, Ctrl-C included; were this process killed,
    its ``until`` still ends the slowdown. Raises TerminalError or TransientError when
    no platform runs here or its sink or ingest is not running.
    """
    if delay_s <= 0 or seconds <= 0:
        raise ConfigError(f"delay and duration must be positive, got {delay_s} s, {seconds} s")
    pace = pace or Pace()
    _running(settings, "sink")
    out = SlowStorageResult(delay_s=delay_s)
    watch = _LevelWatch(settings, out, say, pace)
    path = chaos_path(settings)
    began = watch.now()
    try:
        _write_json(path, {"storage_delay_s": delay_s, "until": time.time() + seconds})
        say(f"every lake commit now waits {delay_s:g} s, for {seconds:g} s ({path})")
        watch.watch_for(seconds)
    finally:
        path.unlink(missing_ok=True)
        out.slowed_s = round(watch.now() - began, 2)
    say("storage back to normal; waiting for the platform to recover")
    watch.watch_recovery(
        recover_timeout_s if recover_timeout_s is not None else _recovery_timeout(settings)
    )
    return out


# -- kill the sink --------------------------------------------------------------------


class _Lake:
    """The log's end offsets and the lake's positions, read afresh on each call."""

    def __init__(self, settings: Settings) -> None:
        from k2.log.factory import open_log, topic_layout

        self._settings = settings
        self._layout = topic_layout(settings)
        self._log = open_log(settings)

    def close(self) -> None:
        self._log.close()

    def lag(self) -> int:
        from k2.ops.status import lake_lag

        return sum(lake_lag(self._settings, self._log).values())

    def log_ends(self) -> dict[str, dict[int, int]]:
        topics = {t.name for t in self._log.list_topics()}
        ends: dict[str, dict[int, int]] = {}
        for data_type in _FED_BY.values():
            topic = self._layout.data_topic(data_type)
            if topic in topics:
                ends[topic] = dict(self._log.end_offsets(topic))
        return ends

    def holds(self, ends: Mapping[str, Mapping[int, int]]) -> bool:
        """Whether the lake has committed every offset below ``ends``."""
        from k2.lake.catalog import open_catalog
        from k2.lake.sink_offsets import lake_offsets
        from k2.lake.tables import ensure_tables

        tables = ensure_tables(open_catalog(self._settings), self._settings.lake.namespace)
        for name, data_type in _FED_BY.items():
            topic = self._layout.data_topic(data_type)
            wanted = ends.get(topic, {})
            if not wanted:
                continue
            begins = self._log.begin_offsets(topic)
            have = lake_offsets(tables[name], topic)
            for partition, end in wanted.items():
                if max(have.get(partition, 0), begins.get(partition, 0)) < end:
                    return False
        return True


def kill_sink(
    settings: Settings,
    *,
    timeout_s: float = 120.0,
    say: Say = _quiet,
    pace: Pace | None = None,
) -> KillSinkResult:
    """SIGKILL the lake sink, then wait (at most ``timeout_s``) until ``k2 up`` has
    started a new one and the lake holds everything the log held at the kill: the new
    sink resumed where the lake ends. Reads every ``pace.interval_s``.

    Raises TerminalError or TransientError when no platform runs here or its sink is
    not running. A sink that does not recover in time is reported, not raised
    (``recovered`` is false).
    """
    pace = pace or Pace()
    pid, sink = _running(settings, "sink")
    restarts = _int(sink.get("restarts"))
    lake = _Lake(settings)
    try:
        out = KillSinkResult(old_pid=pid, restarts=restarts)
        out.lag_at_kill = out.lag_peak = lake.lag()
        ends = lake.log_ends()
        _signal(pid, signal.SIGKILL, "sink")
        killed = pace.clock()
        say(f"killed the sink (pid {pid}) with {out.lag_at_kill:,} records not yet in the lake")
        end = killed + timeout_s
        while pace.clock() < end:
            pace.sleep(pace.interval_s)
            if out.restarted_after_s is None:
                stage = ((read_status(status_path(settings, "up")) or {}).get("stages") or {}).get(
                    "sink"
                ) or {}
                new_pid = stage.get("pid")
                if isinstance(new_pid, int) and new_pid != pid:
                    out.new_pid = new_pid
                    out.restarts = _int(stage.get("restarts"))
                    out.restarted_after_s = round(pace.clock() - killed, 2)
                    say(
                        f"{out.restarted_after_s:6.1f} s  k2 up restarted the sink "
                        f"(pid {new_pid}, restart #{out.restarts})"
                    )
            lag = lake.lag()
            out.lag_peak = max(out.lag_peak, lag)
            if out.restarted_after_s is not None and lake.holds(ends):
                out.caught_up_after_s = round(pace.clock() - killed, 2)
                out.lag_after = lag
                out.recovered = True
                say(
                    f"{out.caught_up_after_s:6.1f} s  the lake holds everything the log held "
                    f"at the kill; {lag:,} records in flight now"
                )
                break
        else:
            out.lag_after = lake.lag()
            say(
                f"not recovered after {timeout_s:.0f} s: "
                + ("the sink was not restarted" if out.new_pid is None else "the lake is behind")
                + f" ({out.lag_after:,} records not in the lake); see `k2 status`"
            )
        return out
    finally:
        lake.close()


# -- disconnect the exchange ----------------------------------------------------------


def _admin_url(ws_url: str) -> str:
    """The simulator's HTTP base URL from the capture's WebSocket URL."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _gap_counts(status: Mapping[str, Any]) -> tuple[int, int, int]:
    stats = status.get("stats") or {}
    return (
        _int(stats.get("gaps_detected")),
        _int(stats.get("gaps_repaired")),
        _int(stats.get("gaps_unrepairable")),
    )


def _reconnects(status: Mapping[str, Any]) -> int:
    return _int((status.get("stream") or {}).get("reconnects"))


def _recorded_gaps(settings: Settings) -> dict[str, int]:
    from k2.ops.status import gather

    return dict(gather(settings).gaps)


def _post_disconnect(url: str, seconds: float) -> dict[str, Any]:
    import httpx

    try:
        reply = httpx.post(f"{url}/k2/chaos/disconnect", params={"seconds": seconds}, timeout=10)
    except httpx.HTTPError as exc:
        raise ConnectionLost(f"cannot reach the simulator at {url}: {exc}") from exc
    if reply.status_code != 200:
        raise TerminalError(
            f"the simulator at {url} refused the disconnect (HTTP {reply.status_code}): "
            f"{reply.text[:200]}; is it K2's simulator (`k2 up --simulate`)?"
        )
    body = reply.json()
    return body if isinstance(body, dict) else {}


def disconnect_exchange(
    settings: Settings,
    seconds: float = 10.0,
    *,
    timeout_s: float | None = None,
    say: Say = _quiet,
    pace: Pace | None = None,
) -> DisconnectResult:
    """Have the platform's simulator drop every WebSocket and refuse reconnects for
    ``seconds``; watch the capture lose its connections, reconnect, and find and
    repair the gap the outage left (at most ``timeout_s`` after the outage; default
    ``seconds`` plus two minutes). Reads every ``pace.interval_s``.

    Raises ConfigError unless the platform runs with the simulator (``k2 up
    --simulate``): Binance cannot be disconnected on demand. An outcome that does not
    come in time is reported, not raised (``recovered`` is false).
    """
    if seconds < 0:
        raise ConfigError(f"seconds must not be negative, got {seconds}")
    pace = pace or Pace()
    up = _platform(settings)
    if "simulator" not in (up.get("stages") or {}):
        raise ConfigError(
            "disconnect-exchange needs the platform to capture from K2's simulator: "
            "Binance cannot be disconnected on demand. Restart it with `k2 up --simulate`"
        )
    before = _ingest(settings)
    url = _admin_url(str(before.get("ws_url") or settings.binance.ws_url))
    connections0 = max(1, _int(before.get("connections")))
    reconnects0 = _reconnects(before)
    gaps0 = _gap_counts(before)
    recorded0 = _recorded_gaps(settings)

    reply = _post_disconnect(url, seconds)
    called = pace.clock()
    out = DisconnectResult(seconds=seconds, closed=_int(reply.get("closed")))
    say(f"the simulator dropped {out.closed} connection(s) and refuses new ones for {seconds:g} s")
    end = called + seconds + (timeout_s if timeout_s is not None else 120.0)
    # Once reconnected, a gap shows up within the grace period after the next trade of
    # each symbol; allow for quiet symbols before concluding that nothing was missed.
    quiet_after_s = settings.capture.gap_grace_s + 10.0
    status: Mapping[str, Any] = before
    while pace.clock() < end:
        pace.sleep(pace.interval_s)
        status = read_status(status_path(settings, "ingest")) or status
        at = round(pace.clock() - called, 2)
        connections = _int(status.get("connections"))
        out.reconnects = max(0, _reconnects(status) - reconnects0)
        detected, repaired, unrepairable = _gap_counts(status)
        out.gaps_detected = detected - gaps0[0]
        out.gaps_repaired = repaired - gaps0[1]
        out.gaps_unrepairable = unrepairable - gaps0[2]
        if out.dropped_after_s is None and (connections == 0 or out.reconnects > 0):
            out.dropped_after_s = at
            say(f"{at:6.1f} s  capture disconnected ({connections} connection(s) open)")
        if out.dropped_after_s is None or out.reconnects == 0 or connections < connections0:
            continue
        if out.reconnected_after_s is None:
            out.reconnected_after_s = at
            say(f"{at:6.1f} s  capture reconnected ({connections} connection(s))")
        resolved = out.gaps_repaired + out.gaps_unrepairable
        if out.gaps_detected > 0 and resolved >= out.gaps_detected:
            out.recovered = True
            break
        if out.gaps_detected == 0 and at - out.reconnected_after_s > quiet_after_s:
            out.recovered = True  # no trade was printed while disconnected
            break
    out.gaps = _recorded_since(settings, recorded0, out.gaps_repaired + out.gaps_unrepairable, pace)
    if out.recovered:
        say(
            f"recovered: reconnected after {out.reconnected_after_s:.1f} s; "
            f"{out.gaps_detected} gap(s) found, {out.gaps_repaired} repaired, "
            f"{out.gaps_unrepairable} unrepairable"
        )
    else:
        say(
            "not recovered in time: "
            + ("no reconnect seen" if out.reconnected_after_s is None else "gaps still open")
            + "; see `k2 status`"
        )
    return out


def _recorded_since(
    settings: Settings, before: Mapping[str, int], expected: int, pace: Pace
) -> dict[str, int]:
    """Gap records written to the log since ``before``, by status; waits briefly (ten
    intervals) for ``expected`` of them, as the ingest reports a repair and writes its
    record one after the other."""
    attempts = 10
    while True:
        now = _recorded_gaps(settings)
        delta = {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0) > 0}
        attempts -= 1
        if sum(delta.values()) >= expected or attempts <= 0:
            return delta
        pace.sleep(pace.interval_s)
