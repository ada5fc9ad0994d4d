"""The shared tape, the REST trade history and the wire helpers, without a server."""

from __future__ import annotations

import asyncio
import json

import pytest

from k2.simulator.tape import Tape, TradeHistory, TradeRow
from k2.simulator.wire import combined_prefix, text_frame_header, to_microseconds


def _fill(tape: Tape, count: int, start: int = 0) -> None:
    streams = ["a@trade" if i % 2 == 0 else "b@trade" for i in range(start, start + count)]
    tape.append(streams, [b'{"n":%d}' % i for i in range(start, start + count)])


def test_read_filters_by_subscription_and_respects_limit() -> None:
    tape = Tape(100)
    _fill(tape, 10)
    read = tape.read(0, {"a@trade"}, 3)
    assert read.payloads == [b'{"n":0}', b'{"n":2}', b'{"n":4}']
    assert read.streams == ["a@trade"] * 3
    assert read.next_pos == 5  # stopped right after the third match
    rest = tape.read(read.next_pos, {"a@trade"}, 100)
    assert rest.payloads == [b'{"n":6}', b'{"n":8}']
    assert rest.next_pos == tape.head == 10


def test_starts_hold_back_a_stream_subscribed_mid_way() -> None:
    tape = Tape(100)
    _fill(tape, 10)
    read = tape.read(0, {"a@trade", "b@trade"}, 100, starts={"b@trade": 6})
    assert read.payloads == [b'{"n":%d}' % n for n in (0, 2, 4, 6, 7, 8, 9)]


def test_trimmed_events_count_as_lagged() -> None:
    tape = Tape(1)  # trims once 1 + 1024 slack is exceeded
    _fill(tape, 3000)
    assert tape.head == 3000
    assert tape.base == 2999
    read = tape.read(10, {"a@trade", "b@trade"}, 100)
    assert read.lagged == 2989
    assert read.payloads == [b'{"n":2999}']


def test_microsecond_variant_is_derived_once_and_uses_exact_times() -> None:
    tape = Tape(10)
    tape.append(
        ["x@trade", "x@trade"],
        [b'{"e":"trade","E":1700000000001,"T":1700000000000,"t":5}', b'{"u":1,"s":"X"}'],
        [1_700_000_000_001_234, -1],
        [1_700_000_000_000_999, -1],
    )
    first = tape.read(0, {"x@trade"}, 10, micros=True).payloads
    again = tape.read(0, {"x@trade"}, 10, micros=True).payloads
    assert first[0] == b'{"e":"trade","E":1700000000001234,"T":1700000000000999,"t":5}'
    assert first[1] == b'{"u":1,"s":"X"}'
    assert first[0] is again[0]
    assert tape.read(0, {"x@trade"}, 10).payloads[0].startswith(b'{"e":"trade","E":1700000000001,')


def test_to_microseconds_scales_unknown_times() -> None:
    payload = b'{"e":"trade","E":1680652800000,"t":3071245454,"T":1680652799999,"m":true}'
    assert to_microseconds(payload) == (
        b'{"e":"trade","E":1680652800000000,"t":3071245454,"T":1680652799999000,"m":true}'
    )


async def test_wait_beyond_wakes_on_append_and_on_finish() -> None:
    tape = Tape(10)
    waiter = asyncio.ensure_future(tape.wait_beyond(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    _fill(tape, 1)
    await asyncio.wait_for(waiter, 1)
    finished = asyncio.ensure_future(tape.wait_beyond(1))
    await asyncio.sleep(0)
    tape.finish()
    await asyncio.wait_for(finished, 1)
    with pytest.raises(RuntimeError):
        _fill(tape, 1)


def test_frame_headers_follow_rfc6455_length_forms() -> None:
    assert text_frame_header(0) == b"\x81\x00"
    assert text_frame_header(125) == b"\x81\x7d"
    assert text_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert text_frame_header(65535) == b"\x81\x7e\xff\xff"
    assert text_frame_header(65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


def test_combined_prefix_builds_binance_wrapper() -> None:
    frame = combined_prefix("btcusdt@trade") + b'{"e":"trade"}' + b"}"
    assert json.loads(frame) == {"stream": "btcusdt@trade", "data": {"e": "trade"}}


def test_trade_history_pages_by_id_and_recent() -> None:
    history = TradeHistory(None)
    for i in range(10, 20):
        history.add("BTCUSDT", i, 100 + i, 1, i * 1000, i % 2 == 0)
    assert [r.trade_id for r in history.rows("BTCUSDT", 12, 3)] == [12, 13, 14]
    assert [r.trade_id for r in history.rows("BTCUSDT", None, 3)] == [17, 18, 19]
    assert [r.trade_id for r in history.rows("BTCUSDT", 0, 2)] == [10, 11]
    assert list(history.rows("BTCUSDT", 50, 5)) == []
    assert list(history.rows("ETHUSDT", None, 5)) == []
    assert next(history.rows("BTCUSDT", 12, 1)) == TradeRow(12, 112, 1, 12_000, True)
    with pytest.raises(ValueError, match="not above"):
        history.add("BTCUSDT", 19, 1, 1, 1, False)


def test_trade_history_retention_keeps_the_newest() -> None:
    history = TradeHistory(5)  # trims in chunks once 5 + 1024 is exceeded
    for i in range(2000):
        history.add("X", i, 1, 1, i, False)
    assert history.count("X") < 2000
    assert history.last_id("X") == 1999
    first = next(history.rows("X", 0, 1)).trade_id
    assert first > 0
    assert [r.trade_id for r in history.rows("X", None, 5)] == list(range(1995, 2000))
