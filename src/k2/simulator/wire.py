"""Bytes on the wire: WebSocket text-frame headers and Binance's combined-stream wrapper.

The simulator writes many frames per socket write, so it frames payloads itself rather
than paying a library call and a syscall per frame. Server-to-client frames are never
masked (RFC 6455 §5.1), so a frame is just a 2-, 4- or 10-byte header plus the payload.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache

__all__ = ["COMBINED_SUFFIX", "combined_prefix", "text_frame_header", "to_microseconds"]

_FIN_TEXT = 0x81
_SHORT_HEADERS = tuple(bytes((_FIN_TEXT, n)) for n in range(126))
_MEDIUM = struct.Struct("!BBH").pack
_LONG = struct.Struct("!BBQ").pack

#: Closes a combined-stream frame opened by :func:`combined_prefix`.
COMBINED_SUFFIX = b"}"

_TIME_FIELD = re.compile(rb'"([ET])":(\d+)')


def text_frame_header(length: int) -> bytes:
    """Header of a final, unmasked text frame carrying ``length`` payload bytes."""
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return _MEDIUM(_FIN_TEXT, 126, length)
    return _LONG(_FIN_TEXT, 127, length)


@lru_cache(maxsize=4096)
def combined_prefix(stream: str) -> bytes:
    """``{"stream":"<stream>","data":`` — prefix + raw payload + ``}`` is a combined frame."""
    return b'{"stream":"' + stream.encode("ascii") + b'","data":'


def to_microseconds(payload: bytes, event_us: int = -1, trade_us: int = -1) -> bytes:
    """``payload`` with its ``E`` and ``T`` time fields in microseconds instead of ms.

    ``event_us``/``trade_us`` are the exact microsecond values when known; ``-1`` means
    unknown, in which case the millisecond value is scaled by 1,000 (a replayed
    millisecond capture carries no finer time).
    """

    def scale(match: re.Match[bytes]) -> bytes:
        key = match.group(1)
        exact = event_us if key == b"E" else trade_us
        value = exact if exact >= 0 else int(match.group(2)) * 1000
        return b'"' + key + b'":' + str(value).encode("ascii")

    return _TIME_FIELD.sub(scale, payload)
