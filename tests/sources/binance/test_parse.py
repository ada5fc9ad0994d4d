"""The pure frame parser, on real captured Binance frames."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest

from k2.quality.rejects import RejectReason
from k2.records import QUOTE, TRADE
from k2.sources.binance.parse import FrameParser, parse_rest_trades, quote_asset_of
from tests.captures import (
    FUTURES_CAPTURE,
    HFT_FIRST_TRADE_ID,
    HFT_LAST_TRADE_ID,
    HFT_QUOTES,
    HFT_TRADES,
)

Frames = tuple[list[bytes], list[int]]


def test_capture_parses_into_every_trade_and_quote(hft: Frames) -> None:
    frames, received = hft
    out = FrameParser().parse(frames, received)
    assert out.trades.schema == TRADE.arrow_schema()
    assert out.quotes.schema == QUOTE.arrow_schema()
    ids = out.trades.column("trade_id").to_pylist()
    assert len(ids) == HFT_TRADES
    assert ids == list(range(HFT_FIRST_TRADE_ID, HFT_LAST_TRADE_ID + 1))
    assert out.quotes.num_rows == HFT_QUOTES
    # Depth frames are on the capture's stream but are not captured: kept as rejects.
    assert Counter(r.reason for r in out.rejects) == {RejectReason.UNSUPPORTED_STREAM: 3929}
    assert len(out.trade_raw) == HFT_TRADES and len(out.quote_raw) == HFT_QUOTES


def test_prices_and_quantities_equal_the_source_strings(hft: Frames) -> None:
    frames, received = hft
    out = FrameParser().parse(frames, received)
    for row, raw in zip(out.trades.to_pylist(), out.trade_raw, strict=True):
        data = msgspec.json.decode(raw)["data"]
        assert row["price"] == Decimal(data["p"])
        assert row["quantity"] == Decimal(data["q"])
        assert str(row["price"]) == data["p"]  # same scale: the exact source string
    for row, raw in zip(out.quotes.to_pylist(), out.quote_raw, strict=True):
        data = msgspec.json.decode(raw)["data"]
        assert (str(row["bid_price"]), str(row["bid_quantity"])) == (data["b"], data["B"])
        assert (str(row["ask_price"]), str(row["ask_quantity"])) == (data["a"], data["A"])
        assert row["update_id"] == data["u"]


def test_first_trade_fields(hft: Frames) -> None:
    frames, received = hft
    first = FrameParser().parse(frames[:1], received[:1]).trades.to_pylist()[0]
    assert first == {
        "message_id": "binance:BTCUSDT:3071245454",
        "trade_id": 3071245454,
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "asset_class": "crypto",
        "timestamp": datetime(2023, 4, 4, 23, 59, 59, 999000, tzinfo=UTC),
        "event_time": datetime(2023, 4, 5, 0, 0, 0, tzinfo=UTC),
        "price": Decimal("28165.47000000"),
        "quantity": Decimal("0.00056000"),
        "quote_quantity": Decimal("15.77266320"),  # 28165.47 × 0.00056, exact
        "currency": "USDT",
        "side": "SELL",  # buyer was maker: the seller was the aggressor
        "is_buyer_maker": True,
        "source_sequence": 3071245454,
        "ingestion_timestamp": datetime(2023, 4, 5, 0, 0, 0, 4107, tzinfo=UTC),
        "vendor_data": '{"M":true,"b":20720542158,"a":20720542592}',
    }


def test_quote_uses_receive_time_as_spot_bookticker_has_no_event_time(hft: Frames) -> None:
    frames, received = hft
    quote = FrameParser().parse(frames[1:2], received[1:2]).quotes.to_pylist()[0]
    assert quote["message_id"] == "binance:BTCUSDT:36090299876"
    assert quote["timestamp"] == datetime(2023, 4, 5, 0, 0, 0, 4231, tzinfo=UTC)
    assert quote["timestamp"] == quote["ingestion_timestamp"]


def test_microsecond_time_unit_gives_the_same_timestamps() -> None:
    ms = (
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1680652800000,"s":"BTCUSDT",'
        b'"t":1,"p":"1.00000000","q":"2.00000000","T":1680652799999,"m":false,"M":true}}'
    )
    us = ms.replace(b"1680652800000", b"1680652800000123").replace(
        b"1680652799999", b"1680652799999456")  # fmt: skip
    a = FrameParser().parse([ms], [0]).trades.to_pylist()[0]
    b = FrameParser().parse([us], [0]).trades.to_pylist()[0]
    assert b["timestamp"] == a["timestamp"].replace(microsecond=999456)
    assert b["event_time"] == a["event_time"].replace(microsecond=123)
    assert a["side"] == "BUY" and a["quote_quantity"] == Decimal("2")


def test_futures_frames_are_rejected_not_parsed() -> None:
    lines = FUTURES_CAPTURE.read_bytes().splitlines()[1:]
    frames = [line.split(b": ", 1)[1] for line in lines]
    out = FrameParser().parse(frames, [0] * len(frames))
    assert out.trades.num_rows == 0 and out.quotes.num_rows == 0
    reasons = Counter(r.reason for r in out.rejects)
    # bookTicker (e/E/T), depth (pu) and aggTrade (no M) are recognisably futures;
    # kline is the same shape on both markets, so it is only "not captured".
    assert reasons == {RejectReason.FUTURES_FRAME: 1468, RejectReason.UNSUPPORTED_STREAM: 67}
    assert sum(len(r.raw) for r in out.rejects) == sum(len(f) for f in frames)


BAD_FRAMES = {
    b"{not json": RejectReason.MALFORMED_JSON,
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","p":"1","q":"1",'
    b'"T":1,"m":true}}': RejectReason.MISSING_FIELD,
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":"x","p":"1",'
    b'"q":"1","T":1,"m":true}}': RejectReason.BAD_FIELD,
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1e",'
    b'"q":"1","T":1,"m":true}}': RejectReason.INVALID_DECIMAL,
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,'
    b'"p":"0.000000001","q":"1","T":1,"m":true}}': RejectReason.INVALID_DECIMAL,
    b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,'
    b'"p":"99999","q":"99999999","T":1,"m":true}}': RejectReason.INVALID_DECIMAL,
    b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":1,"B":"1","a":"2",'
    b'"A":"1"}}': RejectReason.BAD_FIELD,
    b'{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT"}}':
        RejectReason.UNSUPPORTED_STREAM,
    b"[1, 2]": RejectReason.BAD_FIELD,
}  # fmt: skip


@pytest.mark.parametrize(("frame", "reason"), list(BAD_FRAMES.items()))
def test_each_bad_frame_is_rejected_with_its_reason(frame: bytes, reason: RejectReason) -> None:
    good = (b'{"stream":"ethusdt@trade","data":{"e":"trade","E":1,"s":"ETHUSDT","t":9,'
            b'"p":"1800.5","q":"0.1","T":1,"m":false}}')  # fmt: skip
    out = FrameParser().parse([good, frame, good], [1, 2, 3])
    assert [(r.reason, r.raw, r.received_us) for r in out.rejects] == [(reason, frame, 2)]
    assert out.rejects[0].detail
    # Dead letters are routed by what the frame was meant to be, when that is known.
    expected_type = {b"@trade": "trade", b"@bookTicker": "quote"}
    meant = next((t for key, t in expected_type.items() if key in frame), None)
    assert out.rejects[0].data_type == meant
    assert out.trades.column("trade_id").to_pylist() == [9, 9]


def test_control_replies_and_server_shutdown_are_counted_not_rejected() -> None:
    frames = [b'{"result":null,"id":1}', b'{"e":"serverShutdown","E":1700000000000}',
              b'{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1}}']  # fmt: skip
    out = FrameParser().parse(frames, [0, 0, 0])
    assert (out.control_replies, out.server_shutdowns, out.rejects) == (1, 2, [])


def test_raw_payload_without_envelope_is_parsed() -> None:
    frame = (b'{"e":"trade","E":1,"s":"BNBUSDT","t":5,"p":"300.1","q":"2","T":1,'
             b'"m":true,"M":true}')  # fmt: skip
    out = FrameParser().parse([b"{bad", frame], [0, 0])
    assert out.trades.column("message_id").to_pylist() == ["binance:BNBUSDT:5"]


def test_rest_trades_match_the_stream_form() -> None:
    raw = (b'[{"id":28457,"price":"4.00000100","qty":"12.00000000","quoteQty":"48.000012",'
           b'"time":1499865549590,"isBuyerMaker":true,"isBestMatch":true}]')  # fmt: skip
    batch, rejects = parse_rest_trades(raw, "BNBBTC", 7)
    row = batch.to_pylist()[0]
    assert rejects == []
    assert row["message_id"] == "binance:BNBBTC:28457"
    assert row["quote_quantity"] == Decimal("48.00001200")
    assert row["currency"] == "BTC" and row["side"] == "SELL"
    assert row["timestamp"] == row["event_time"]


def test_quote_asset_prefers_reference_data() -> None:
    assert quote_asset_of("BTCFDUSD") == "FDUSD"
    assert quote_asset_of("ETHBTC") == "BTC"
    assert quote_asset_of("WEIRD", {"WEIRD": "USDT"}) == "USDT"
    assert quote_asset_of("???") == ""
