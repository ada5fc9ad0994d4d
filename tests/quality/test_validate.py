"""Validation of TRADE and QUOTE batches: each rule, its order, the fast path."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from k2.quality.rejects import Reject, RejectReason
from k2.quality.validate import validate_quotes, validate_trades
from tests.captures import HFT_QUOTES
from tests.quality.quality_testkit import T0, frames, ids_of, quotes, trades

NOW = T0 + 1_000_000
LIMIT = 5_000_000
KNOWN = frozenset({"BTCUSDT", "ETHUSDT"})


def check_trades(
    batch: pa.RecordBatch, known: frozenset[str] | None = KNOWN
) -> tuple[pa.RecordBatch, list[bytes], list[Reject]]:
    return validate_trades(
        batch,
        frames(batch),
        known_symbols=known,
        now_us=NOW,
        max_future_us=LIMIT,
        source="binance.ws",
    )


def check_quotes(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[bytes], list[Reject]]:
    return validate_quotes(
        batch,
        frames(batch, "update_id"),
        known_symbols=KNOWN,
        now_us=NOW,
        max_future_us=LIMIT,
        source="binance.ws",
    )


def only_reject(batch: pa.RecordBatch, quote: bool = False) -> Reject:
    valid, _, rejects = check_quotes(batch) if quote else check_trades(batch)
    assert valid.num_rows == batch.num_rows - 1
    assert len(rejects) == 1
    return rejects[0]


class TestTrades:
    def test_a_clean_batch_comes_back_unchanged(self) -> None:
        batch = trades([1, 2, 3])
        raw = frames(batch)
        valid, valid_raw, rejects = validate_trades(
            batch, raw, known_symbols=KNOWN, now_us=NOW, max_future_us=LIMIT, source="s"
        )
        assert valid is batch
        assert valid_raw is raw
        assert rejects == []

    def test_rejects_keep_raw_reason_receive_time_and_source(self) -> None:
        batch = trades([1, 2, 3], price=["1", "0", "2"], ingestion_us=[T0, T0 + 7, T0 + 9])
        valid, valid_raw, rejects = check_trades(batch)
        assert ids_of(valid) == [1, 3]
        assert valid_raw == [b"frame 0:1", b"frame 2:3"]
        assert rejects == [
            Reject(
                reason=RejectReason.NON_POSITIVE_PRICE,
                detail="price=0.00000000 must be > 0",
                raw=b"frame 1:2",
                received_us=T0 + 7,
                source="binance.ws",
            )
        ]
        assert valid.schema == batch.schema

    def test_negative_price(self) -> None:
        reject = only_reject(trades([1, 2], price=["-1.5", "3"]))
        assert reject.reason is RejectReason.NON_POSITIVE_PRICE
        assert reject.detail == "price=-1.50000000 must be > 0"

    def test_null_price_fails_the_price_rule(self) -> None:
        reject = only_reject(trades([1, 2], price=[None, "3"]))
        assert reject.reason is RejectReason.NON_POSITIVE_PRICE
        assert reject.detail == "price=null must be > 0"

    def test_zero_quantity(self) -> None:
        reject = only_reject(trades([1, 2], quantity=["0", "0.5"]))
        assert reject.reason is RejectReason.NON_POSITIVE_QUANTITY
        assert reject.detail == "quantity=0.00000000 must be > 0"

    def test_unknown_symbol(self) -> None:
        reject = only_reject(trades([1, 2], symbol=["BTCUSDT", "DOGEUSDT"]))
        assert reject.reason is RejectReason.UNKNOWN_SYMBOL
        assert reject.detail == "symbol='DOGEUSDT' is not a known symbol"
        assert reject.raw == b"frame 1:2"

    def test_any_symbol_passes_without_a_known_list(self) -> None:
        batch = trades([1], symbol="DOGEUSDT")
        valid, _, rejects = check_trades(batch, known=None)
        assert valid is batch
        assert rejects == []

    def test_future_trade_time(self) -> None:
        reject = only_reject(trades([1, 2], timestamp_us=[NOW + LIMIT + 1, NOW]))
        assert reject.reason is RejectReason.FUTURE_TIMESTAMP
        assert reject.detail == (
            "timestamp=2024-01-01T00:00:06.000001Z is 5000001 us after "
            "now=2024-01-01T00:00:01.000000Z (limit 5000000 us)"
        )

    def test_future_event_time(self) -> None:
        batch = trades([1, 2], timestamp_us=NOW, event_time_us=[NOW, NOW + 10_000_000])
        reject = only_reject(batch)
        assert reject.reason is RejectReason.FUTURE_TIMESTAMP
        assert reject.detail.startswith("event_time=2024-01-01T00:00:11.000000Z is 10000000 us")

    def test_exactly_at_the_limit_is_allowed(self) -> None:
        batch = trades([1], timestamp_us=NOW + LIMIT, event_time_us=NOW + LIMIT)
        assert check_trades(batch)[2] == []

    @pytest.mark.parametrize(
        ("overrides", "reason"),
        [
            # unknown symbol beats a future time and a bad price
            (
                {"symbol": "X", "timestamp_us": NOW + 2 * LIMIT, "price": "0"},
                RejectReason.UNKNOWN_SYMBOL,
            ),
            # a future time beats a bad price and quantity
            (
                {"timestamp_us": NOW + 2 * LIMIT, "price": "0", "quantity": "0"},
                RejectReason.FUTURE_TIMESTAMP,
            ),
            # price before quantity
            ({"price": "0", "quantity": "0"}, RejectReason.NON_POSITIVE_PRICE),
        ],
    )
    def test_first_failing_rule_wins(self, overrides: dict[str, str], reason: RejectReason) -> None:
        batch = trades([1], **overrides)  # type: ignore[arg-type]
        valid, valid_raw, rejects = check_trades(batch)
        assert valid.num_rows == 0
        assert valid_raw == []
        assert [r.reason for r in rejects] == [reason]

    def test_every_row_rejected(self) -> None:
        batch = trades([1, 2, 3], price="0")
        valid, valid_raw, rejects = check_trades(batch)
        assert (valid.num_rows, valid_raw) == (0, [])
        assert [r.raw for r in rejects] == frames(batch)

    def test_empty_batch(self) -> None:
        batch = trades([])
        assert check_trades(batch) == (batch, [], [])

    def test_misaligned_raw_is_a_bug(self) -> None:
        with pytest.raises(ValueError, match="raw has 1 frames for a batch of 2 rows"):
            validate_trades(
                trades([1, 2]),
                [b"x"],
                known_symbols=None,
                now_us=NOW,
                max_future_us=LIMIT,
                source="s",
            )


class TestQuotes:
    def test_a_clean_batch_comes_back_unchanged(self) -> None:
        batch = quotes([10, 12, 15])
        raw = frames(batch, "update_id")
        valid, valid_raw, rejects = validate_quotes(
            batch, raw, known_symbols=KNOWN, now_us=NOW, max_future_us=LIMIT, source="s"
        )
        assert (valid, valid_raw, rejects) == (batch, raw, [])
        assert valid is batch

    def test_an_empty_bid_side_is_rejected(self) -> None:
        # Binance reports an empty side as price 0 / quantity 0.
        reject = only_reject(quotes([1, 2], bid_price=["0", "100"], bid_quantity="0"), True)
        assert reject.reason is RejectReason.NON_POSITIVE_PRICE
        assert reject.detail == "bid_price=0.00000000 must be > 0"

    def test_an_empty_ask_side_is_rejected(self) -> None:
        reject = only_reject(quotes([1, 2], ask_price=["0", "100.01"]), True)
        assert reject.reason is RejectReason.NON_POSITIVE_PRICE
        assert reject.detail == "ask_price=0.00000000 must be > 0"

    def test_a_zero_quantity_is_allowed(self) -> None:
        batch = quotes([1], bid_quantity="0", ask_quantity="0")
        assert check_quotes(batch)[2] == []

    def test_a_negative_quantity_is_rejected(self) -> None:
        reject = only_reject(quotes([1, 2], ask_quantity=["2", "-1"]), True)
        assert reject.reason is RejectReason.NON_POSITIVE_QUANTITY
        assert reject.detail == "ask_quantity=-1.00000000 must be >= 0"

    def test_a_crossed_book_is_rejected(self) -> None:
        reject = only_reject(quotes([1, 2], bid_price=["100", "100.02"]), True)
        assert reject.reason is RejectReason.CROSSED_BOOK
        assert reject.detail == "bid_price=100.02000000 > ask_price=100.01000000 (crossed book)"

    def test_a_locked_book_is_allowed(self) -> None:
        batch = quotes([1], bid_price="100.01", ask_price="100.01")
        assert check_quotes(batch)[2] == []

    def test_unknown_symbol_and_future_time(self) -> None:
        batch = quotes([1, 2, 3], symbol=["BTCUSDT", "XRPUSDT", "BTCUSDT"])
        batch = batch.set_column(
            batch.schema.get_field_index("timestamp"),
            batch.schema.field("timestamp"),
            pa.array([NOW, NOW, NOW + LIMIT + 1], batch.schema.field("timestamp").type),
        )
        valid, valid_raw, rejects = check_quotes(batch)
        assert ids_of(valid, "update_id") == [1]
        assert valid_raw == [b"frame 0:1"]
        assert [(r.reason, r.raw) for r in rejects] == [
            (RejectReason.UNKNOWN_SYMBOL, b"frame 1:2"),
            (RejectReason.FUTURE_TIMESTAMP, b"frame 2:3"),
        ]

    def test_price_rules_come_before_crossed(self) -> None:
        # bid > ask here too, but the empty ask side is the first rule broken.
        reject = only_reject(quotes([1, 2], ask_price=["0", "100.01"]), True)
        assert reject.reason is RejectReason.NON_POSITIVE_PRICE


def test_real_book_tickers_are_all_valid(hft: tuple[list[bytes], list[int]]) -> None:
    """Every bookTicker of a real Binance capture passes (no crossed or empty book)."""
    raw: list[bytes] = []
    received: list[int] = []
    data: list[dict[str, str | int]] = []
    for frame, at in zip(*hft, strict=True):
        message = json.loads(frame)
        if message["stream"].endswith("@bookTicker"):
            raw.append(frame)
            received.append(at)
            data.append(message["data"])
    assert len(data) == HFT_QUOTES
    batch = quotes(
        [int(d["u"]) for d in data],
        bid_price=[str(d["b"]) for d in data],
        bid_quantity=[str(d["B"]) for d in data],
        ask_price=[str(d["a"]) for d in data],
        ask_quantity=[str(d["A"]) for d in data],
        timestamp_us=received,
    )
    valid, valid_raw, rejects = validate_quotes(
        batch,
        raw,
        known_symbols=frozenset({"BTCUSDT"}),
        now_us=received[-1],
        max_future_us=0,
        source="capture",
    )
    assert rejects == []
    assert valid is batch
    assert valid_raw is raw
