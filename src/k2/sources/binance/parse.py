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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from k2.errors import ExchangeError
from k2.quality.rejects import Reject, RejectReason
from k2.records import DECIMAL_PRECISION, DECIMAL_SCALE, QUOTE, TRADE
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


@dataclass(slots=True)
class ParsedBatch:
    """The canonical output of one batch of frames.

    ``trade_raw``/``quote_raw`` hold each row's original frame, aligned with the rows,
    so later rejects (validation) can still keep the raw payload.
    """

    trades: pa.RecordBatch
    trade_raw: list[bytes]
    quotes: pa.RecordBatch
    quote_raw: list[bytes]
    rejects: list[Reject] = field(default_factory=list)
    server_shutdowns: int = 0
    control_replies: int = 0


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
        except (msgspec.DecodeError, msgspec.ValidationError):
            decoded, shutdowns, controls = self._decode_slowly(frames, received_us, rejects)

        trade_rows: list[int] = []
        trade_data: list[StreamPayload] = []
        quote_rows: list[int] = []
        quote_data: list[StreamPayload] = []
        for i, stream, d in decoded:
            kind = stream[stream.find("@") + 1 :]
            if d.e == "serverShutdown":
                shutdowns += 1
            elif kind == "trade":
                if d.X is not None:
                    self._reject(rejects, RejectReason.FUTURES_FRAME,
                                 "futures trade (has X) on a spot stream", frames[i],
                                 received_us[i])  # fmt: skip
                elif (
                    d.t is None or d.p is None or d.q is None or d.T is None
                    or d.E is None or d.s is None or d.m is None or d.e is None
                ):  # fmt: skip
                    self._reject_missing(rejects, d, _TRADE_REQUIRED, frames[i], received_us[i])
                else:
                    trade_rows.append(i)
                    trade_data.append(d)
            elif kind == "bookTicker":
                if d.e is not None or d.T is not None or d.E is not None:
                    self._reject(rejects, RejectReason.FUTURES_FRAME,
                                 "futures bookTicker (has e/E/T) on a spot stream",
                                 frames[i], received_us[i])  # fmt: skip
                elif (
                    d.u is None or d.s is None or d.B is None or d.A is None
                    or not isinstance(d.b, str) or not isinstance(d.a, str)
                ):  # fmt: skip
                    self._reject_missing(rejects, d, _QUOTE_REQUIRED, frames[i], received_us[i])
                else:
                    quote_rows.append(i)
                    quote_data.append(d)
            else:
                self._reject_other_stream(rejects, stream, d, frames[i], received_us[i])

        trades, trade_raw = self._trades(trade_rows, trade_data, frames, received_us, rejects)
        quotes, quote_raw = self._quotes(quote_rows, quote_data, frames, received_us, rejects)
        return ParsedBatch(trades, trade_raw, quotes, quote_raw, rejects, shutdowns, controls)

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
            except msgspec.DecodeError as exc:
                self._reject(rejects, RejectReason.MALFORMED_JSON, str(exc), frame, received_us[i])
                continue
            obj: Any = msgspec.json.decode(frame)
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
            elif "stream" in obj and isinstance(data, dict):
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
                                 received_us[i])  # fmt: skip
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
                                 received_us[i])  # fmt: skip
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
    ) -> tuple[pa.RecordBatch, list[bytes]]:
        raw = [frames[i] for i in rows]
        if not rows:
            return TRADE.empty_batch(), raw
        vendor = [_trade_vendor(d) for d in data]
        return build_trades(
            symbols=[d.s for d in data],  # type: ignore[misc]
            trade_ids=[d.t for d in data],  # type: ignore[misc]
            prices=[d.p for d in data],  # type: ignore[misc]
            quantities=[d.q for d in data],  # type: ignore[misc]
            trade_times=[d.T for d in data],  # type: ignore[misc]
            event_times=[d.E for d in data],  # type: ignore[misc]
            buyer_maker=[d.m for d in data],  # type: ignore[misc]
            received_us=[received_us[i] for i in rows],
            vendor_data=vendor,
            raw=raw,
            quote_assets=self._quote_assets,
            source=self._source,
            rejects=rejects,
        )

    def _quotes(
        self,
        rows: list[int],
        data: list[StreamPayload],
        frames: Sequence[bytes],
        received_us: Sequence[int],
        rejects: list[Reject],
    ) -> tuple[pa.RecordBatch, list[bytes]]:
        raw = [frames[i] for i in rows]
        if not rows:
            return QUOTE.empty_batch(), raw
        n = len(rows)
        recv = pa.array([received_us[i] for i in rows], pa.int64()).cast(_TS)
        symbols = pa.array([d.s for d in data], pa.string())
        update_ids = pa.array([d.u for d in data], pa.int64())
        decimals, bad = _decimal_columns(
            {
                "bid_price": [d.b for d in data],  # type: ignore[misc]
                "bid_quantity": [d.B for d in data],  # type: ignore[misc]
                "ask_price": [d.a for d in data],  # type: ignore[misc]
                "ask_quantity": [d.A for d in data],  # type: ignore[misc]
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
        return self._drop_bad(batch, raw, bad, [received_us[i] for i in rows], rejects)

    def _drop_bad(
        self,
        batch: pa.RecordBatch,
        raw: list[bytes],
        bad: dict[int, str],
        received: list[int],
        rejects: list[Reject],
    ) -> tuple[pa.RecordBatch, list[bytes]]:
        return _drop_rows(batch, raw, bad, received, rejects, self._source)

    def _reject(
        self,
        rejects: list[Reject],
        reason: RejectReason,
        detail: str,
        frame: bytes,
        received_us: int,
    ) -> None:
        rejects.append(Reject(reason, detail, bytes(frame), received_us, self._source))

    def _reject_missing(
        self,
        rejects: list[Reject],
        d: StreamPayload,
        required: tuple[str, ...],
        frame: bytes,
        received_us: int,
    ) -> None:
        missing = [name for name in required if getattr(d, name) is None]
        if missing:
            detail = "missing field(s): " + ", ".join(missing)
            self._reject(rejects, RejectReason.MISSING_FIELD, detail, frame, received_us)
        else:
            wrong = [n for n in ("b", "a") if not isinstance(getattr(d, n), str)]
            detail = "field(s) must be decimal strings: " + ", ".join(wrong)
            self._reject(rejects, RejectReason.BAD_FIELD, detail, frame, received_us)

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
    return _drop_rows(batch, raw, bad, received_us, rejects, source)


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
    return "null" if v is None else msgspec.json.encode(v).decode()


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
            out[name] = pa.array(values, pa.string()).cast(_DECIMAL)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        fixed = list(values)
        for row, text in enumerate(values):
            problem = _decimal_problem(text)
            if problem:
                bad.setdefault(row, f"{name} {text!r}: {problem}")
                fixed[row] = "0"
        out[name] = pa.array(fixed, pa.string()).cast(_DECIMAL)
    return out, bad


def _decimal_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return "not a decimal string"
    try:
        value = Decimal(text)
    except InvalidOperation:
        return "not a decimal number"
    if not value.is_finite():
        return "not a finite number"
    exponent = value.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -DECIMAL_SCALE
        and value != value.quantize(Decimal(1).scaleb(-DECIMAL_SCALE))
    ):
        return f"more than {DECIMAL_SCALE} decimal places"
    if abs(value) >= _DECIMAL_LIMIT:
        return f"does not fit decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
    try:
        pa.array([text], pa.string()).cast(_DECIMAL)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return str(exc)
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
) -> tuple[pa.RecordBatch, list[bytes]]:
    if not bad:
        return batch, raw
    for row in sorted(bad):
        rejects.append(
            Reject(RejectReason.INVALID_DECIMAL, bad[row], bytes(raw[row]), received[row], source)
        )
    keep = [i for i in range(batch.num_rows) if i not in bad]
    return batch.take(pa.array(keep, pa.int64())), [raw[i] for i in keep]
