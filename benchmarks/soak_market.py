"""The soak's exchange: many synthetic symbols at a fixed total trade rate, with faults.

K2's simulator ships five symbols (:data:`~k2.simulator.DEFAULT_SYMBOLS`). The soak
needs a hundred, so the rest are generated here, plainly named ``SYM006USDT`` …
``SYM100USDT`` so nobody mistakes them for listed pairs. Activity follows Zipf's law
(rank *k* trades ∝ 1/*k*), as on a real exchange where a few pairs carry most of the
flow: with 100 symbols BTCUSDT gets ~19% of the trades and the last symbol ~0.2%.
The simulator splits its total rate in proportion to these weights.
"""

from __future__ import annotations

from dataclasses import replace

from k2.errors import ConfigError
from k2.simulator import DEFAULT_SYMBOLS, FaultConfig, SimulatorConfig, SymbolSpec

__all__ = [
    "DROP",
    "DUPLICATE",
    "KEEP_EVERY_TRADE",
    "MAX_SYMBOLS",
    "REST_429_EVERY",
    "disconnect_interval_s",
    "soak_faults",
    "soak_simulator",
    "soak_symbols",
]

#: Most symbols the soak generates (one WebSocket connection carries up to 1,024 streams).
MAX_SYMBOLS = 500
#: ``trade_retention`` that keeps every trade (``None`` means the synthetic default of
#: 1,000,000 a symbol, which BTCUSDT prints in under five minutes at 20,000 trades/s).
KEEP_EVERY_TRADE = 2**62


def soak_symbols(count: int) -> tuple[SymbolSpec, ...]:
    """``count`` symbols: the simulator's five defaults first, then generated ones.

    Each symbol's ``trade_rate`` is its Zipf weight ``100 / rank``; only the proportions
    matter once the simulator is given a total rate. Raises ConfigError for a count
    outside 1..:data:`MAX_SYMBOLS`.
    """
    if not 1 <= count <= MAX_SYMBOLS:
        raise ConfigError(f"--symbols {count}: choose 1 to {MAX_SYMBOLS}")
    specs: list[SymbolSpec] = []
    for rank in range(1, count + 1):
        weight = 100.0 / rank
        if rank <= len(DEFAULT_SYMBOLS):
            specs.append(replace(DEFAULT_SYMBOLS[rank - 1], trade_rate=weight))
            continue
        base = f"SYM{rank:03d}"
        specs.append(
            SymbolSpec(
                symbol=f"{base}USDT",
                base_asset=base,
                quote_asset="USDT",
                tick_size="0.0001",
                step_size="0.01",
                min_notional="5",
                start_price=f"{1 + (rank * 37) % 200}.5000",  # varied, on the tick grid
                typical_qty="10.00",
                trade_rate=weight,
                first_trade_id=rank * 10_000_000,
                first_update_id=rank * 100_000_000,
            )
        )
    return tuple(specs)


def disconnect_interval_s(duration_s: float) -> float:
    """How long each WebSocket connection lives before the simulator cuts it: about five
    cuts per run, at least 15 s and at most 60 s apart."""
    return min(60.0, max(15.0, duration_s / 5))


#: Default fault levels (see :func:`soak_faults`).
DROP = 0.0001
DUPLICATE = 0.001
REST_429_EVERY = 50


def soak_faults(
    duration_s: float,
    seed: int,
    *,
    drop: float = DROP,
    duplicate: float = DUPLICATE,
    disconnect_every_s: float | None = None,
    rest_429_every: int = REST_429_EVERY,
) -> FaultConfig:
    """The faults the soak injects: the four the issue names, seeded. By default:

    - 0.01% of frames dropped: at 20,000 trades/s, 2 gaps a second, each repaired with
      one REST call (K2 asks for each gap separately; at 0.05% the 10 calls a second
      under 429s fell behind, and Binance's own weight limit, 6,000 a minute at 25 a
      call, allows 4 a second);
    - 0.1% sent twice (dedup must remove them);
    - every connection cut without a close frame after ``disconnect_every_s`` (default
      :func:`disconnect_interval_s`), so every symbol has a gap to repair at once;
    - every 50th REST request answered 429 with ``Retry-After: 1``.

    Raises ConfigError for a value out of range, naming it.
    """
    return FaultConfig(
        seed=seed,
        drop=drop,
        duplicate=duplicate,
        disconnect_every_s=disconnect_every_s or disconnect_interval_s(duration_s),
        rest_429_every_n=rest_429_every,
        rest_retry_after_s=1,
    )


def soak_simulator(
    *,
    symbols: int,
    trade_rate: float,
    quote_ratio: float,
    seed: int,
    faults: FaultConfig,
) -> SimulatorConfig:
    """The soak's simulator: ``trade_rate`` trades/s in all (plus ``quote_ratio``
    bookTicker updates per trade) over ``symbols`` symbols, with ``faults``.

    Trade ids continue from the wall clock, and the REST history keeps every trade
    (:data:`KEEP_EVERY_TRADE`: 33 bytes a trade in the soak's own process, ~400 MB for
    10 minutes at 20,000 trades/s), so the final check can compare the lake with
    everything the exchange printed and a late repair always finds its trades.
    """
    if not trade_rate > 0:
        raise ConfigError(f"--rate {trade_rate}: give a positive number of trades/s")
    return SimulatorConfig(
        port=0,
        symbols=soak_symbols(symbols),
        rate=trade_rate * (1.0 + quote_ratio),
        quote_ratio=quote_ratio,
        seed=seed,
        faults=faults,
        continue_ids=True,
        trade_retention=KEEP_EVERY_TRADE,
    )
