"""The degradation manager, shedding policy, shed ledger and memory probe.

Time is a fake clock: no test waits.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from k2.errors import TerminalError
from k2.ops.degradation import (
    DegradationManager,
    DegradationSettings,
    Level,
    LevelChange,
    ShedLedger,
    ShedRange,
    Thresholds,
    memory_limit_bytes,
    process_memory_fraction,
    process_rss_bytes,
    sheds,
)

N, S, G, A, CB = Level


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_settings(**overrides: object) -> DegradationSettings:
    values: dict[str, object] = {
        "lag_s": Thresholds(soft=10, graceful=20, aggressive=30, circuit_break=40),
        "memory_fraction": Thresholds(soft=0.5, graceful=0.6, aggressive=0.7, circuit_break=0.8),
        "hysteresis": 0.25,
        "cooldown_s": 60.0,
        "tier1_symbols": ["BTCUSDT", "ETHUSDT"],
        "tier2_symbols": ["BNBUSDT"],
    }
    values.update(overrides)
    return DegradationSettings.model_validate(values)


def make_manager(**overrides: object) -> tuple[DegradationManager, FakeClock]:
    clock = FakeClock()
    return DegradationManager(make_settings(**overrides), clock=clock), clock


# --- levels -----------------------------------------------------------------------------


def test_walks_up_through_every_level_as_lag_rises() -> None:
    manager, clock = make_manager()
    assert manager.update(0.0, 0.1) is N
    for lag, level in [(9.9, N), (10.0, S), (19.0, S), (20.0, G), (30.0, A), (40.0, CB)]:
        clock.now += 1.0
        assert manager.update(lag, 0.1) is level
    assert [(c.old, c.new) for c in manager.history] == [(N, S), (S, G), (G, A), (A, CB)]
    assert manager.history[-1].at == 6.0
    assert manager.history[-1].reason == "lag 40 s >= 40 s"
    assert manager.level is CB


def test_jumps_up_several_levels_at_once() -> None:
    manager, _ = make_manager()
    assert manager.update(35.0, 0.0) is A
    assert manager.history == (LevelChange(0.0, N, A, "lag 35 s >= 30 s"),)


def test_memory_alone_drives_levels() -> None:
    manager, _ = make_manager()
    assert manager.update(0.0, 0.55) is S
    assert manager.update(0.0, 0.65) is G
    assert manager.update(0.0, 0.85) is CB
    assert manager.history[-1].reason == "memory 0.85 >= 0.8"


def test_the_stronger_pressure_wins() -> None:
    manager, _ = make_manager()
    assert manager.update(12.0, 0.75) is A


def test_hysteresis_keeps_the_level_until_pressure_is_clearly_lower() -> None:
    manager, clock = make_manager()
    manager.update(20.0, 0.0)
    clock.now += 1000.0  # cooldown long over: only hysteresis holds the level
    assert manager.update(19.9, 0.0) is G  # just under the enter threshold
    assert manager.update(15.0, 0.0) is G  # exactly the exit threshold, 20 × (1 − 0.25)
    assert manager.update(14.9, 0.0) is S
    assert manager.history[-1].reason == "recovering: lag 14.9 s < 15 s, memory 0 < 0.45"


def test_hysteresis_applies_to_memory_too() -> None:
    manager, clock = make_manager()
    manager.update(0.0, 0.6)
    clock.now += 1000.0
    assert manager.update(0.0, 0.46) is G
    assert manager.update(0.0, 0.44) is S


def test_cooldown_steps_down_one_level_per_cooldown() -> None:
    manager, clock = make_manager()
    assert manager.update(50.0, 0.9) is CB
    steps = []
    for t in range(0, 400):
        clock.now = float(t)
        before = manager.level
        after = manager.update(0.0, 0.0)
        if after != before:
            steps.append((t, before, after))
    assert steps == [(60, CB, A), (120, A, G), (180, G, S), (240, S, N)]


def test_rising_pressure_during_recovery_goes_up_at_once() -> None:
    manager, clock = make_manager()
    manager.update(45.0, 0.0)
    clock.now = 60.0
    assert manager.update(0.0, 0.0) is A
    clock.now = 61.0
    assert manager.update(41.0, 0.0) is CB
    clock.now = 120.0
    assert manager.update(0.0, 0.0) is CB  # the cooldown restarted at 61
    clock.now = 121.0
    assert manager.update(0.0, 0.0) is A


def test_records_behind_drive_levels_only_when_configured() -> None:
    off, _ = make_manager(lag_records=None)
    assert off.update(0.0, 0.0, lag_records=10**9) is N
    on, _ = make_manager(
        lag_records=Thresholds(soft=1e3, graceful=1e4, aggressive=1e5, circuit_break=1e6)
    )
    assert on.update(0.0, 0.0, lag_records=20_000) is G
    assert on.history[-1].reason == "backlog 20000 records >= 10000 records"


def test_listeners_get_each_change() -> None:
    manager, clock = make_manager(cooldown_s=0.0)
    changes: list[LevelChange] = []
    manager.on_change(changes.append)
    manager.update(25.0, 0.0)
    clock.now = 5.0
    manager.update(0.0, 0.0)
    assert [(c.at, c.old, c.new) for c in changes] == [(0.0, N, G), (5.0, G, S)]


def test_nan_pressure_is_refused() -> None:
    manager, _ = make_manager()
    with pytest.raises(ValueError, match="memory pressure is NaN"):
        manager.update(1.0, float("nan"))


# --- property -----------------------------------------------------------------------------

pressures = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=90.0),  # seconds since the previous update
        st.floats(min_value=0.0, max_value=60.0),  # lag, s
        st.floats(min_value=0.0, max_value=1.0),  # memory fraction
    ),
    max_size=80,
)


def entered_level(lag: float, memory: float) -> Level:
    lag_enter, mem_enter = (10, 20, 30, 40), (0.5, 0.6, 0.7, 0.8)
    return Level(max(sum(lag >= t for t in lag_enter), sum(memory >= t for t in mem_enter)))


@settings(max_examples=150, deadline=None)
@given(pressures)
def test_levels_follow_pressure_and_recovery_respects_the_cooldown(
    steps: list[tuple[float, float, float]],
) -> None:
    manager, clock = make_manager()
    last_change = clock.now
    for dt, lag, memory in steps:
        clock.now += dt
        before = manager.level
        after = manager.update(lag, memory)
        assert N <= after <= CB
        assert after >= entered_level(lag, memory)  # never below what pressure demands
        if after > before:
            assert after == entered_level(lag, memory)  # up: straight to that level
        if after < before:
            assert after == before - 1  # down: one level at a time ...
            assert clock.now - last_change >= 60.0  # ... each after a full cooldown
        if after != before:
            last_change = clock.now
    history = manager.history
    assert all(a.new == b.old and a.at <= b.at for a, b in itertools.pairwise(history))


# --- shedding ---------------------------------------------------------------------------

# (level, tier) → (trade shed, quote shed), as documented in the module docstring.
SHED_TABLE: dict[tuple[Level, int], tuple[bool, bool]] = {
    (N, 1): (False, False), (N, 2): (False, False), (N, 3): (False, False),
    (S, 1): (False, False), (S, 2): (False, False), (S, 3): (False, True),
    (G, 1): (False, False), (G, 2): (False, True), (G, 3): (True, True),
    (A, 1): (False, True), (A, 2): (True, True), (A, 3): (True, True),
    (CB, 1): (True, True), (CB, 2): (True, True), (CB, 3): (True, True),
}  # fmt: skip


@pytest.mark.parametrize(("level", "tier"), sorted(SHED_TABLE))
def test_shed_table(level: Level, tier: int) -> None:
    trade, quote = SHED_TABLE[(level, tier)]
    assert sheds(level, tier, "trade") is trade
    assert sheds(level, tier, "quote") is quote


@pytest.mark.parametrize(
    ("symbol", "tier"), [("BTCUSDT", 1), ("ethusdt", 1), ("BNBUSDT", 2), ("DOGEUSDT", 3)]
)
def test_manager_sheds_by_symbol_tier_at_its_level(symbol: str, tier: int) -> None:
    manager, clock = make_manager()
    assert manager.tier(symbol) == tier
    for pressure, level in [(0.0, N), (10.0, S), (20.0, G), (30.0, A), (40.0, CB)]:
        clock.now += 1.0
        manager.update(pressure, 0.0)
        trade, quote = SHED_TABLE[(level, tier)]
        assert manager.should_shed(symbol, "trade") is trade
        assert manager.should_shed(symbol, "quote") is quote


# --- ledger -----------------------------------------------------------------------------


def test_ledger_merges_touching_and_overlapping_ranges() -> None:
    ledger = ShedLedger()
    for trade_id in (5, 6, 7, 9):
        ledger.record("BTCUSDT", trade_id)
    ledger.record_range("ETHUSDT", 100, 199)
    assert ledger.pending() == 104
    ledger.record("BTCUSDT", 8)  # bridges 5-7 and 9
    ledger.record_range("BTCUSDT", 1, 3)
    ledger.record_range("BTCUSDT", 2, 4)  # overlaps 1-3 and touches 5-9
    ledger.record_range("BTCUSDT", 20, 30)
    ledger.record_range("BTCUSDT", 12, 15)
    ledger.record_range("BTCUSDT", 11, 31)  # swallows 12-15 and 20-30
    ledger.record_many("ETHUSDT", [203, 201, 202, 201, 50])
    drained = ledger.drain()
    assert drained == [
        ShedRange("BTCUSDT", 1, 9),
        ShedRange("BTCUSDT", 11, 31),
        ShedRange("ETHUSDT", 50, 50),
        ShedRange("ETHUSDT", 100, 199),
        ShedRange("ETHUSDT", 201, 203),
    ]
    assert [r.count for r in drained] == [9, 21, 1, 100, 3]
    assert ledger.drain() == []
    assert ledger.pending() == 0


def test_ledger_counts_shed_quotes_and_rejects_backwards_ranges() -> None:
    ledger = ShedLedger()
    ledger.record_quotes("DOGEUSDT", 3)
    ledger.record_quotes("DOGEUSDT")
    assert ledger.quotes_shed == {"DOGEUSDT": 4}
    with pytest.raises(ValueError, match="last_id"):
        ledger.record_range("BTCUSDT", 10, 9)


# --- settings -----------------------------------------------------------------------------


def test_default_settings_are_valid_and_rising() -> None:
    defaults = DegradationSettings()
    assert defaults.lag_s.enter(S) < defaults.lag_s.enter(CB)
    assert defaults.lag_records is not None and defaults.lag_records.soft == 200_000
    assert defaults.tier1_symbols == ["BTCUSDT", "ETHUSDT"]


def test_settings_accept_comma_separated_tiers() -> None:
    parsed = DegradationSettings.model_validate({"tier1_symbols": "btcusdt, ethusdt"})
    assert parsed.tier1_symbols == ["BTCUSDT", "ETHUSDT"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lag_s": {"soft": 5, "graceful": 5, "aggressive": 9, "circuit_break": 10}}, "rise"),
        ({"tier1_symbols": ["BTCUSDT"], "tier2_symbols": ["btcusdt"]}, "both tier 1 and tier 2"),
        ({"hysteresis": 1.0}, "hysteresis"),
    ],
)
def test_settings_reject_nonsense(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DegradationSettings.model_validate(values)


# --- memory probe -----------------------------------------------------------------------


def test_memory_probe_reads_this_process() -> None:
    rss = process_rss_bytes()
    assert rss > 10 * 2**20  # a Python process with pydantic loaded holds more than 10 MiB
    assert memory_limit_bytes() > rss
    fraction = process_memory_fraction(limit_bytes=rss * 4)
    assert 0.1 < fraction < 1.0  # about a quarter; RSS moves a little between reads
    assert 0.0 < process_memory_fraction() < 1.0


def test_memory_probe_parses_proc_and_cgroup_files(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroup.mkdir()
    (proc / "self" / "statm").write_text("9000 2500 300 10 0 1200 0\n")
    (proc / "meminfo").write_text("MemTotal:        2048000 kB\nMemFree:  1 kB\n")
    assert process_rss_bytes(proc) == 2500 * os.sysconf("SC_PAGE_SIZE")
    assert memory_limit_bytes(proc, cgroup) == 2048000 * 1024
    (cgroup / "memory.max").write_text("max\n")  # cgroup without a limit
    assert memory_limit_bytes(proc, cgroup) == 2048000 * 1024
    (cgroup / "memory.max").write_text("536870912\n")  # a container limited to 512 MiB
    assert memory_limit_bytes(proc, cgroup) == 536870912


def test_memory_probe_falls_back_and_says_what_to_set(tmp_path: Path) -> None:
    assert process_rss_bytes(tmp_path) > 0  # no statm: peak RSS from resource
    with pytest.raises(TerminalError, match="memory_limit_bytes"):
        memory_limit_bytes(tmp_path, tmp_path)
