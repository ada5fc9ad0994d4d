"""Control messages as a pure function: Binance's replies and error texts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from k2.simulator.control import ControlState, handle_control


def _reply(message: str, state: ControlState, max_streams: int = 1024) -> Any:
    return json.loads(handle_control(message, state, max_streams).reply)


def test_subscribe_list_unsubscribe_round_trip() -> None:
    state = ControlState(combined=True)
    sub = '{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@bookTicker"],"id":1}'
    result = handle_control(sub, state, 1024)
    assert json.loads(result.reply) == {"result": None, "id": 1}
    assert result.added == ("btcusdt@trade", "btcusdt@bookTicker")
    listed = _reply('{"method":"LIST_SUBSCRIPTIONS","id":"abc-1"}', state)
    assert listed == {"result": ["btcusdt@trade", "btcusdt@bookTicker"], "id": "abc-1"}
    unsub = handle_control(
        '{"method":"UNSUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":2}', state, 1024
    )
    assert json.loads(unsub.reply) == {"result": None, "id": 2}
    assert unsub.removed == ("btcusdt@trade",)
    assert list(state.subscriptions) == ["btcusdt@bookTicker"]


def test_invalid_json_is_code_3_with_position() -> None:
    reply = _reply('{"method": SUBSCRIBE}', ControlState(combined=False))
    assert reply["id"] is None
    assert reply["error"]["code"] == 3
    assert reply["error"]["msg"] == "Invalid JSON: expected value at line 1 column 12"


@pytest.mark.parametrize(
    ("message", "msg"),
    [
        ('{"method":"SUBSCRIBE","params":[]}', "request ID must be an unsigned integer"),
        ('{"method":"SUBSCRIBE","params":[],"id":1.5}', "request ID must be an unsigned integer"),
        ('{"method":"SUBSCRIBE","params":[],"id":"x y"}', "request ID must be an unsigned integer"),
        ('{"params":[],"id":7}', "missing field `method`"),
        ('{"method":"SUBSCRIB","params":[],"id":7}', "unknown variant `SUBSCRIB`, expected one of"),
        ('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":7}', "invalid stream name"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":7}', "invalid stream name"),
        ('{"method":"SUBSCRIBE","params":"btcusdt@trade","id":7}', "params must be a list"),
        ('{"method":"LIST_SUBSCRIPTIONS","params":["x"],"id":7}', "too many parameters"),
        ('["SUBSCRIBE"]', "expected a JSON object"),
    ],
)
def test_bad_requests_are_code_2(message: str, msg: str) -> None:
    state = ControlState(combined=True)
    reply = _reply(message, state)
    assert reply["error"]["code"] == 2
    assert reply["error"]["msg"].startswith("Invalid request: ")
    assert msg in reply["error"]["msg"]
    assert state.subscriptions == {}


def test_error_echoes_a_valid_id() -> None:
    reply = _reply('{"method":"NOPE","id":42}', ControlState(combined=True))
    assert reply["id"] == 42


def test_stream_limit_rejects_the_whole_request() -> None:
    state = ControlState(combined=True)
    streams = [f"s{i:04d}usdt@trade" for i in range(1025)]
    message = json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 3})
    reply = _reply(message, state)
    assert reply["error"]["code"] == 2
    assert "1024" in reply["error"]["msg"]
    assert state.subscriptions == {}
    assert (
        _reply(json.dumps({"method": "SUBSCRIBE", "params": streams[:1024], "id": 4}), state)[
            "result"
        ]
        is None
    )
    assert len(state.subscriptions) == 1024


def test_properties_follow_binance_codes() -> None:
    state = ControlState(combined=False)
    assert _reply('{"method":"GET_PROPERTY","params":["combined"],"id":1}', state) == {
        "result": False,
        "id": 1,
    }
    assert (
        _reply('{"method":"SET_PROPERTY","params":["combined",true],"id":2}', state)["result"]
        is None
    )
    assert state.combined is True
    assert _reply('{"method":"GET_PROPERTY","params":["colour"],"id":3}', state)["error"] == {
        "code": 0,
        "msg": "Unknown property",
    }
    assert _reply('{"method":"SET_PROPERTY","params":["combined","yes"],"id":4}', state)[
        "error"
    ] == {"code": 1, "msg": "Invalid value type: expected Boolean"}
    bad_name = _reply('{"method":"GET_PROPERTY","params":[5],"id":5}', state)
    assert bad_name["error"]["msg"] == "Invalid request: property name must be a string"
