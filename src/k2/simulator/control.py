"""Binance's WebSocket control messages, as a pure function of (message, state).

Requests are ``{"method": ..., "params": [...], "id": ...}`` with methods
``SUBSCRIBE``, ``UNSUBSCRIBE``, ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY`` and
``GET_PROPERTY``. Replies and error texts follow Binance's "Live Subscribing/
Unsubscribing" documentation: ``{"result": ..., "id": ...}`` on success and
``{"error": {"code": c, "msg": "..."}, "id": ...}`` on failure, with code 0 (unknown
property), 1 (bad value type), 2 (invalid request) or 3 (invalid JSON).

Two replies are this simulator's own wording because Binance documents none: an
invalid stream name and going over the per-connection stream limit (both code 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from k2.simulator.streams import is_valid_stream

__all__ = ["ControlResult", "ControlState", "handle_control"]

_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_TEXT = re.compile(r"^[A-Za-z0-9-]{1,36}$")
_BYTE_AT = re.compile(r"\(byte (\d+)\)")
_INT64 = (-(2**63), 2**63 - 1)

_encode = msgspec.json.encode


@dataclass(slots=True)
class ControlState:
    """What a connection's control messages can change.

    ``subscriptions`` keeps insertion order (LIST_SUBSCRIPTIONS answers in that order).
    ``combined`` says whether payloads are wrapped as ``{"stream":..,"data":..}``.
    """

    combined: bool
    subscriptions: dict[str, None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlResult:
    """The reply to send (JSON bytes), and the streams the request added or removed."""

    reply: bytes
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


def _error(code: int, msg: str, request_id: Any = None) -> ControlResult:
    return ControlResult(_encode({"error": {"code": code, "msg": msg}, "id": request_id}))


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return _INT64[0] <= value <= _INT64[1]
    return isinstance(value, str) and _ID_TEXT.match(value) is not None


def handle_control(message: str | bytes, state: ControlState, max_streams: int) -> ControlResult:
    """Apply one client control message to ``state`` and return the reply.

    Never raises for bad input: malformed JSON or requests become Binance error replies.
    A SUBSCRIBE that would take the connection over ``max_streams`` changes nothing.
    """
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    try:
        request = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        found = _BYTE_AT.search(str(exc))
        if found:
            line, column = _position(text, int(found.group(1)))
            return _error(3, f"Invalid JSON: expected value at line {line} column {column}")
        return _error(3, "Invalid JSON: EOF while parsing a value")
    if not isinstance(request, dict):
        return _error(2, "Invalid request: expected a JSON object")
    request_id = request.get("id")
    if "id" not in request or not _valid_id(request_id):
        return _error(2, "Invalid request: request ID must be an unsigned integer")
    method = request.get("method")
    if "method" not in request:
        return _error(
            2, f"Invalid request: missing field `method` at line 1 column {len(text)}", request_id
        )
    if method not in _METHODS:
        column = text.find(str(method)) + len(str(method)) + 1 if isinstance(method, str) else 0
        expected = ", ".join(f"`{m}`" for m in _METHODS)
        return _error(
            2,
            f"Invalid request: unknown variant `{method}`, expected one of {expected} "
            f"at line 1 column {max(column, 1)}",
            request_id,
        )
    params = request.get("params", [])
    if not isinstance(params, list):
        return _error(2, "Invalid request: params must be a list", request_id)
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return _subscriptions(method, params, request_id, state, max_streams)
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return _error(2, "Invalid request: too many parameters", request_id)
        return ControlResult(_encode({"result": list(state.subscriptions), "id": request_id}))
    return _property(method, params, request_id, state)


def _subscriptions(
    method: str, params: list[Any], request_id: Any, state: ControlState, max_streams: int
) -> ControlResult:
    for name in params:
        if not isinstance(name, str) or not is_valid_stream(name):
            return _error(2, f"Invalid request: invalid stream name {name!r}", request_id)
    ok = ControlResult(_encode({"result": None, "id": request_id}))
    if method == "UNSUBSCRIBE":
        removed = tuple(n for n in dict.fromkeys(params) if n in state.subscriptions)
        for name in removed:
            del state.subscriptions[name]
        return ControlResult(ok.reply, removed=removed)
    added = tuple(n for n in dict.fromkeys(params) if n not in state.subscriptions)
    if len(state.subscriptions) + len(added) > max_streams:
        return _error(
            2,
            f"Invalid request: too many streams; a connection can listen to at most "
            f"{max_streams} streams",
            request_id,
        )
    for name in added:
        state.subscriptions[name] = None
    return ControlResult(ok.reply, added=added)


def _property(
    method: str, params: list[Any], request_id: Any, state: ControlState
) -> ControlResult:
    wanted = 2 if method == "SET_PROPERTY" else 1
    if len(params) > wanted:
        return _error(2, "Invalid request: too many parameters", request_id)
    if not params or not isinstance(params[0], str):
        return _error(2, "Invalid request: property name must be a string", request_id)
    if params[0] != "combined":
        return _error(0, "Unknown property", request_id)
    if method == "GET_PROPERTY":
        return ControlResult(_encode({"result": state.combined, "id": request_id}))
    if len(params) < 2 or not isinstance(params[1], bool):
        return _error(1, "Invalid value type: expected Boolean", request_id)
    state.combined = params[1]
    return ControlResult(_encode({"result": None, "id": request_id}))
