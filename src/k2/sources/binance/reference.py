"""Binance ``exchangeInfo`` → K2 reference records (pure: bytes in, Arrow out).

Per symbol: tick size from ``PRICE_FILTER.tickSize``, step size from
``LOT_SIZE.stepSize``, min notional from ``NOTIONAL.minNotional`` (or the legacy
``MIN_NOTIONAL.minNotional``). A filter Binance does not send is recorded as ``0``,
Binance's own way of saying "no constraint". Decimal strings go straight to
``decimal128(18, 8)`` through Arrow's string cast, never through float.
"""

from __future__ import annotations

import msgspec
import pyarrow as pa

from k2.errors import TerminalError
from k2.records import DECIMAL_PRECISION, DECIMAL_SCALE, REFERENCE

_DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_NO_CONSTRAINT = "0"


class _Filter(msgspec.Struct, frozen=True, rename="camel"):
    filter_type: str
    tick_size: str | None = None
    step_size: str | None = None
    min_notional: str | None = None


class _Symbol(msgspec.Struct, frozen=True, rename="camel"):
    symbol: str
    status: str
    base_asset: str
    quote_asset: str
    filters: tuple[_Filter, ...] = ()


class _ExchangeInfo(msgspec.Struct, frozen=True):
    symbols: tuple[_Symbol, ...]


_DECODER = msgspec.json.Decoder(_ExchangeInfo)


def parse_exchange_info(raw: bytes, fetched_us: int, exchange: str = "binance") -> pa.RecordBatch:
    """One REFERENCE row per symbol in ``raw`` (``/api/v3/exchangeInfo`` JSON), in order.

    ``fetched_us`` (UTC µs) becomes every row's ``valid_from``. Raises TerminalError
    if ``raw`` is not an exchangeInfo document or a size does not fit
    ``decimal(18, 8)`` exactly.
    """
    try:
        info = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise TerminalError(f"malformed exchangeInfo payload: {exc}") from exc
    ticks: list[str] = []
    steps: list[str] = []
    notionals: list[str] = []
    for sym in info.symbols:
        by_type = {f.filter_type: f for f in sym.filters}
        price, lot = by_type.get("PRICE_FILTER"), by_type.get("LOT_SIZE")
        notional = by_type.get("NOTIONAL") or by_type.get("MIN_NOTIONAL")
        ticks.append(_value(price.tick_size if price else None))
        steps.append(_value(lot.step_size if lot else None))
        notionals.append(_value(notional.min_notional if notional else None))
    n = len(info.symbols)
    schema = REFERENCE.arrow_schema()
    columns = {
        "symbol": pa.array([s.symbol for s in info.symbols], pa.string()),
        "exchange": pa.array([exchange] * n, pa.string()),
        "base_asset": pa.array([s.base_asset for s in info.symbols], pa.string()),
        "quote_asset": pa.array([s.quote_asset for s in info.symbols], pa.string()),
        "status": pa.array([s.status for s in info.symbols], pa.string()),
        "tick_size": _decimals(ticks, "tickSize"),
        "step_size": _decimals(steps, "stepSize"),
        "min_notional": _decimals(notionals, "minNotional"),
        "valid_from": pa.array([fetched_us] * n, pa.int64()).cast(schema.field("valid_from").type),
    }
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def symbol_quote_assets(batch: pa.RecordBatch) -> dict[str, str]:
    """``{symbol: quote_asset}`` from a REFERENCE batch (``{"BTCUSDT": "USDT"}``)."""
    symbols = batch.column("symbol").to_pylist()
    quotes = batch.column("quote_asset").to_pylist()
    return dict(zip(symbols, quotes, strict=True))


def _value(text: str | None) -> str:
    return _NO_CONSTRAINT if text is None else text


def _decimals(values: list[str], field: str) -> pa.Array:
    try:
        return pa.array(values, pa.string()).cast(_DECIMAL)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise TerminalError(
            f"exchangeInfo {field} does not fit decimal({DECIMAL_PRECISION},{DECIMAL_SCALE}): {exc}"
        ) from exc
