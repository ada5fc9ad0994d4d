"""Settings validation: every bad value names its field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from k2.errors import ConfigError
from k2.simulator import DEFAULT_SYMBOLS, FaultConfig, SimulatorConfig, SymbolSpec


def test_defaults_are_binance_like_and_faults_off() -> None:
    config = SimulatorConfig()
    assert (config.host, config.port, config.mode) == ("127.0.0.1", 0, "synthetic")
    assert (config.ping_interval_s, config.pong_timeout_s) == (20.0, 60.0)
    assert (config.max_control_per_s, config.max_streams) == (5, 1024)
    assert not config.faults.stream_faults
    assert config.effective_trade_retention == 1_000_000
    replay = SimulatorConfig(mode="replay", replay_path="builtin")
    assert replay.effective_trade_retention is None
    assert [s.symbol for s in DEFAULT_SYMBOLS] == [
        "BTCUSDT",
        "ETHUSDT",
        "BNBUSDT",
        "ADAUSDT",
        "DOGEUSDT",
    ]


def test_default_symbols_sit_on_their_own_grids() -> None:
    for spec in DEFAULT_SYMBOLS:
        assert Decimal(spec.start_price) % Decimal(spec.tick_size) == 0
        assert Decimal(spec.typical_qty) % Decimal(spec.step_size) == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "replay"}, "replay_path"),
        ({"speed": -1.0}, "speed"),
        ({"port": 70000}, "port"),
        ({"rate": 0.0}, "rate"),
        ({"tape_capacity": 0}, "tape_capacity"),
        ({"pong_timeout_s": 0.0}, "pong_timeout_s"),
        ({"trade_retention": 0}, "trade_retention"),
        ({"symbols": (DEFAULT_SYMBOLS[0], DEFAULT_SYMBOLS[0])}, "duplicate"),
    ],
)
def test_bad_simulator_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SimulatorConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop": 1.5}, "drop"),
        ({"malformed": -0.1}, "malformed"),
        ({"disconnect_every_s": 0.0}, "disconnect_every_s"),
        ({"max_disconnects": 0}, "max_disconnects"),
        ({"reorder_depth": 0}, "reorder_depth"),
        ({"rest_429_every_n": 0}, "rest_429_every_n"),
    ],
)
def test_bad_fault_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


def test_symbol_spec_checks_grids() -> None:
    good = DEFAULT_SYMBOLS[0]
    with pytest.raises(ConfigError, match="start_price"):
        SymbolSpec("BTCUSDT", "BTC", "USDT", "0.01", "0.00001", "5", "1.001", "0.001", 1.0, 1, 1)
    with pytest.raises(ConfigError, match="typical_qty"):
        SymbolSpec("BTCUSDT", "BTC", "USDT", "0.01", "0.001", "5", "1.00", "0.0001", 1.0, 1, 1)
    with pytest.raises(ConfigError, match="base_asset"):
        SymbolSpec("BTCUSDT", "ETH", "USDT", "0.01", "0.001", "5", "1.00", "0.001", 1.0, 1, 1)
    with pytest.raises(ConfigError, match=r"0\.00000001"):
        SymbolSpec("BTCUSDT", "BTC", "USDT", "0.000000001", "1", "5", "1", "1", 1.0, 1, 1)
    assert good.symbol == "BTCUSDT"
