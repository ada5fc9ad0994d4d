"""Pure parsers: Binance frames in, canonical Arrow batches and rejects out.

No I/O, no callbacks, no clocks: the receive time of each frame is passed in. Frames
are decoded with one msgspec decoder into small structs and turned into Arrow columns
in bulk; anything that does not fit becomes a :class:`~k2.quality.rejects.Reject` with
the reason and the raw bytes, so a bad frame never stops the feed and is never lost.

Binance timestamps are milliseconds by default and microseconds with
``timeUnit=MICROSECOND``; both are accepted and normalised to UTC microseconds (a value
below 10**14 is taken as milliseconds: that is the year 5138 in ms, 1973 in µs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, DecimalException
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import ExchangeError
from k2.quality.rejects import Reject, RejectReason
from k2.records import DECIMAL_PRECISION, DECIMAL_SCALE, QUOTE, TRADE
from k2.sources.base import ParsedBatch
from k2.sources.binance.wire import (
    COMBINED_DECODER,
    PAYLOAD_DECODER,
    REST_TRADES_DECODER,
    CombinedFrame,
    RestTrade,
    StreamPayload,
)

EXCHANGE = "binance"
ASSET_CLASS = "crypto"

_DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_TS = pa.timestamp("us", tz="UTC")
_MS_LIMIT = 10**14
_DECIMAL_LIMIT = Decimal(10) ** (DECIMAL_PRECISION - DECIMAL_SCALE)
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
#: What a wire decimal may look like: ASCII digits, point, sign, exponent; no spaces.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: Longest string handed to Arrow's decimal cast as is (Binance sends ~15 characters).
_MAX_FAST_DECIMAL = 32

# Longest first, so FDUSD wins over USD-anything and USDT over a bare "T" suffix.
_QUOTE_SUFFIXES = tuple(
    sorted(
        (
            "USDT", "FDUSD", "USDC", "TUSD", "BUSD", "DAI", "EUR", "TRY", "BRL", "GBP",
            "JPY", "ARS", "MXN", "PLN", "RON", "ZAR", "UAH", "IDR", "BTC", "ETH", "BNB",
            "XRP", "TRX", "DOGE", "SOL", "AEUR", "USDP",
        ),
        key=len,
        reverse=True,
    )
)  # fmt: skip

_TRADE_REQUIRED = ("e", "E", "s", "t", "p", "q", "T", "m")
_QUOTE_REQUIRED = ("u", "s", "b", "B", "a", "A")


#: What msgspec raises for bytes it cannot read: bad JSON or a shape mismatch
#: (DecodeError, and its subclass ValidationError), invalid UTF-8 inside a string
#: (UnicodeDecodeError) and nesting deeper than its stack allows (RecursionError).
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

_STREAM_CACHE_LIMIT = 100_000
#: Binance stream kind → the K2 data type its records are.
_DATA_TYPES = {"trade": "trade", "bookTicker": "quote"}


def _stream_kind(stream: str) -> str:
    """``btcusdt@trade`` → ``trade``; ``btcusdt@depth@100ms`` → ``depth@100ms``."""
    return stream[stream.find("@") + 1 :]


def _payloads(
    decoded: list[tuple[int, str, StreamPayload]],
    payloads: list[StreamPayload] | None,
    rows: list[int],
) -> list[StreamPayload]:
    if payloads is None:  # fast path: decoded[i] is frame i
        return [decoded[i][2] for i in rows]
    by_row = {i: d for i, _, d in decoded}
    return [by_row[i] for i in rows]


def _trade_problem(d: StreamPayload) -> tuple[RejectReason, str] | None:
    """Why a payload on an ``@trade`` stream is not a spot trade, or ``None``."""
    if d.X is not None:
        return RejectReason.FUTURES_FRAME, "futures trade (has X) on a spot stream"
    missing = [name for name in _TRADE_REQUIRED if getattr(d, name) is None]
    if missing:
        return RejectReason.MISSING_FIELD, "missing field(s): " + ", ".join(missing)
    return None


def _quote_problem(d: StreamPayload) -> tuple[RejectReason, str] | None:
    """Why a payload on a ``@bookTicker`` stream is not a spot best bid/ask, or ``None``."""
    if d.e is not None or d.T is not None or d.E is not None:
        return RejectReason.FUTURES_FRAME, "futures bookTicker (has e/E/T) on a spot stream"
    missing = [name for name in _QUOTE_REQUIRED if getattr(d, name) is None]
    if missing:
        return RejectReason.MISSING_FIELD, "missing field(s): " + ", ".join(missing)
    wrong = [name for name in ("b", "a") if not isinstance(getattr(d, name), str)]
    if wrong:
        return RejectReason.BAD_FIELD, "field(s) must be decimal strings: " + ", ".join(wrong)
    return None


class _TradeColumns:
    """The columns of a batch of trade payloads, built once, with a validity scan."""

    __slots__ = ("E", "T", "clean", "m", "p", "q", "s", "t")

    def __init__(self, data: list[StreamPayload]) -> None:
        self.t: list[Any] = [d.t for d in data]
        self.p: list[Any] = [d.p for d in data]
        self.q: list[Any] = [d.q for d in data]
        self.T: list[Any] = [d.T for d in data]
        self.E: list[Any] = [d.E for d in data]
        self.s: list[Any] = [d.s for d in data]
        self.m: list[Any] = [d.m for d in data]
        n = len(data)
        # `None in list` and `.count(None)` run in C; spot trades never carry X.
        self.clean = (
            [d.X for d in data].count(None) == n
            and [d.e for d in data].count(None) == 0
            and not any(None in col for col in (self.t, self.p, self.q, self.T, self.E))
            and None not in self.s
            and None not in self.m
        )

    def vendor_data(self, data: list[StreamPayload]) -> list[str | None]:
        """Fields with no canonical home: M, and before June 2024 the order ids b/a."""
        n = len(data)
        if [d.b for d in data].count(None) == n and [d.a for d in data].count(None) == n:
            return [_BEST_MATCH_ONLY[d.M] for d in data]
        return [_trade_vendor(d) for d in data]


class _QuoteColumns:
    """The columns of a batch of bookTicker payloads, built once, with a validity scan."""

    __slots__ = ("A", "B", "a", "b", "clean", "s", "u")

    def __init__(self, data: list[StreamPayload]) -> None:
        self.u: list[Any] = [d.u for d in data]
        self.s: list[Any] = [d.s for d in data]
        self.b: list[Any] = [d.b for d in data]
        self.B: list[Any] = [d.B for d in data]
        self.a: list[Any] = [d.a for d in data]
        self.A: list[Any] = [d.A for d in data]
        n = len(data)
        self.clean = (
            [d.e for d in data].count(None) == n
            and [d.E for d in data].count(None) == n
            and not any(None in col for col in (self.u, self.s, self.B, self.A))
            and {type(x) for x in self.b} <= {str}
            and {type(x) for x in self.a} <= {str}
        )


_BEST_MATCH_ONLY = {True: '{"M":true}', False: '{"M":false}', None: '{"M":null}'}


def quote_asset_of(symbol: str, known: Mapping[str, str] | None = None) -> str:
    """The quote asset of ``symbol``: from ``known`` (exchangeInfo) or by its suffix.

    Returns ``""`` when neither knows it; validation rejects unknown symbols anyway.
    """
    if known and symbol in known:
        return known[symbol]
    for suffix in _QUOTE_SUFFIXES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            return suffix
    return ""


class FrameParser:
    """Turns batches of Binance spot stream frames into canonical records.

    ``quote_assets`` maps symbol → quote asset (from exchangeInfo); symbols missing from
    it fall back to a suffix rule. The parser is stateless between calls.
    """

    def __init__(
        self,
        *,
        quote_assets: Mapping[str, str] | None = None,
        source: str = "binance.ws",
    ) -> None:
        self._quote_assets = dict(quote_assets or {})
        self._source = source
        self._stream_kinds: dict[str, str] = {}

    def set_quote_assets(self, quote_assets: Mapping[str, str]) -> None:
        """Replace the symbol → quote asset map (after a reference-data refresh)."""
        self._quote_assets = dict(quote_assets)

    def parse(self, frames: Sequence[bytes], received_us: Sequence[int]) -> ParsedBatch:
        """Parse ``frames`` (combined-stream or raw payloads) received at ``received_us``.

        Output rows keep input order within each record type. Never raises for bad
        input: every frame ends up as a record, a reject, or a counted control message.
        """
        if len(frames) != len(received_us):
            raise ValueError("frames and received_us must have the same length")
        rejects: list[Reject] = []
        try:
            decoded: list[tuple[int, str, StreamPayload]] = [
                (i, c.stream, c.data) for i, c in enumerate(map(COMBINED_DECODER.decode, frames))
            ]
            shutdowns = controls = 0
        except _DECODE_ERRORS:
            decoded, shutdowns, controls = self._decode_slowly(frames, received_us, rejects)

        trade_rows: list[int] = []
        quote_rows: list[int] = []
        kinds = self._stream_kinds
        for i, stream, d in decoded:
            kind = kinds.get(stream)
            if kind is None:
                kind = _stream_kind(stream)
                if len(kinds) < _STREAM_CACHE_LIMIT:
                    kinds[stream] = kind
            if kind == "trade":
                trade_rows.append(i)
            elif kind == "bookTicker":
                quote_rows.append(i)
            elif d.e == "serverShutdown":
                shutdowns += 1
            else:
                self._reject_other_stream(rejects, stream, d, frames[i], received_us[i])
        payloads = [d for _, _, d in decoded] if len(decoded) != len(frames) else None
        trade_data = _payloads(decoded, payloads, trade_rows)
        quote_data = _payloads(decoded, payloads, quote_rows)
        trades, trade_raw, n = self._trades(trade_rows, trade_data, frames, received_us, rejects)
        shutdowns += n
        quotes, quote_raw, n = self._quotes(quote_rows, quote_data, frames, received_us, rejects)
        shutdowns += n
        return ParsedBatch(trades, trade_raw, quotes, quote_raw, rejects, shutdowns, controls)

    def _screen(
        self,
        data_type: str,
        rows: list[int],
        data: list[StreamPayload],
        frames: Sequence[bytes],
        received_us: Sequence[int],
        rejects: list[Reject],
    ) -> tuple[list[int], list[StreamPayload], int]:
        """Keep the rows of ``data`` that are sound ``data_type`` payloads; reject the
        rest with their reason; count shutdown notices that arrived on a data stream."""
        problem = _trade_problem if data_type == "trade" else _quote_problem
        keep_rows: list[int] = []
        keep: list[StreamPayload] = []
        shutdowns = 0
        for i, d in zip(rows, data, strict=True):
            if d.e == "serverShutdown":
                shutdowns += 1
            elif found := problem(d):
                reason, detail = found
                self._reject(rejects, reason, detail, frames[i], received_us[i], data_type)
            else:
                keep_rows.append(i)
                keep.append(d)
        return keep_rows, keep, shutdowns

    # -- slow path: one frame at a time, only when the batch had a bad frame -------------

    def _decode_slowly(
        self, frames: Sequence[bytes], received_us: Sequence[int], rejects: list[Reject]
    ) -> tuple[list[tuple[int, str, StreamPayload]], int, int]:
        decoded: list[tuple[int, str, StreamPayload]] = []
        shutdowns = controls = 0
        for i, frame in enumerate(frames):
            try:
                c: CombinedFrame = COMBINED_DECODER.decode(frame)
                decoded.append((i, c.stream, c.data))
                continue
            except msgspec.ValidationError as exc:  # subclass of DecodeError: test it first
                shape_error = str(exc)
            except _DECODE_ERRORS as exc:
                self._reject(rejects, RejectReason.MALFORMED_JSON, _unreadable(exc), frame,
                             received_us[i])  # fmt: skip
                continue
            try:
                obj: Any = msgspec.json.decode(frame)
            except _DECODE_ERRORS:  # e.g. a number no JSON reader can hold (1e400)
                self._reject(rejects, RejectReason.BAD_FIELD, shape_error, frame, received_us[i])
                continue
            if not isinstance(obj, dict):
                self._reject(rejects, RejectReason.BAD_FIELD,
                             f"expected a JSON object, got {type(obj).__name__}",
                             frame, received_us[i])  # fmt: skip
                continue
            data = obj.get("data", obj) if "stream" in obj else obj
            if isinstance(data, dict) and data.get("e") == "serverShutdown":
                shutdowns += 1
            elif "id" in obj and ("result" in obj or "error" in obj):
                controls += 1
            elif "stream" in obj and not isinstance(data, dict):
                stream = str(obj["stream"])
                self._reject(rejects, RejectReason.BAD_FIELD,
                             f"{shape_error} (stream {stream!r})", frame, received_us[i],
                             _DATA_TYPES.get(_stream_kind(stream)))  # fmt: skip
            elif "stream" in obj:
                stream = str(obj["stream"])
                kind = stream[stream.find("@") + 1 :]
                if _looks_futures(kind, data):
                    self._reject(rejects, RejectReason.FUTURES_FRAME,
                                 f"futures frame on a spot stream ({stream})",
                                 frame, received_us[i])  # fmt: skip
                elif kind not in ("trade", "bookTicker"):
                    self._reject(rejects, RejectReason.UNSUPPORTED_STREAM,
                                 f"stream {stream!r} is not captured", frame,
                                 received_us[i])  # fmt: skip
                else:
                    self._reject(rejects, RejectReason.BAD_FIELD, shape_error, frame,
                                 received_us[i], _DATA_TYPES.get(kind))  # fmt: skip
            else:
                # A raw (/ws) payload without the combined envelope.
                raw_kind = _raw_kind(obj)
                if raw_kind is None or raw_kind not in ("trade", "bookTicker"):
                    reason = (
                        RejectReason.FUTURES_FRAME
                        if raw_kind and _looks_futures(raw_kind, obj)
                        else RejectReason.UNSUPPORTED_STREAM
                    )
                    self._reject(rejects, reason, f"unrecognised event {obj.get('e')!r}",
                                 frame, received_us[i])  # fmt: skip
                    continue
                try:
                    payload = PAYLOAD_DECODER.decode(frame)
                except msgspec.ValidationError as exc:
                    self._reject(rejects, RejectReason.BAD_FIELD, str(exc), frame,
                                 received_us[i], _DATA_TYPES.get(raw_kind))  # fmt: skip
                    continue
                symbol = str(obj.get("s", "")).lower()
                decoded.append((i, f"{symbol}@{raw_kind}", payload))
        return decoded, shutdowns, controls

    # -- columns ----------------------------------------------------------------------

    def _trades(
        self,
        rows: list[int],
        data: list[StreamPayload],
        frames: Sequence[bytes],
        received_us: Sequence[int],
        rejects: list[Reject],
    ) -> tuple[pa.RecordBatch, list[bytes], int]:
        shutdowns = 0
        cols = _TradeColumns(data)
        if not cols.clean:
            # Rare frames (futures, missing fields, a shutdown notice on a data stream)
            # are screened row by row only when the column scan found one.
            rows, data, shutdowns = self._screen("trade", rows, data, frames, received_us, rejects)
            cols = _TradeColumns(data)
        raw = [frames[i] for i in rows]
        if not rows:
            return TRADE.empty_batch(), raw, shutdowns
        batch, raw = build_trades(
            symbols=cols.s,
            trade_ids=cols.t,
            prices=cols.p,
            quantities=cols.q,
            trade_times=cols.T,
            event_times=cols.E,
            buyer_maker=cols.m,
            received_us=[received_us[i] for i in rows],
            vendor_data=cols.vendor_data(data),
            raw=raw,
            quote_assets=self._quote_assets,
            source=self._source,
            rejects=rejects,
        )
        return batch, raw, shutdowns

    def _quotes(
        self,
        rows: list[int],
        data: list[StreamPayload],
        frames: Sequence[bytes],
        received_us: Sequence[int],
        rejects: list[Reject],
    ) -> tuple[pa.RecordBatch, list[bytes], int]:
        shutdowns = 0
        cols = _QuoteColumns(data)
        if not cols.clean:
            rows, data, shutdowns = self._screen("quote", rows, data, frames, received_us, rejects)
            cols = _QuoteColumns(data)
        raw = [frames[i] for i in rows]
        if not rows:
            return QUOTE.empty_batch(), raw, shutdowns
        n = len(rows)
        recv = pa.array([received_us[i] for i in rows], pa.int64()).cast(_TS)
        symbols = pa.array(cols.s, pa.string())
        update_ids = pa.array(cols.u, pa.int64())
        decimals, bad = _decimal_columns(
            {
                "bid_price": cols.b,
                "bid_quantity": cols.B,
                "ask_price": cols.a,
                "ask_quantity": cols.A,
            }
        )
        batch = pa.RecordBatch.from_arrays(
            [
                _message_ids(symbols, update_ids),
                pa.repeat(EXCHANGE, n),
                symbols,
                pa.repeat(ASSET_CLASS, n),
                recv,
                update_ids,
                decimals["bid_price"],
                decimals["bid_quantity"],
                decimals["ask_price"],
                decimals["ask_quantity"],
                recv,
                pa.nulls(n, pa.string()),
            ],
            schema=QUOTE.arrow_schema(),
        )
        batch, raw = _drop_rows(
            batch, raw, bad, [received_us[i] for i in rows], rejects, self._source, "quote"
        )
        return batch, raw, shutdowns

    def _reject(
        self,
        rejects: list[Reject],
        reason: RejectReason,
        detail: str,
        frame: bytes,
        received_us: int,
        data_type: str | None = None,
    ) -> None:
        rejects.append(Reject(reason, detail, bytes(frame), received_us, self._source, data_type))

    def _reject_other_stream(
        self, rejects: list[Reject], stream: str, d: StreamPayload, frame: bytes, recv: int
    ) -> None:
        kind = stream[stream.find("@") + 1 :]
        as_dict = {"e": d.e, "M": d.M, "X": d.X, "T": d.T}
        if _looks_futures(kind, as_dict):
            self._reject(rejects, RejectReason.FUTURES_FRAME,
                         f"futures frame on a spot stream ({stream})", frame, recv)  # fmt: skip
        else:
            self._reject(rejects, RejectReason.UNSUPPORTED_STREAM,
                         f"stream {stream!r} is not captured", frame, recv)  # fmt: skip


def build_trades(
    *,
    symbols: list[str],
    trade_ids: list[int],
    prices: list[str],
    quantities: list[str],
    trade_times: list[int],
    event_times: list[int],
    buyer_maker: list[bool],
    received_us: list[int],
    vendor_data: list[str | None],
    raw: list[bytes],
    quote_assets: Mapping[str, str],
    source: str,
    rejects: list[Reject],
) -> tuple[pa.RecordBatch, list[bytes]]:
    """Canonical trade rows from column lists (shared by the stream and REST parsers).

    Times may be ms or µs (see module doc). Rows whose decimals do not parse or do not
    fit ``decimal(18, 8)`` become ``INVALID_DECIMAL`` rejects; the rest are returned
    with their raw payloads, in input order.
    """
    n = len(trade_ids)
    sym = pa.array(symbols, pa.string())
    ids = pa.array(trade_ids, pa.int64())
    decimals, bad = _decimal_columns({"price": prices, "quantity": quantities})
    price, qty = decimals["price"], decimals["quantity"]
    notional, bad_notional = _quote_quantity(price, qty)
    for row in bad_notional:
        bad.setdefault(row, "price × quantity does not fit decimal(18, 8)")
    is_maker = pa.array(buyer_maker, pa.bool_())
    batch = pa.RecordBatch.from_arrays(
        [
            _message_ids(sym, ids),
            ids,
            pa.repeat(EXCHANGE, n),
            sym,
            pa.repeat(ASSET_CLASS, n),
            _to_timestamp(pa.array(trade_times, pa.int64())),
            _to_timestamp(pa.array(event_times, pa.int64())),
            price,
            qty,
            notional,
            _currencies(sym, quote_assets),
            pc.if_else(is_maker, "SELL", "BUY"),
            is_maker,
            ids,
            pa.array(received_us, pa.int64()).cast(_TS),
            pa.array(vendor_data, pa.string()),
        ],
        schema=TRADE.arrow_schema(),
    )
    return _drop_rows(batch, raw, bad, received_us, rejects, source, "trade")


def parse_rest_trades(
    raw: bytes, symbol: str, received_us: int, *, quote_assets: Mapping[str, str] | None = None
) -> tuple[pa.RecordBatch, list[Reject]]:
    """Parse a ``historicalTrades``/``trades`` reply for ``symbol`` into trade rows.

    ``event_time`` is the trade time (REST has no event time) and ``ingestion_timestamp``
    is ``received_us``. Raises :class:`ExchangeError` if the reply is not a trade list.
    """
    try:
        items: list[RestTrade] = REST_TRADES_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ExchangeError(f"unexpected trades reply for {symbol}: {exc}") from None
    rejects: list[Reject] = []
    source = "binance.rest"
    if not items:
        return TRADE.empty_batch(), rejects
    batch, _ = build_trades(
        symbols=[symbol] * len(items),
        trade_ids=[t.id for t in items],
        prices=[t.price for t in items],
        quantities=[t.qty for t in items],
        trade_times=[t.time for t in items],
        event_times=[t.time for t in items],
        buyer_maker=[t.isBuyerMaker for t in items],
        received_us=[received_us] * len(items),
        vendor_data=[
            None if t.isBestMatch is None else ('{"M":true}' if t.isBestMatch else '{"M":false}')
            for t in items
        ],
        raw=[msgspec.json.encode(t) for t in items],
        quote_assets=quote_assets or {},
        source=source,
        rejects=rejects,
    )
    return batch, rejects


# -- helpers ---------------------------------------------------------------------------


def _trade_vendor(d: StreamPayload) -> str | None:
    # Fields with no canonical home: M (best match) and, before June 2024, the buyer
    # and seller order ids b/a. Kept verbatim so nothing the exchange said is lost.
    best = "null" if d.M is None else ("true" if d.M else "false")
    if d.b is None and d.a is None:
        return '{"M":' + best + "}"
    return f'{{"M":{best},"b":{_json_scalar(d.b)},"a":{_json_scalar(d.a)}}}'


def _json_scalar(v: int | str | None) -> str:
    if v is None:
        return "null"
    return str(v) if type(v) is int else msgspec.json.encode(v).decode()


def _unreadable(exc: Exception) -> str:
    """A reject detail for bytes msgspec could not read (see ``_DECODE_ERRORS``)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8: {exc.reason} at byte {exc.start}"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read"
    return str(exc)


def _looks_futures(kind: str, data: Mapping[str, Any]) -> bool:
    if kind == "bookTicker":
        return ("e" in data and data["e"] is not None) or data.get("T") is not None
    if kind.startswith("depth"):
        return "pu" in data
    if kind == "aggTrade":
        return data.get("M") is None
    return data.get("X") is not None


def _raw_kind(obj: Mapping[str, Any]) -> str | None:
    e = obj.get("e")
    if e == "trade":
        return "trade"
    if e == "bookTicker" or (e is None and {"u", "b", "a", "B", "A"} <= obj.keys()):
        return "bookTicker"
    if e == "aggTrade":
        return "aggTrade"
    if e == "depthUpdate":
        return "depth"
    return None


def _message_ids(symbols: pa.Array, native_ids: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(EXCHANGE, symbols, pc.cast(native_ids, pa.string()), ":")


def _to_timestamp(values: pa.Array) -> pa.Array:
    as_us = pc.if_else(pc.less(values, _MS_LIMIT), pc.multiply(values, 1000), values)
    return as_us.cast(_TS)


def _currencies(symbols: pa.Array, quote_assets: Mapping[str, str]) -> pa.Array:
    encoded = symbols.dictionary_encode()
    names = [quote_asset_of(s, quote_assets) for s in encoded.dictionary.to_pylist()]
    return pc.take(pa.array(names, pa.string()), encoded.indices)


def _decimal_columns(
    columns: Mapping[str, list[str]],
) -> tuple[dict[str, pa.Array], dict[int, str]]:
    """Cast string columns to ``decimal(18, 8)``; bad rows become zero and are reported."""
    out: dict[str, pa.Array] = {}
    bad: dict[int, str] = {}
    for name, values in columns.items():
        try:
            strings = pa.array(values, pa.string())
            if _safe_to_cast(strings):
                out[name] = strings.cast(_DECIMAL)
                continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        fixed = list(values)
        for row, text in enumerate(values):
            problem = _decimal_problem(text)
            if problem:
                bad.setdefault(row, f"{name} {text!r}: {problem}")
                fixed[row] = "0"
            else:
                fixed[row] = f"{Decimal(text).quantize(_QUANTUM):f}"
        out[name] = pa.array(fixed, pa.string()).cast(_DECIMAL)
    return out, bad


def _safe_to_cast(strings: pa.Array) -> bool:
    """Whether Arrow's string → decimal cast can be trusted with every value.

    It cannot with exponents (``0E-10000000`` crashes pyarrow 26) or with more digits
    than decimal128 holds (``0.<100 zeros>1`` silently becomes 0); wire decimals are
    short and plain, so anything else takes the exact, per-value path.
    """
    data = strings.buffers()[2]  # every value's bytes, back to back (a fresh array)
    if data is None:
        return True
    text = data.to_pybytes()
    if b"e" in text or b"E" in text:
        return False
    longest = pc.max(pc.binary_length(strings)).as_py()
    return longest is None or longest <= _MAX_FAST_DECIMAL


def _decimal_problem(text: object) -> str | None:
    """Why ``text`` is not a decimal number that fits ``decimal(18, 8)``, or ``None``."""
    if not isinstance(text, str):
        return "not a decimal string"
    if not _DECIMAL_TEXT.fullmatch(text):
        return "not a decimal number"
    try:
        value = Decimal(text)
    except DecimalException:  # an exponent beyond what Decimal can hold
        return f"does not fit decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
    if value.adjusted() >= DECIMAL_PRECISION - DECIMAL_SCALE:
        return f"does not fit decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
    if value != value.quantize(_QUANTUM):
        return f"more than {DECIMAL_SCALE} decimal places"
    return None


def _quote_quantity(price: pa.Array, qty: pa.Array) -> tuple[pa.Array, list[int]]:
    """price × quantity rounded half-even to 8 places; rows that overflow are reported."""
    product = pc.round(pc.multiply(price, qty), ndigits=DECIMAL_SCALE, round_mode="half_to_even")
    try:
        return product.cast(_DECIMAL), []
    except pa.ArrowInvalid:
        limit = pa.scalar(_DECIMAL_LIMIT, product.type)
        too_big = pc.greater_equal(pc.abs(product), limit)
        rows = [i for i, big in enumerate(too_big.to_pylist()) if big]
        fixed = pc.if_else(too_big, pa.scalar(Decimal(0), product.type), product)
        return fixed.cast(_DECIMAL), rows


def _drop_rows(
    batch: pa.RecordBatch,
    raw: list[bytes],
    bad: dict[int, str],
    received: Sequence[int],
    rejects: list[Reject],
    source: str,
    data_type: str,
) -> tuple[pa.RecordBatch, list[bytes]]:
    if not bad:
        return batch, raw
    for row in sorted(bad):
        rejects.append(
            Reject(
                RejectReason.INVALID_DECIMAL,
                bad[row],
                bytes(raw[row]),
                received[row],
                source,
                data_type,
            )
        )
    keep = [i for i in range(batch.num_rows) if i not in bad]
    return batch.take(pa.array(keep, pa.int64())), [raw[i] for i in keep]
