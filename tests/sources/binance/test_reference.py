"""exchangeInfo → reference records: exact decimals, filter fallbacks, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from k2.errors import TerminalError
from k2.records import REFERENCE, rows
from k2.sources.binance.reference import parse_exchange_info, symbol_quote_assets

FETCHED_US = 1_732_233_600_123_456  # 2024-11-22T00:00:00.123456Z


def _symbol(symbol: str, base: str, quote: str, status: str, filters: list[Any]) -> Any:
    return {
        "symbol": symbol,
        "status": status,
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": filters,
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _limit(kind: str, interval: str, num: int, limit: int) -> Any:
    return {"rateLimitType": kind, "interval": interval, "intervalNum": num, "limit": limit}


# Shaped like GET /api/v3/exchangeInfo (fields and filter layout as Binance sends them).
EXCHANGE_INFO = json.dumps(
    {
        "timezone": "UTC",
        "serverTime": 1732233600123,
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 6000,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {
                "rateLimitType": "RAW_REQUESTS",
                "interval": "MINUTE",
                "intervalNum": 5,
                "limit": 61000,
            },
        ],
        "exchangeFilters": [],
        "symbols": [
            _symbol(
                "BTCUSDT",
                "BTC",
                "USDT",
                "TRADING",
                [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.01000000",
                        "maxPrice": "1000000.00000000",
                        "tickSize": "0.01000000",
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": "0.00001000",
                        "maxQty": "9000.00000000",
                        "stepSize": "0.00001000",
                    },
                    {"filterType": "ICEBERG_PARTS", "limit": 10},
                    {
                        "filterType": "MARKET_LOT_SIZE",
                        "minQty": "0.00000000",
                        "maxQty": "123.45678900",
                        "stepSize": "0.00000000",
                    },
                    {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10},
                    {
                        "filterType": "PERCENT_PRICE_BY_SIDE",
                        "bidMultiplierUp": "5",
                        "bidMultiplierDown": "0.2",
                        "askMultiplierUp": "5",
                        "askMultiplierDown": "0.2",
                        "avgPriceMins": 5,
                    },
                    {
                        "filterType": "NOTIONAL",
                        "minNotional": "5.00000000",
                        "applyMinToMarket": True,
                        "maxNotional": "9000000.00000000",
                        "applyMaxToMarket": False,
                        "avgPriceMins": 5,
                    },
                    {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
                ],
            ),
            _symbol(
                "DOGEUSDT",
                "DOGE",
                "USDT",
                "TRADING",
                [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.00001000",
                        "maxPrice": "30.00000000",
                        "tickSize": "0.00001000",
                    },
                    {
                        "filterType": "LOT_SIZE",
                        "minQty": "1.00000000",
                        "maxQty": "9000000.00000000",
                        "stepSize": "1.00000000",
                    },
                    # The filter's name before Binance introduced NOTIONAL.
                    {
                        "filterType": "MIN_NOTIONAL",
                        "minNotional": "10.00000000",
                        "applyToMarket": True,
                        "avgPriceMins": 5,
                    },
                ],
            ),
            _symbol("ETHBTC", "ETH", "BTC", "BREAK", []),
        ],
    }
).encode()


def test_rows_carry_exact_filter_values() -> None:
    batch = parse_exchange_info(EXCHANGE_INFO, FETCHED_US)
    assert batch.schema.equals(REFERENCE.arrow_schema())
    got = list(rows(batch))
    assert [r["symbol"] for r in got] == ["BTCUSDT", "DOGEUSDT", "ETHBTC"]
    btc, doge, eth = got
    assert btc == {
        "symbol": "BTCUSDT",
        "exchange": "binance",
        "base_asset": "BTC",
        "quote_asset": "USDT",
        "status": "TRADING",
        "tick_size": Decimal("0.01000000"),
        "step_size": Decimal("0.00001000"),
        "min_notional": Decimal("5.00000000"),
        "valid_from": datetime(2024, 11, 22, 0, 0, 0, 123456, tzinfo=UTC),
    }
    assert doge["min_notional"] == Decimal("10")  # legacy MIN_NOTIONAL
    assert doge["tick_size"] == Decimal("0.00001")
    assert doge["step_size"] == Decimal("1")
    # No filters: Binance's "0" (no constraint), not a made-up value.
    assert (eth["status"], eth["tick_size"], eth["step_size"], eth["min_notional"]) == (
        "BREAK",
        Decimal(0),
        Decimal(0),
        Decimal(0),
    )


def test_exchange_name_is_a_parameter() -> None:
    batch = parse_exchange_info(EXCHANGE_INFO, FETCHED_US, exchange="binance-testnet")
    assert set(batch.column("exchange").to_pylist()) == {"binance-testnet"}


def test_symbol_quote_assets() -> None:
    batch = parse_exchange_info(EXCHANGE_INFO, FETCHED_US)
    assert symbol_quote_assets(batch) == {"BTCUSDT": "USDT", "DOGEUSDT": "USDT", "ETHBTC": "BTC"}


def test_no_symbols_gives_an_empty_batch() -> None:
    batch = parse_exchange_info(b'{"timezone":"UTC","symbols":[]}', FETCHED_US)
    assert batch.num_rows == 0
    assert batch.schema.equals(REFERENCE.arrow_schema())


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"symbols": [{"symbol": "BTCUSDT"}]}',
        b'{"code":-1121,"msg":"Invalid symbol."}',
    ],
)
def test_malformed_payloads_are_terminal(raw: bytes) -> None:
    with pytest.raises(TerminalError, match="malformed exchangeInfo"):
        parse_exchange_info(raw, FETCHED_US)


def test_sizes_finer_than_eight_places_are_refused_not_rounded() -> None:
    info = json.loads(EXCHANGE_INFO)
    info["symbols"][0]["filters"][0]["tickSize"] = "0.000000001"
    with pytest.raises(TerminalError, match="tickSize"):
        parse_exchange_info(json.dumps(info).encode(), FETCHED_US)
