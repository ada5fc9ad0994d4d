"""Rejected input: why it was rejected, and the raw bytes, so nothing is lost.

A reject is never dropped silently: the capture writes it out (and later stages put
it on the dead-letter topic), with the reason, a human detail and the raw payload.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass
from typing import Any


class RejectReason(enum.StrEnum):
    """Why a frame or record was rejected. Values are stable identifiers."""

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    INVALID_DECIMAL = "invalid_decimal"
    NON_POSITIVE_PRICE = "non_positive_price"
    NON_POSITIVE_QUANTITY = "non_positive_quantity"
    CROSSED_BOOK = "crossed_book"
    UNKNOWN_SYMBOL = "unknown_symbol"
    FUTURES_FRAME = "futures_frame"
    UNSUPPORTED_STREAM = "unsupported_stream"
    FUTURE_TIMESTAMP = "future_timestamp"
    LAKE_WRITE_FAILED = "lake_write_failed"


@dataclass(frozen=True, slots=True)
class Reject:
    """One rejected frame or record.

    ``raw`` is the exact payload received (bytes); ``received_us`` is the receive time
    in UTC microseconds; ``source`` names where it came from (e.g. ``binance.ws``);
    ``data_type`` is what the input was meant to be (``trade``, ``quote``), ``None``
    when it could not be told (unreadable JSON).
    """

    reason: RejectReason
    detail: str
    raw: bytes
    received_us: int
    source: str
    data_type: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-able dict; the raw payload as UTF-8 text, or base64 if not UTF-8."""
        try:
            raw_text: str = self.raw.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            raw_text = base64.b64encode(self.raw).decode("ascii")
            encoding = "base64"
        return {
            "reason": self.reason.value,
            "detail": self.detail,
            "received_us": self.received_us,
            "source": self.source,
            "data_type": self.data_type,
            "raw": raw_text,
            "raw_encoding": encoding,
        }
