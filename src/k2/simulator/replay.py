"""Replay of a recorded capture onto the tape, payload bytes untouched.

A capture (see :mod:`k2.sources.captures`) is loaded into memory as a
:class:`Recording`: one ``(receive µs, stream name, raw payload)`` per data frame. For
combined-stream frames the stream name is the recorded one and the payload is the
exact bytes of ``data``; raw frames get their stream name from the event type. Control
replies and frames that are not stream events are skipped (and counted).

:func:`run_replay` waits until the first client subscribes, then appends events to the
tape at ``speed`` times the recorded pace (0: as fast as the slowest subscribed
connection reads), records the trades in the REST history as they are replayed, and
finishes the tape at the end.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec

from k2.errors import TerminalError
from k2.ops.log import get_logger
from k2.simulator.clock import Clock
from k2.simulator.config import BUILTIN_REPLAY, UNITS_PER_ONE
from k2.simulator.stats import SimulatorStats
from k2.simulator.streams import stream_symbol
from k2.simulator.tape import Tape, TradeHistory
from k2.sources.captures import read_capture

__all__ = [
    "BUILTIN_CAPTURE",
    "RecordedTrade",
    "Recording",
    "ReplayError",
    "load_recording",
    "resolve_capture",
    "run_replay",
]

_log = get_logger(__name__)

#: File name of the capture shipped in ``k2/simulator/data`` (see PROVENANCE.md there).
BUILTIN_CAPTURE = "hftbacktest_spot_btcusdt_20230405.dat.gz"

_REPLAY_CHUNK = 512  # events appended per step when replaying as fast as possible


class ReplayError(TerminalError):
    """A capture cannot be replayed (for example a trade price that is not exact)."""


class _Combined(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Payload(msgspec.Struct):
    e: str | None = None
    E: int | None = None
    s: str | None = None
    t: int | None = None
    p: str | None = None
    q: str | None = None
    T: int | None = None
    m: bool | None = None
    u: int | None = None
    b: object = None
    a: object = None
    B: object = None
    A: object = None
    k: dict[str, object] | None = None


_COMBINED = msgspec.json.Decoder(_Combined)
_PAYLOAD = msgspec.json.Decoder(_Payload)


@dataclass(frozen=True, slots=True)
class RecordedTrade:
    """A spot trade found in a capture; prices/sizes in 1e-8 units, time in UTC µs."""

    symbol: str
    trade_id: int
    price_units: int
    qty_units: int
    time_us: int
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class SymbolFacts:
    """What a capture shows about a symbol: the finest price and size decimals seen."""

    symbol: str
    price_decimals: int
    qty_decimals: int


@dataclass(slots=True)
class Recording:
    """A capture ready to replay: parallel lists, in capture order.

    ``trades`` maps an event's index to the trade it carries (trade events only).
    ``skipped`` counts frames that are not stream events (control replies, unknown
    shapes); ``unindexed_trades`` counts trades replayed but kept out of the REST
    history because their id did not increase.
    """

    source: str
    received_us: list[int] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    trades: dict[int, RecordedTrade] = field(default_factory=dict)
    symbols: dict[str, SymbolFacts] = field(default_factory=dict)
    skipped: int = 0
    unindexed_trades: int = 0

    def __len__(self) -> int:
        return len(self.payloads)


def _decimals(text: str) -> int:
    _, _, frac = text.partition(".")
    return len(frac.rstrip("0"))


def _units(text: str, what: str) -> int:
    value = Decimal(text) * UNITS_PER_ONE
    if value != value.to_integral_value():
        raise ReplayError(f"{what} {text!r} has more than 8 decimals")
    return int(value)


def _raw_stream(payload: _Payload) -> str | None:
    symbol = (payload.s or "").lower()
    if not symbol:
        return None
    if payload.e is None:
        return f"{symbol}@bookTicker" if payload.u is not None else None
    if payload.e == "trade":
        return f"{symbol}@trade"
    if payload.e == "aggTrade":
        return f"{symbol}@aggTrade"
    if payload.e == "depthUpdate":
        return f"{symbol}@depth"
    if payload.e == "kline" and payload.k is not None:
        return f"{symbol}@kline_{payload.k.get('i')}"
    return None


def resolve_capture(path: str | Path) -> Path:
    """The file behind a ``replay_path`` (``"builtin"`` is the packaged capture)."""
    if str(path) == BUILTIN_REPLAY:
        resource = importlib.resources.files("k2.simulator") / "data" / BUILTIN_CAPTURE
        return Path(str(resource))
    return Path(path)


def load_recording(path: str | Path) -> Recording:
    """Load the capture at ``path`` (or ``"builtin"``) into a :class:`Recording`.

    Raises :class:`k2.sources.captures.CaptureError` for an unreadable file or line,
    and :class:`ReplayError` if a trade carries a price or size finer than 1e-8.
    """
    file = resolve_capture(path)
    recording = Recording(source=str(file))
    price_decimals: dict[str, int] = {}
    qty_decimals: dict[str, int] = {}
    last_trade_id: dict[str, int] = {}
    for captured in read_capture(file):
        frame = captured.frame
        try:
            if frame.startswith(b'{"stream"') or b'"stream"' in frame[:64]:
                combined = _COMBINED.decode(frame)
                stream, payload_bytes = combined.stream, bytes(combined.data)
                payload = _PAYLOAD.decode(payload_bytes)
            else:
                payload_bytes = frame
                payload = _PAYLOAD.decode(frame)
                found = _raw_stream(payload)
                if found is None:
                    recording.skipped += 1
                    continue
                stream = found
        except msgspec.DecodeError:
            recording.skipped += 1
            continue
        index = len(recording.payloads)
        recording.received_us.append(captured.received_us)
        recording.streams.append(stream)
        recording.payloads.append(payload_bytes)
        symbol = stream_symbol(stream)
        trade = _recorded_trade(payload, symbol, file.name)
        if trade is not None:
            if trade.trade_id > last_trade_id.get(trade.symbol, -1):
                recording.trades[index] = trade
                last_trade_id[trade.symbol] = trade.trade_id
            else:
                # a repeated or out-of-order trade (e.g. a reconnect overlap) is replayed
                # as recorded but kept out of the REST history, which is ordered by id
                recording.unindexed_trades += 1
        for price, qty in _price_qty_pairs(payload):
            price_decimals[symbol] = max(price_decimals.get(symbol, 0), _decimals(price))
            qty_decimals[symbol] = max(qty_decimals.get(symbol, 0), _decimals(qty))
        price_decimals.setdefault(symbol, 0)
    for symbol, decimals in price_decimals.items():
        recording.symbols[symbol] = SymbolFacts(symbol, decimals, qty_decimals.get(symbol, 0))
    if recording.skipped or recording.unindexed_trades:
        _log.warning(
            "capture frames not replayed or not indexed",
            source=recording.source,
            skipped=recording.skipped,
            unindexed_trades=recording.unindexed_trades,
        )
    return recording


def _recorded_trade(payload: _Payload, symbol: str, file_name: str) -> RecordedTrade | None:
    if payload.e != "trade":
        return None
    trade_id, price, qty, trade_ms = payload.t, payload.p, payload.q, payload.T
    if trade_id is None or price is None or qty is None or trade_ms is None:
        return None
    where = f"{file_name} trade {trade_id}"
    return RecordedTrade(
        (payload.s or symbol).upper(),
        trade_id,
        _units(price, f"{where} price"),
        _units(qty, f"{where} qty"),
        trade_ms * 1000,
        bool(payload.m),
    )


def _price_qty_pairs(payload: _Payload) -> list[tuple[str, str]]:
    """Every (price, size) string pair an event shows, to infer tick and step sizes."""
    if payload.e in ("trade", "aggTrade"):
        return [(payload.p, payload.q)] if payload.p and payload.q else []
    if payload.e is None:  # bookTicker
        pairs = [(payload.b, payload.B), (payload.a, payload.A)]
    elif payload.e == "depthUpdate" and isinstance(payload.b, list) and isinstance(payload.a, list):
        pairs = [tuple(level) for level in (*payload.b, *payload.a) if isinstance(level, list)]
    else:
        return []
    return [(p, q) for p, q, *_ in pairs if isinstance(p, str) and isinstance(q, str)]


async def run_replay(
    recording: Recording,
    tape: Tape,
    trades: TradeHistory,
    stats: SimulatorStats,
    clock: Clock,
    speed: float,
    started: asyncio.Event,
    wait_for_readers: Callable[[int], Awaitable[None]],
) -> None:
    """Play ``recording`` onto ``tape`` once, then finish the tape.

    Starts when ``started`` is set (the first subscription). With ``speed`` > 0 each
    event is appended when ``(receive time - first receive time) / speed`` seconds have
    passed on ``clock``; with 0, events go out in chunks, each after
    ``wait_for_readers(position)`` says every subscribed connection has read to there.
    """
    await started.wait()
    total = len(recording)
    _log.info("replay started", source=recording.source, events=total, speed=speed)
    if total:
        origin_us = recording.received_us[0]
        origin = clock.monotonic()
        index = 0
        while index < total:
            if speed > 0:
                elapsed_us = (clock.monotonic() - origin) * speed * 1_000_000
                due = (recording.received_us[index] - origin_us) - elapsed_us
                if due > 0:
                    await clock.sleep(due / speed / 1_000_000)
                    continue
                end = index + 1
                limit_us = origin_us + elapsed_us
                while end < total and recording.received_us[end] <= limit_us:
                    end += 1
            else:
                await wait_for_readers(tape.head)
                end = min(total, index + _REPLAY_CHUNK)
            _append(recording, index, end, tape, trades)
            stats.events_on_tape += end - index
            index = end
    tape.finish()
    _log.info("replay finished", events=total)


def _append(recording: Recording, start: int, end: int, tape: Tape, trades: TradeHistory) -> None:
    # Trades enter the REST history as they are replayed, before the frames go out, so
    # a client that sees a gap can always fetch the missing trade.
    for index in range(start, end):
        trade = recording.trades.get(index)
        if trade is not None:
            trades.add(
                trade.symbol,
                trade.trade_id,
                trade.price_units,
                trade.qty_units,
                trade.time_us,
                trade.buyer_maker,
            )
    tape.append(recording.streams[start:end], recording.payloads[start:end])
