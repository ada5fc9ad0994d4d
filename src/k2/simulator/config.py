"""Settings of the local exchange simulator, as frozen dataclasses with safe defaults.

Every invalid value raises :class:`k2.errors.ConfigError` naming the field at fault.
Defaults reproduce Binance's documented behaviour (ping every 20 s, 60 s pong timeout,
5 control messages a second, 1,024 streams a connection) with every fault off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

from k2.errors import ConfigError

__all__ = [
    "BUILTIN_REPLAY",
    "DEFAULT_SYMBOLS",
    "FaultConfig",
    "SimulatorConfig",
    "SimulatorMode",
    "SymbolSpec",
]

SimulatorMode = Literal["synthetic", "replay"]

#: ``replay_path`` value selecting the capture shipped inside the package.
BUILTIN_REPLAY = "builtin"

#: Prices and sizes are handled as integers of 1e-8 units (Binance spot quotes every
#: price and quantity with 8 decimals), so no float ever touches them.
UNITS_PER_ONE = 100_000_000


def to_units(value: str | Decimal, what: str) -> int:
    """``value`` as an exact integer count of 1e-8 units; ConfigError if not exact."""
    number = Decimal(value)
    units = number * UNITS_PER_ONE
    if not number.is_finite() or units != units.to_integral_value():
        raise ConfigError(f"{what}={value!r} is not a multiple of 0.00000001")
    return int(units)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One synthetic spot symbol: its exchange filters and how its market behaves.

    Prices and sizes are decimal strings (exact, never floats). ``trade_rate`` is the
    long-run mean number of trades per second (bursts come on top, see
    :class:`SimulatorConfig`); ``typical_qty`` is the median-ish trade size.
    ``first_trade_id`` and ``first_update_id`` seed the trade-id and bookTicker
    update-id counters, which then only ever increase.
    """

    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: str
    step_size: str
    min_notional: str
    start_price: str
    typical_qty: str
    trade_rate: float
    first_trade_id: int
    first_update_id: int
    spread_ticks: int = 1

    def __post_init__(self) -> None:
        where = f"SymbolSpec({self.symbol!r})"
        if not self.symbol.isalnum() or self.symbol.upper() != self.symbol:
            raise ConfigError(f"{where}.symbol must be upper-case letters and digits")
        if self.symbol != self.base_asset + self.quote_asset:
            raise ConfigError(f"{where}: symbol must equal base_asset + quote_asset")
        tick = to_units(self.tick_size, f"{where}.tick_size")
        step = to_units(self.step_size, f"{where}.step_size")
        price = to_units(self.start_price, f"{where}.start_price")
        qty = to_units(self.typical_qty, f"{where}.typical_qty")
        to_units(self.min_notional, f"{where}.min_notional")
        if tick <= 0 or step <= 0:
            raise ConfigError(f"{where}: tick_size and step_size must be positive")
        if price <= 0 or price % tick:
            raise ConfigError(f"{where}.start_price must be a positive multiple of tick_size")
        if qty <= 0 or qty % step:
            raise ConfigError(f"{where}.typical_qty must be a positive multiple of step_size")
        if not (self.trade_rate > 0 and math.isfinite(self.trade_rate)):
            raise ConfigError(f"{where}.trade_rate must be a positive number of trades/s")
        if self.first_trade_id < 0 or self.first_update_id < 0:
            raise ConfigError(f"{where}: first ids must not be negative")
        if self.spread_ticks < 1:
            raise ConfigError(f"{where}.spread_ticks must be at least 1")


#: Five liquid USDT pairs. Filters and prices are illustrative of 2024-2025 Binance spot
#: (tick/step sizes as listed then, prices rounded); they are not live values.
DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec(
        "BTCUSDT", "BTC", "USDT", "0.01", "0.00001", "5", "97000.00", "0.00200", 40.0,
        4_700_000_000, 60_000_000_000,
    ),
    SymbolSpec(
        "ETHUSDT", "ETH", "USDT", "0.01", "0.0001", "5", "3400.00", "0.0500", 25.0,
        2_300_000_000, 45_000_000_000,
    ),
    SymbolSpec(
        "BNBUSDT", "BNB", "USDT", "0.01", "0.001", "5", "690.00", "0.200", 8.0,
        1_050_000_000, 30_000_000_000,
    ),
    SymbolSpec(
        "ADAUSDT", "ADA", "USDT", "0.0001", "0.1", "5", "0.9000", "300.0", 6.0,
        620_000_000, 14_000_000_000,
    ),
    SymbolSpec(
        "DOGEUSDT", "DOGE", "USDT", "0.00001", "1", "1", "0.32000", "1000", 10.0,
        1_000_000_000, 20_000_000_000,
    ),
)  # fmt: skip


def _share(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"FaultConfig.{name}={value!r} must be a share between 0 and 1")


def _positive_or_none(owner: str, name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{owner}.{name}={value!r} must be positive (or None for off)")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Faults injected on delivery. Everything is off by default.

    WebSocket faults act per connection at send time, drawn from a RNG seeded with
    ``seed`` and the connection's ordinal, so a run is reproducible. They never touch
    the shared tape or the REST trade history, so a client can always repair a gap.

    - ``drop``/``duplicate``/``reorder``/``malformed``: share of data frames dropped,
      sent twice, delayed by 1..``reorder_depth`` positions, or replaced by a corrupt
      (truncated or garbled, still UTF-8) text frame.
    - ``disconnect_every_s``: abort each connection's TCP stream (no close frame, the
      client sees 1006) this long after it opened; ``max_disconnects`` caps the total.
    - ``stall_every_s``/``stall_s``: pause a connection's sending for ``stall_s``;
      events keep landing on the tape and are then sent in one burst (only events that
      fell off the bounded tape meanwhile are skipped, counted as ``lagged``).
    - ``server_shutdown_after_s``: send Binance's ``serverShutdown`` event this long
      after the connection opened, then close it (1001) ``server_shutdown_grace_s`` later.
    - ``rest_429_share``/``rest_429_every_n``: answer that share (or every n-th) of REST
      requests with HTTP 429, ``Retry-After: rest_retry_after_s`` and code -1003; a
      request inside that Retry-After window is refused with 429 again.
      ``rest_418_after``: after that many requests inside a Retry-After window the
      client is banned with HTTP 418 for ``rest_ban_s`` seconds.
    """

    seed: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_depth: int = 3
    malformed: float = 0.0
    disconnect_every_s: float | None = None
    max_disconnects: int | None = None
    stall_every_s: float | None = None
    stall_s: float = 1.0
    server_shutdown_after_s: float | None = None
    server_shutdown_grace_s: float = 1.0
    rest_429_share: float = 0.0
    rest_429_every_n: int | None = None
    rest_retry_after_s: int = 1
    rest_418_after: int | None = None
    rest_ban_s: int = 60

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder", "malformed", "rest_429_share"):
            _share(name, getattr(self, name))
        for name in ("disconnect_every_s", "stall_every_s", "server_shutdown_after_s"):
            _positive_or_none("FaultConfig", name, getattr(self, name))
        if self.reorder_depth < 1:
            raise ConfigError("FaultConfig.reorder_depth must be at least 1")
        if self.stall_s <= 0 or self.server_shutdown_grace_s < 0:
            raise ConfigError("FaultConfig.stall_s must be > 0, server_shutdown_grace_s >= 0")
        for name in ("max_disconnects", "rest_429_every_n", "rest_418_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"FaultConfig.{name}={value!r} must be >= 1 (or None)")
        if self.rest_retry_after_s < 0 or self.rest_ban_s < 0:
            raise ConfigError("FaultConfig.rest_retry_after_s and rest_ban_s must be >= 0")

    @property
    def stream_faults(self) -> bool:
        """True if any per-frame fault (drop, duplicate, reorder, malformed) is on."""
        return bool(self.drop or self.duplicate or self.reorder or self.malformed)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulator listens, what market it plays, and which faults it injects.

    - ``host``/``port``: where to listen (port 0 picks a free port).
    - ``mode``: ``"synthetic"`` generates a market for ``symbols``; ``"replay"`` plays
      the capture at ``replay_path`` (a file, or ``"builtin"`` for the packaged
      hftbacktest BTCUSDT capture) at ``speed`` times real time (0 = as fast as the
      slowest subscribed client reads). Replay starts when the first client subscribes.
    - ``rate``: synthetic only; total events per second (trades plus bookTicker updates)
      across all symbols, split in proportion to each symbol's ``trade_rate``. ``None``
      uses the symbols' own rates. ``quote_ratio`` bookTicker updates come per trade.
    - ``seed``: seeds the synthetic market (faults have their own seed).
    - ``tape_capacity``: events kept on the shared tape; a connection that falls
      further behind skips ahead (counted as ``lagged``).
    - ``trade_retention``: trades kept per symbol for REST history; ``None`` means keep
      all in replay mode and the last 1,000,000 in synthetic mode.
    - ``ping_interval_s``/``pong_timeout_s``, ``max_control_per_s``, ``max_streams``:
      Binance's WebSocket limits.
    - ``send_batch``: most frames written to a socket before awaiting its drain.
    - ``continue_ids``: synthetic only; number trades and quote updates from the wall
      clock, so a restarted simulator never reuses an id an earlier run printed
      (``k2 up --simulate`` restarts it with the platform). Its REST history still
      starts at its own start: trades "printed" while it was down are not served.
    """

    host: str = "127.0.0.1"
    port: int = 0
    mode: SimulatorMode = "synthetic"
    replay_path: str | Path | None = None
    speed: float = 1.0
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS
    rate: float | None = None
    quote_ratio: float = 2.5
    regime_switching: bool = True
    seed: int = 0
    tick_interval_s: float = 0.005
    tape_capacity: int = 262_144
    trade_retention: int | None = None
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 60.0
    max_control_per_s: int = 5
    max_streams: int = 1024
    send_batch: int = 2048
    continue_ids: bool = False
    faults: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("synthetic", "replay"):
            raise ConfigError(f"SimulatorConfig.mode={self.mode!r}: use synthetic or replay")
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"SimulatorConfig.port={self.port!r} is not a TCP port")
        if self.mode == "replay" and not self.replay_path:
            raise ConfigError("SimulatorConfig.replay_path is required in replay mode")
        if not (self.speed >= 0 and math.isfinite(self.speed)):
            raise ConfigError(f"SimulatorConfig.speed={self.speed!r} must be >= 0")
        if self.mode == "synthetic" and not self.symbols:
            raise ConfigError("SimulatorConfig.symbols must name at least one symbol")
        if len({s.symbol for s in self.symbols}) != len(self.symbols):
            raise ConfigError("SimulatorConfig.symbols has a duplicate symbol")
        _positive_or_none("SimulatorConfig", "rate", self.rate)
        if not (self.quote_ratio >= 0 and math.isfinite(self.quote_ratio)):
            raise ConfigError("SimulatorConfig.quote_ratio must be >= 0")
        for name in ("tick_interval_s", "ping_interval_s", "pong_timeout_s"):
            _positive_or_none("SimulatorConfig", name, getattr(self, name))
        for name in ("tape_capacity", "max_control_per_s", "max_streams", "send_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SimulatorConfig.{name} must be at least 1")
        if self.trade_retention is not None and self.trade_retention < 1:
            raise ConfigError("SimulatorConfig.trade_retention must be >= 1 (or None)")

    @property
    def effective_trade_retention(self) -> int | None:
        """Trades kept per symbol for REST: ``None`` means unbounded."""
        if self.trade_retention is not None:
            return self.trade_retention
        return None if self.mode == "replay" else 1_000_000
