"""The soak's results: the memory verdict, the Markdown tables, BENCHMARKS.md's blocks.

The rules the verdicts follow are stated here once, and printed with the tables:

- **memory bounded**: for every stage, the peak resident set sampled in the second
  half of the run is at most :data:`GROWTH_LIMIT` above the first half's peak. A stage
  that grows without bound (a leak, an unbounded buffer) fails it; one that fills a
  fixed cap (the API's recent window holds at most ``query.recent_max_rows`` rows,
  100 s of trades at 20,000/s) passes once the cap is reached in the first half. So
  the rule is judged only for runs of at least :data:`JUDGE_MEMORY_AFTER_S`; a shorter
  run reports the numbers and says it cannot tell filling from leaking.
- **sustained**: at the moment the stop was asked, the ingest was less than
  :data:`INGEST_BACKLOG_S` seconds of offered trades behind the exchange and the lake
  less than :data:`LAKE_BACKLOG_S` behind (the sink commits every 5 s or 100,000
  records), and the capture shed no trades (degradation never reached GRACEFUL).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.environment import stamp, versions
from benchmarks.soak_probes import QUERY_KINDS, Sample

__all__ = [
    "FULL",
    "GROWTH_LIMIT",
    "INGEST_BACKLOG_S",
    "JUDGE_MEMORY_AFTER_S",
    "LAKE_BACKLOG_S",
    "SHORT",
    "SoakResult",
    "cpu_summary",
    "memory_summary",
    "render",
    "write_section",
]

#: Largest allowed growth of a stage's second-half RSS peak over its first-half peak.
GROWTH_LIMIT = 0.25
#: Shortest run whose memory is judged; shorter runs are the "short" soak.
JUDGE_MEMORY_AFTER_S = 300.0
#: Most seconds of offered trades the ingest / the lake may be behind at the stop.
INGEST_BACKLOG_S = 5.0
LAKE_BACKLOG_S = 15.0

#: BENCHMARKS.md blocks: full runs (memory judged) and short ones.
FULL, SHORT = "soak", "soak-short"


def _markers(block: str) -> tuple[str, str]:
    return f"<!-- results:{block}:start -->", f"<!-- results:{block}:end -->"


_MINUTES = f"{JUDGE_MEMORY_AFTER_S / 60:.0f}"
_SECTION = f"""## Soak ([6/6])

`make soak` runs the whole platform for 10 minutes (`make soak SOAK_ARGS=--short`: 1
minute; `make soak SOAK_ARGS="--minutes 60"`: longer) against K2's simulator, and
checks that nothing was lost, nothing duplicated, memory stayed bounded and no stage
restarted:

- **exchange**: the simulator runs inside the soak's process (so the final check can
  read its full trade history): 100 symbols (the simulator's 5 plus 95 generated ones,
  `SYM006USDT`…`SYM100USDT`; Zipf activity, BTCUSDT ~19% of the trades, the last
  ~0.2%) at 20,000 trades/s in all, trades only (`--quote-ratio` adds bookTicker
  updates and quote capture). Faults: 0.01% of frames dropped (2 gaps a second, each
  repaired over REST), 0.1% sent twice, every WebSocket connection cut without a close
  frame after 60 s (a fifth of the run, at least 15 s, for shorter runs), every 50th
  REST request answered 429 (`Retry-After: 1`).
- **platform**: ingest, sink and API as `k2 up` runs them (`Platform` + `stage_specs`:
  separate supervised processes), default settings, embedded log and lake in a fresh
  temporary directory.
- **queries**: a client asks the API 5 questions a second, in turn: the last minute of
  a random symbol (`/v1/trades/recent`), its 1-minute bars over the last 10 minutes
  (`/v1/bars`), its trades from 90 s to 30 s ago (`/v1/trades`). Any 5xx fails the
  soak.
- **memory**: every stage's VmRSS from `/proc/<pid>/status` each second (pids from
  `up.json`), and the kernel's high-water mark (VmHWM). *Bounded*: each stage's peak in
  the second half of the run is at most {GROWTH_LIMIT:.0%} above its first-half peak.
  Judged for runs of {_MINUTES} minutes or more: the API keeps the last 15 minutes
  of trades in memory up to a cap (`query.recent_max_rows`, 2,000,000 rows: 100 s of
  trades at 20,000/s), and a shorter run cannot tell that filling from a leak.
- **the end**: a clean stop (capture first, then the sink drains the log), then per
  symbol the lake's trade ids against the simulator's history, from the first trade K2
  received to the last one printed before the stop: zero lost and zero duplicated, or
  the soak fails. Restarts are read from `up.json`; any restart fails the soak.
- **rates**: offered (what the simulator printed) and achieved (what K2 wrote to the
  log and committed to the lake) over the same window, from the ingest's first
  connection to the stop. *Sustained*: at the stop the ingest was under {INGEST_BACKLOG_S:.0f} s of
  offered trades behind the exchange, the lake under {LAKE_BACKLOG_S:.0f} s, and the capture shed
  no trades.

### `make soak` (10 minutes or more)

{_markers(FULL)[0]}
{_markers(FULL)[1]}

### `make soak SOAK_ARGS=--short` (1 minute)

{_markers(SHORT)[0]}
{_markers(SHORT)[1]}
"""


#: The libraries on the soak's path whose versions the block records.
_LIBRARIES = ("pyarrow", "msgspec", "pyiceberg", "duckdb", "fastapi", "uvicorn", "aiohttp",
              "websockets")  # fmt: skip


def _machine() -> dict[str, str]:
    """When, on what and at which commit the soak ran, and the versions that matter."""
    found = versions()
    return {
        "ran": stamp(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        **{name: found.get(name, "unknown") for name in _LIBRARIES},
    }


@dataclass
class SoakResult:
    """Everything one soak measured; ``as_dict`` is its JSON form."""

    command: str
    started_at: str
    duration_s: float
    symbols: int
    target_rate: float
    quote_ratio: float
    streams: list[str]
    faults: dict[str, Any]
    simulator: dict[str, Any]
    ingest: dict[str, Any]
    stream: dict[str, Any]
    flow: dict[str, Any]
    memory: dict[str, dict[str, Any]]
    cpu: dict[str, float]
    queries: dict[str, dict[str, Any]]
    query_failure: str | None
    restarts: dict[str, int]
    exits: dict[str, int | None]
    check: dict[str, Any]
    gaps: dict[str, int]
    dead_letters: int
    degradation_max: str
    load: dict[str, list[float]]
    supervisor: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=_machine)

    @property
    def memory_bounded(self) -> bool:
        """Every platform stage met the growth rule (judged or not)."""
        return all(m["bounded"] for name, m in self.memory.items() if name != "soak")

    @property
    def memory_judged(self) -> bool:
        """Long enough for the memory rule to mean something."""
        return self.duration_s >= JUDGE_MEMORY_AFTER_S

    @property
    def block(self) -> str:
        """The BENCHMARKS.md block this run belongs in."""
        return FULL if self.memory_judged else SHORT

    @property
    def server_errors(self) -> int:
        return sum(int(q["server_errors"]) for q in self.queries.values())

    @property
    def verdicts(self) -> dict[str, bool]:
        """Each pass/fail check of the soak (memory only when judged)."""
        verdicts = {
            "zero lost": self.check["lost"] == 0 and self.check["rows"] > 0,
            "zero duplicated": self.check["duplicated"] == 0 and self.check["foreign"] == 0,
            "exchange history verified": all(
                s["history_contiguous"] for s in self.check["symbols"]
            ),
            "no restarts": sum(self.restarts.values()) == 0,
            "no API server errors": self.server_errors == 0 and self.query_failure is None,
        }
        if self.memory_judged:
            verdicts["memory bounded"] = self.memory_bounded
        return verdicts

    @property
    def passed(self) -> bool:
        return all(self.verdicts.values())

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["verdicts"] = self.verdicts
        data["passed"] = self.passed
        return data


def memory_summary(samples: Sequence[Sample], until_t: float) -> dict[str, dict[str, Any]]:
    """Per stage (and ``soak``, this process): peaks of the sampled RSS overall and in
    each half of ``[0, until_t]``, the last VmHWM, and the bounded verdict."""
    middle = until_t / 2
    names = sorted({name for s in samples for name in s.rss})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        seen = [(s.t, s.rss[name]) for s in samples if name in s.rss]
        first = [rss for t, rss in seen if t < middle]
        second = [rss for t, rss in seen if middle <= t <= until_t]
        hwm = [s.hwm[name] for s in samples if name in s.hwm]
        first_peak = max(first, default=0)
        second_peak = max(second, default=0)
        growth = (second_peak / first_peak - 1) if first_peak else None
        out[name] = {
            "peak": max((rss for _, rss in seen), default=0),
            "hwm": max(hwm, default=0),
            "first_half_peak": first_peak,
            "second_half_peak": second_peak,
            "growth": growth,
            "end": seen[-1][1] if seen else 0,
            "samples": len(seen),
            "bounded": growth is not None and growth <= GROWTH_LIMIT,
        }
    return out


def cpu_summary(samples: Sequence[Sample], from_t: float, until_t: float) -> dict[str, float]:
    """Average CPU use over ``[from_t, until_t]`` in percent of one core: per stage (and
    ``soak``), ``machine`` (everything running, all cores) and ``others`` (the machine
    minus the soak and its stages: other work sharing the cores)."""
    window = [s for s in samples if from_t <= s.t <= until_t]
    if len(window) < 2:
        return {}
    first, last = window[0], window[-1]
    span = last.t - first.t
    out = {
        name: (last.cpu_s[name] - first.cpu_s[name]) / span * 100
        for name in last.cpu_s
        if name in first.cpu_s and first.pids.get(name) == last.pids.get(name)
    }
    machine = (last.machine_busy_s - first.machine_busy_s) / span * 100
    out["machine"] = machine
    out["others"] = max(0.0, machine - sum(out[n] for n in last.cpu_s if n in out))
    return out


def _mb(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f} ms"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(result: SoakResult) -> str:
    """The results block: verdicts, flow, faults, memory and queries, as Markdown."""
    r = result
    flow = r.flow
    lines = [
        f"Run of {r.started_at}: {r.duration_s / 60:,.1f} minutes streaming, {r.symbols} "
        f"symbols, {_n(r.target_rate)} trades/s offered in all (streams: "
        f"{', '.join(r.streams)}; {r.quote_ratio:g} bookTicker updates per trade). "
        f"Faults: {_faults(r.faults)}. Load average (1/5/15 min) at the start "
        f"{_load(r.load['start'])}, at the end {_load(r.load['end'])}.",
        "",
        "| check | result | passed |",
        "|---|---:|:---:|",
    ]
    check = r.check
    verdicts = r.verdicts
    lines += [
        f"| trades lost (simulator history vs lake) | {_n(check['lost'])} of "
        f"{_n(check['expected'])} | {_yes(verdicts['zero lost'])} |",
        f"| trades duplicated in the lake (+ ids the simulator never printed) | "
        f"{_n(check['duplicated'])} (+ {_n(check['foreign'])}) | "
        f"{_yes(verdicts['zero duplicated'])} |",
        f"| unexpected stage restarts | "
        f"{', '.join(f'{k} {v}' for k, v in r.restarts.items())} | "
        f"{_yes(verdicts['no restarts'])} |",
        f"| API 5xx answers | {_n(r.server_errors)} of "
        f"{_n(sum(q['requests'] for q in r.queries.values()))} requests | "
        f"{_yes(verdicts['no API server errors'])} |",
        f"| memory bounded (2nd-half peak ≤ {1 + GROWTH_LIMIT:.2f} × 1st-half peak, "
        f"every stage) | {'yes' if r.memory_bounded else 'no'}"
        + (
            f" | {_yes(verdicts['memory bounded'])} |"
            if r.memory_judged
            else f"; not judged: under {JUDGE_MEMORY_AFTER_S / 60:.0f} minutes | – |"
        ),
        f"| **soak** | {'passed' if r.passed else 'FAILED'} | {_yes(r.passed)} |",
        "",
        "| flow (from the first connection to the stop) | value |",
        "|---|---:|",
        f"| offered: trades the simulator printed | {_n(flow['offered_per_s'])} trades/s "
        f"(peak second {_n(flow['peak_offered_per_s'])}) |",
        f"| achieved: trades captured into the log | {_n(flow['captured_per_s'])} trades/s |",
        f"| achieved: trades committed to the lake | {_n(flow['committed_per_s'])} trades/s |",
        f"| ingest behind the exchange at the stop | {_n(flow['ingest_backlog'])} trades "
        f"({flow['ingest_backlog_s']:.1f} s) |",
        f"| lake behind the exchange at the stop | {_n(flow['lake_backlog'])} trades "
        f"({flow['lake_backlog_s']:.1f} s); in the log, not yet committed: "
        f"{_n(flow['log_not_in_lake'])} |",
        f"| sustained at this rate | {_yes(flow['sustained'])} |",
        f"| highest degradation level (SOFT sheds only tier-3 quotes) | "
        f"{r.degradation_max}; trades shed: {_n(flow['trades_shed'])} |",
        f"| clean stop: capture's final repairs + sink drain | {flow['stop_s']:.1f} s |",
        f"| trades in the lake at the end | {_n(check['rows'])} |",
        "",
        "| fault injected by the simulator | count | what K2 did |",
        "|---|---:|---|",
    ]
    sim, ingest = r.simulator, r.ingest
    gaps = ", ".join(f"{k} {_n(v)}" for k, v in sorted(r.gaps.items())) or "none"
    lines += [
        f"| frames dropped | {_n(sim['dropped'])} | {_n(ingest.get('gaps_detected', 0))} "
        f"gaps detected, {_n(ingest.get('gaps_repaired', 0))} repaired from REST "
        f"({_n(ingest.get('trades_repaired', 0))} trades), "
        f"{_n(ingest.get('gaps_unrepairable', 0))} unrepairable; gaps table: {gaps} |",
        f"| frames duplicated | {_n(sim['duplicated'])} | "
        f"{_n(ingest.get('duplicates', 0))} duplicates removed |",
        f"| connections cut (no close frame) | {_n(sim['disconnects_forced'])} | "
        f"{_n(r.stream.get('reconnects', 0))} reconnects |",
        f"| REST 429 (Retry-After 1 s) | {_n(sim['rest_429s'])} of "
        f"{_n(sim['rest_requests'])} requests | paused and retried; "
        f"{_n(sim['rest_418s'])} bans (418) |",
        f"| events skipped because the client fell behind the simulator's tape | "
        f"{_n(sim['lagged'])} | repaired as gaps |",
        f"| dead letters | – | {_n(r.dead_letters)} |",
        "",
        "| stage | CPU (% of a core) | peak RSS (sampled) | VmHWM | 1st-half peak | "
        "2nd-half peak | growth | last sample | bounded |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for name, m in r.memory.items():
        label = "soak process (simulator + probes)" if name == "soak" else name
        growth = "–" if m["growth"] is None else f"{m['growth']:+.0%}"
        bounded = (
            "–"
            if name == "soak"
            else _yes(m["bounded"])
            if r.memory_judged
            else f"({'yes' if m['bounded'] else 'no'}: not judged)"
        )
        cpu = r.cpu.get(name)
        lines.append(
            f"| {label} | {'–' if cpu is None else f'{cpu:.0f}%'} | {_mb(m['peak'])} | "
            f"{_mb(m['hwm'])} | {_mb(m['first_half_peak'])} | {_mb(m['second_half_peak'])} | "
            f"{growth} | {_mb(m['end'])} | {bounded} |"
        )
    if "machine" in r.cpu:
        cores = int(r.machine.get("cores") or os.cpu_count() or 1)
        lines += [
            "",
            f"CPU while streaming: the machine was busy {r.cpu['machine'] / cores:.0f}% of "
            f"its {cores} cores; the soak and its stages used "
            f"{(r.cpu['machine'] - r.cpu['others']) / cores:.0f}%, other processes "
            f"{r.cpu['others'] / cores:.0f}%.",
        ]
    lines += [
        "",
        "| query (API) | requests | 200 | 5xx | other errors | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in QUERY_KINDS:
        q = r.queries[kind]
        lines.append(
            f"| {_QUERY_LABELS[kind]} | {_n(q['requests'])} | {_n(q['ok'])} | "
            f"{_n(q['server_errors'])} | {_n(q['other_errors'] + q['transport_errors'])} | "
            f"{_ms(q['p50_ms'])} | {_ms(q['p99_ms'])} | {_ms(q['max_ms'])} |"
        )
    notes = [
        "- The soak process's own memory holds the simulator's full trade history (33 B "
        "a trade) for the final check; it is reported, not judged.",
        "- Query latency is measured by a client in the soak's process, which also runs "
        "the simulator: it includes that process's scheduling on a busy machine.",
    ]
    if r.query_failure:
        notes.append(f"- Query load: {r.query_failure}.")
    info = ", ".join(f"{k} {v}" for k, v in r.machine.items() if k not in ("ran", "cores"))
    ran = r.machine.get("ran", "")
    lines += ["", *notes, "", f"Command: `{r.command}`. Ran {ran}; {info}.", ""]
    return "\n".join(lines)


_QUERY_LABELS = {
    "recent": "`/v1/trades/recent`, last minute, 100 newest",
    "bars": "`/v1/bars`, 1m bars of the last 10 min",
    "window": "`/v1/trades`, 90 s to 30 s ago (≤ 1,000)",
}


def _faults(faults: dict[str, Any]) -> str:
    return (
        f"{faults['drop']:.2%} of frames dropped, {faults['duplicate']:.2%} sent twice, "
        f"connections cut after {faults['disconnect_every_s']:g} s, every "
        f"{faults['rest_429_every_n']}th REST request 429"
    )


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def write_section(path: Path, block: str, text: str) -> None:
    """Put ``text`` in ``block`` (:data:`FULL` or :data:`SHORT`) of ``path``; the first
    time, add the Soak section (before "How to reproduce", else at the end). Everything
    else in the file stays as it was."""
    content = path.read_text()
    start, end = _markers(block)
    if start not in content:
        anchor = "## How to reproduce"
        head, sep, tail = content.partition(anchor)
        content = f"{head}{_SECTION}\n{sep}{tail}" if sep else f"{content.rstrip()}\n\n{_SECTION}"
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    os.replace(tmp, path)
