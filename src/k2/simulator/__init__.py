"""A local exchange speaking Binance spot's public market-data protocol.

K2's tests, demo and benchmarks run against it instead of the real exchange. It
serves Binance's WebSocket streams (raw ``/ws`` and combined ``/stream``, live
SUBSCRIBE/UNSUBSCRIBE) and REST market data on one port, from either a synthetic
market or a replayed capture, and can inject delivery faults (drops, duplicates,
reordering, corrupt frames, disconnects, ``serverShutdown``, HTTP 429/418).

    async with SimulatorServer(SimulatorConfig(rate=10_000)) as sim:
        ...  # connect to f"{sim.ws_url}/stream?streams=btcusdt@trade"
"""

from k2.simulator.clock import Clock, ManualClock, SystemClock
from k2.simulator.config import (
    BUILTIN_REPLAY,
    DEFAULT_SYMBOLS,
    FaultConfig,
    SimulatorConfig,
    SimulatorMode,
    SymbolSpec,
)
from k2.simulator.server import SimulatorServer, run_simulator
from k2.simulator.stats import SimulatorStats

__all__ = [
    "BUILTIN_REPLAY",
    "DEFAULT_SYMBOLS",
    "Clock",
    "FaultConfig",
    "ManualClock",
    "SimulatorConfig",
    "SimulatorMode",
    "SimulatorServer",
    "SimulatorStats",
    "SymbolSpec",
    "SystemClock",
    "run_simulator",
]
