"""Readers for recorded WebSocket traffic: one frame per line, with its receive time.

Two line formats are recognised from the file's first non-empty line, plain or gzip
(detected by the gzip magic number, not the file name):

- hftbacktest (``*.dat.gz``): ``<receive time, integer µs> <frame>``.
- cryptofeed (``*.ws.*.txt``): line 1 is ``<url> <-> <connect time>``, then
  ``<receive time, decimal seconds>: <frame>``. Seconds are converted to microseconds
  with :class:`~decimal.Decimal` (never a float) and rounded half-to-even to the
  nearest microsecond, since these files carry float noise below 1 µs.

Frames are yielded byte-for-byte as recorded (only the line ending is removed); they are
not parsed here. A line that fits neither format raises :class:`CaptureFormatError`
naming the file and the 1-based line number.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Literal

from k2.errors import TerminalError

__all__ = ["CaptureError", "CaptureFormatError", "CapturedFrame", "read_capture"]

CaptureFormat = Literal["hftbacktest", "cryptofeed"]

_GZIP_MAGIC = b"\x1f\x8b"
_CRYPTOFEED_HEADER = re.compile(rb"^\S+ <-> \d+(?:\.\d+)?$")
_HFT_LINE = re.compile(rb"^\d+ ")
_SECONDS = re.compile(rb"^\d+(?:\.\d+)?$")
_MICROS = Decimal(1_000_000)
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One recorded frame.

    ``received_us``: when the recorder received it, UTC microseconds since the epoch.
    ``frame``: the exact frame bytes as recorded (no line ending).
    """

    received_us: int
    frame: bytes


class CaptureError(TerminalError):
    """A capture file could not be read (missing, unreadable, corrupt compression)."""


class CaptureFormatError(CaptureError):
    """A line of a capture file does not fit its format.

    ``path`` and ``line`` (1-based) say where; the message repeats both.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line


def read_capture(path: str | os.PathLike[str]) -> Iterator[CapturedFrame]:
    """Yield every frame of the capture at ``path``, in file order.

    Blank lines are skipped. Raises :class:`CaptureFormatError` for a line that does not
    fit the detected format (or a file whose format is not recognised), and
    :class:`CaptureError` if the file cannot be opened or decompressed.
    """
    name = os.fspath(path)
    try:
        stream = _open(Path(name))
    except OSError as exc:
        raise CaptureError(f"cannot read capture {name}: {exc}") from exc
    with stream:
        yield from _frames(stream, name)


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return path.open("rb")


def _frames(stream: Iterable[bytes], name: str) -> Iterator[CapturedFrame]:
    fmt: CaptureFormat | None = None
    line_no = 0
    try:
        for raw_line in stream:
            line_no += 1
            line = raw_line.rstrip(b"\r\n")
            if not line.strip():
                continue
            if fmt is None:
                fmt = _detect(line, name, line_no)
                if fmt == "cryptofeed":
                    continue  # the header line names the URL, it holds no frame
            if fmt == "hftbacktest":
                yield _hftbacktest_line(line, name, line_no)
            else:
                yield _cryptofeed_line(line, name, line_no)
    except (OSError, EOFError, zlib.error) as exc:
        raise CaptureError(f"cannot read capture {name} after line {line_no}: {exc}") from exc


def _detect(line: bytes, name: str, line_no: int) -> CaptureFormat:
    if _CRYPTOFEED_HEADER.match(line):
        return "cryptofeed"
    if _HFT_LINE.match(line):
        return "hftbacktest"
    raise CaptureFormatError(
        name,
        line_no,
        "unrecognised capture format: expected '<µs> <frame>' (hftbacktest) or "
        "'<url> <-> <connect time>' (cryptofeed)",
    )


def _hftbacktest_line(line: bytes, name: str, line_no: int) -> CapturedFrame:
    stamp, sep, frame = line.partition(b" ")
    if not sep or not stamp.isdigit() or not frame:
        raise CaptureFormatError(name, line_no, "expected '<receive µs> <frame>'")
    return CapturedFrame(int(stamp), frame)


def _cryptofeed_line(line: bytes, name: str, line_no: int) -> CapturedFrame:
    stamp, sep, frame = line.partition(b": ")
    if not sep or not frame:
        raise CaptureFormatError(name, line_no, "expected '<receive seconds>: <frame>'")
    if not _SECONDS.match(stamp):
        raise CaptureFormatError(
            name, line_no, f"receive time {stamp[:40]!r} is not a decimal number of seconds"
        )
    seconds = Decimal(stamp.decode("ascii"))
    micros = (seconds * _MICROS).quantize(_ONE, rounding=ROUND_HALF_EVEN)
    return CapturedFrame(int(micros), frame)
