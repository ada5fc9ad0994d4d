"""Property-based fuzzing of the data.binance.vision archive importer.

An archive either imports exactly — every row's values are what its line says — or
fails with :class:`ArchiveError` (a :class:`TerminalError`) whose message names the
file, the first bad line and, for a bad value, its column; never another exception,
never a partial import (a failing archive leaves the lake as it was). Damaged zip
bytes and a wrong ``.CHECKSUM`` fail the same way.

Which lines are good is decided by :func:`oracle`, written from the format the module
documents (Binance's columns; integers; plain decimals below 10^10 with at most 8
places; true/false; ms or µs times before 9999-01-01; optional header; empty lines
skipped) independently of the importer's vectorised code.

The fast tests run some dozens of examples; the ``slow`` ones run thousands.
Examples are derandomized, so a failure in CI reproduces locally.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import k2.lake.archives as archives
from k2.config import LakeSettings
from k2.errors import TerminalError
from k2.lake.archives import ArchiveError, ArchiveKind, read_archive, verify_checksum
from k2.lake.backfill import PROP_ARCHIVE, backfill
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables
from k2.sources.binance.wire import TIME_LIMIT_US
from tests.lake.test_archives import KLINES, MS_2024, US_2025

FAST = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=2000)
BUDGETS = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]

T = TypeVar("T")

SYMBOL = "FUZZUSDT"
DATE = "2024-01-01"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- the oracle: the documented format, line by line ---------------------------------------

BOOLS = {b"true": True, b"True": True, b"TRUE": True, b"false": False, b"False": False,
         b"FALSE": False}  # fmt: skip
INTS = {"id", "agg_id", "first_id", "last_id", "time"}
VALUE = re.compile(rb"[-+]?[0-9.]*[0-9][0-9.]*|true|false", re.IGNORECASE)
QUANTUM = Decimal("1e-8")


@dataclass(frozen=True)
class Bad:
    """The first bad line, the columns at fault there (None: the line as a whole) and
    the words the message must use."""

    line: int
    columns: frozenset[str] | None
    words: str


def cell_ok(name: str, cell: bytes) -> bool:
    try:
        text = cell.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if name in INTS:
        if not re.fullmatch(r"-?[0-9]+", text) or not -(2**63) <= int(text) < 2**63:
            return False
        return name != "time" or 0 <= int(text) < TIME_LIMIT_US
    if name in ("price", "qty"):
        if len(text) > 20 or not re.fullmatch(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)", text):
            return False
        value = Decimal(text)
        return abs(value) < 10**10 and value == value.quantize(QUANTUM)
    if name.startswith("is_"):
        return cell in BOOLS
    return True  # quote_qty: recomputed, any text


def oracle(data: bytes, kind: ArchiveKind) -> list[dict[str, Any]] | Bad:
    """The canonical rows ``data`` must import as (time-ordered), or its first bad line."""
    columns = kind.columns
    pieces = data.split(b"\n")
    rows: list[dict[str, Any]] = []
    first = True
    for i, piece in enumerate(pieces):
        line = i + 1
        if i < len(pieces) - 1 and piece.endswith(b"\r"):
            piece = piece[:-1]  # CRLF
        if not piece:
            continue  # empty lines are skipped
        if b"\r" in piece:
            return Bad(line, None, "carriage return")
        cells = piece.split(b",")
        if len(cells) != len(columns):
            return Bad(line, None, f"has {len(cells)} columns")
        if first:
            first = False
            if not any(VALUE.fullmatch(c.strip()) for c in cells):
                continue  # a header
        bad = frozenset(n for n, c in zip(columns, cells, strict=True) if not cell_ok(n, c))
        if bad:
            return Bad(line, bad, "column")
        rows.append(canonical(dict(zip(columns, cells, strict=True)), kind))
        if abs(rows[-1]["quote_quantity"]) >= 10**10:
            return Bad(line, frozenset({"price", "qty"}), "'price' × 'qty'")
    return sorted(rows, key=lambda r: (r["timestamp"], r["trade_id"]))


def canonical(cells: dict[str, bytes], kind: ArchiveKind) -> dict[str, Any]:
    agg = kind is ArchiveKind.AGG_TRADES
    trade_id = int(cells["agg_id" if agg else "id"])
    price, qty = Decimal(cells["price"].decode()), Decimal(cells["qty"].decode())
    time = int(cells["time"])
    ts = EPOCH + timedelta(microseconds=time * 1000 if time < 10**14 else time)
    maker, best = BOOLS[cells["is_buyer_maker"]], BOOLS[cells["is_best_match"]]
    best_json = "true" if best else "false"
    vendor = (
        f'{{"agg":true,"f":{int(cells["first_id"])},"l":{int(cells["last_id"])},"M":{best_json}}}'
        if agg
        else f'{{"M":{best_json}}}'
    )
    return {
        "message_id": f"binance:{SYMBOL}:{'agg:' if agg else ''}{trade_id}",
        "trade_id": trade_id,
        "exchange": "binance",
        "symbol": SYMBOL,
        "asset_class": "crypto",
        "timestamp": ts,
        "event_time": ts,
        "price": price,
        "quantity": qty,
        "quote_quantity": (price * qty).quantize(QUANTUM, ROUND_HALF_EVEN),
        "currency": "USDT",
        "side": "SELL" if maker else "BUY",
        "is_buyer_maker": maker,
        "source_sequence": trade_id,
        "ingestion_timestamp": EPOCH,
        "vendor_data": vendor,
    }


# -- strategies ------------------------------------------------------------------------------

#: Cell texts Binance never writes, each a way a value can be wrong (or subtly right).
NASTY_CELLS = [
    b"", b" ", b"5 ", b" 5", b"\t5", b"0x10", b"0X1F", b"+5", b"-0", b"007", b"1e5", b"1E-10000000",
    b"nan", b"NaN", b"null", b"N/A", b"inf", b"9" * 19, b"9223372036854775807",
    b"9223372036854775808", b"-9223372036854775809", b"10000000000", b"9999999999.99999999",
    b"0.000000001", b"1.000000000", b".5", b"5.", b"\xd9\xa1", b"\xff", b"\xc3", b'"5"', b"'5'",
    b"true", b"True", b"TRUE", b"yes", b"1", b"0", b"t", b"\x00", b"5,6", b"5\n6", b"5\r6", b"5\r",
    b"-", b"--5", b"1_000", b"-1", str(TIME_LIMIT_US).encode(), str(TIME_LIMIT_US - 1).encode(),
    str(10**14 - 1).encode(), str(10**14).encode(), b"0." + b"0" * 100 + b"1", b"id", b"price",
]  # fmt: skip
CELLS = st.one_of(
    st.sampled_from(NASTY_CELLS),
    st.from_regex(rb"-?[0-9]{1,12}(\.[0-9]{0,10})?", fullmatch=True),
    st.from_regex(rb"[-0-9.]{0,22}", fullmatch=True),
    st.integers(-(2**64), 2**64).map(lambda i: str(i).encode()),
    st.binary(max_size=6),
)


@st.composite
def good_lines(draw: st.DrawFn, kind: ArchiveKind) -> list[list[bytes]]:
    """Valid rows of ``kind`` (ms or µs times), as cells."""
    n = draw(st.integers(0, 8))
    first_id = draw(st.integers(0, 10**12))
    start = draw(st.sampled_from([MS_2024, US_2025]))
    rows = []
    for i in range(n):
        price = f"{draw(st.integers(0, 99_999))}.{draw(st.integers(0, 10**8 - 1)):08d}"
        qty = f"{draw(st.integers(0, 999))}.{draw(st.integers(0, 10**8 - 1)):08d}"
        maker = draw(st.sampled_from(list(BOOLS))).decode()
        best = draw(st.sampled_from(list(BOOLS))).decode()
        time = str(start + draw(st.integers(0, 86_400_000)))
        if kind is ArchiveKind.TRADES:
            cells = [str(first_id + i), price, qty, "1.0", time, maker, best]
        else:
            f = first_id * 3 + i * 3
            cells = [str(first_id + i), price, qty, str(f), str(f + 2), time, maker, best]
        rows.append([c.encode() for c in cells])
    return rows


@st.composite
def archive_texts(draw: st.DrawFn) -> tuple[ArchiveKind, bytes]:
    """A trades or aggTrades CSV: valid rows with zero to four mutations."""
    kind = draw(st.sampled_from(list(ArchiveKind)))
    lines = draw(good_lines(kind))
    header = draw(st.sampled_from([None, None, ",".join(kind.columns), "id,price,qty,x,y,z,w"]))
    ends = [b"\n"] * len(lines)
    if draw(st.booleans()) and draw(st.booleans()):
        ends = [b"\r\n"] * len(lines)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 4]))):
        what = draw(st.sampled_from(["cell", "cell", "cell", "cell", "drop", "add", "blank", "dup",
                                     "end", "kline"]))  # fmt: skip
        if not lines and what != "blank":
            continue
        r = draw(st.integers(0, max(len(lines) - 1, 0)))
        if what == "cell":
            lines[r][draw(st.integers(0, len(lines[r]) - 1))] = draw(CELLS)
        elif what == "drop" and lines[r]:
            del lines[r][draw(st.integers(0, len(lines[r]) - 1))]
        elif what == "add":
            lines[r].insert(draw(st.integers(0, len(lines[r]))), draw(CELLS))
        elif what == "blank":
            blank = [draw(st.sampled_from([b"", b" ", b"\r", b"\t"]))]
            lines.insert(r, blank)
            ends.insert(r, b"\n")
        elif what == "dup":
            lines.insert(r, list(lines[r]))
            ends.insert(r, ends[r])
        elif what == "end":
            ends[r] = draw(st.sampled_from([b"\r", b"\r\r\n", b"\n\n", b"\n\r\n"]))
        else:
            lines[r] = KLINE_ROW.split(b",")
    text = b"".join(b",".join(cells) + end for cells, end in zip(lines, ends, strict=True))
    if header is not None:
        text = header.encode() + b"\n" + text
    if text and draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text) - 1))]  # cut anywhere
    return kind, text


KLINE_ROW = zipfile.ZipFile(KLINES).read("BTCUSDT-1m-2020-01-01.csv").splitlines()[0]


def write(directory: Path, kind: ArchiveKind, text: bytes, zipped: bool) -> tuple[Path, str]:
    """The archive file and the name its messages must carry."""
    name = f"{SYMBOL}-{kind.value}-{DATE}"
    for old in directory.glob(f"{name}.*"):
        old.unlink()
    if zipped:
        path = directory / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{name}.csv", text)
        return path, f"{path}!{name}.csv"
    path = directory / f"{name}.csv"
    path.write_bytes(text)
    return path, str(path)


def check_import(path: Path, source: str, expected: list[dict[str, Any]] | Bad) -> None:
    """``read_archive`` gives exactly ``expected``: the rows, or an error at that line."""
    error = raised(lambda: read_archive(path, ingestion_us=0))
    if isinstance(error, BaseException):
        message = str(error)
        assert isinstance(error, ArchiveError) and isinstance(error, TerminalError), error
        assert isinstance(expected, Bad), f"good archive refused: {message}"
        assert message.startswith(f"{source}: "), message
        assert re.search(rf"\bline {expected.line}\b", message), (expected, message)
        assert expected.words in message, (expected, message)
        if expected.columns is not None and expected.words == "column":
            assert any(f"column {c!r}" in message for c in expected.columns), (expected, message)
        return
    assert not isinstance(expected, Bad), f"bad archive imported: {expected}"
    assert error.trades.to_pylist() == expected


def raised(call: Callable[[], T]) -> T | BaseException:
    """``call()``'s result, or the exception it raised (any kind: the test judges it)."""
    try:
        return call()
    except BaseException as exc:
        return exc


# -- the tests -------------------------------------------------------------------------------


#: CSVs that slipped through or failed the wrong way before the fuzzing fixes.
FOUND: list[tuple[ArchiveKind, bytes]] = [
    # Arrow's CSV decimal reader segfaults on this exponent.
    (ArchiveKind.TRADES, b"1,1E-10000000,1,1,1704067200000,true,true\n"),
    # ... and let values past decimal(18, 8)'s precision through.
    (ArchiveKind.TRADES, b"1,99999999999,0.00000001,1,1704067200000,true,true\n"),
    # Hex ids were read as numbers (0xFFFFFFFFFFFFFFFF as -1).
    (ArchiveKind.TRADES, b"0xFFFFFFFFFFFFFFFF,1,1,1,1704067200000,true,true\n"),
    # A first data line with a damaged id was taken for a header and skipped.
    (ArchiveKind.TRADES, b"x1,1,1,1,1704067200000,true,true\n2,1,1,1,1704067200000,true,true\n"),
    # Ragged lines were reported without their line number.
    (ArchiveKind.TRADES, b"1,1,1,1,1704067200000,true,true\n2,1,1\n"),
    # A time past year 9999 (or negative) was imported, and broke the lake's day maths.
    (ArchiveKind.TRADES, b"1,1,1,1,9223372036854775807,true,true\n"),
    (ArchiveKind.AGG_TRADES, b"1,1,1,1,1,-5,true,true\n"),
    # A blank line before a bad one shifted the reported line number.
    (ArchiveKind.TRADES, b"1,1,1,1,1704067200000,true,true\n\n3,1,1,1,1704067200000,maybe,true\n"),
    # A quoted field swallowed the next line.
    (ArchiveKind.TRADES, b'1,"1,1,1,1704067200000,true,true\n2,1,1,1,1704067200000,true,true\n'),
    # price × quantity past decimal(18, 8) was reported without a line.
    (ArchiveKind.TRADES, b"1,9999999999,9999999999,1,1704067200000,true,true\n"),
    # A lone carriage return splits a line for Arrow but not for a reader counting \n.
    (ArchiveKind.TRADES, b"1,1,1,1,1704067200000,true,true\r2,1,1,1,1704067200000,true,true\n"),
]


@pytest.mark.parametrize("budget", BUDGETS)
def test_csv_imports_exactly_or_names_file_line_and_column(
    budget: settings, tmp_path: Path
) -> None:
    def fuzz(case: tuple[ArchiveKind, bytes], zipped: bool, chunk: int) -> None:
        kind, text = case
        path, source = write(tmp_path, kind, text, zipped)
        # Pieces are parsed apart: a cut mid-file must not change rows or line numbers.
        with mock.patch.object(archives, "_CSV_CHUNK", chunk):
            check_import(path, source, oracle(text, kind))

    test = given(case=archive_texts(), zipped=st.booleans(), chunk=st.sampled_from([1 << 24, 61]))(
        fuzz
    )
    for case in FOUND:
        test = example(case=case, zipped=False, chunk=1 << 24)(test)
    settings(budget, max_examples=budget.max_examples * 5 // 2)(test)()


@pytest.mark.parametrize("budget", BUDGETS)
def test_damaged_zip_fails_cleanly(budget: settings, tmp_path: Path) -> None:
    kind = ArchiveKind.TRADES
    rows = b"".join(
        f"{i},42000.{i:02d},0.5,1,{MS_2024 + i},true,true\n".encode() for i in range(60)
    )
    path, _ = write(tmp_path, kind, rows, zipped=True)
    original = path.read_bytes()
    expected = oracle(rows, kind)

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        blob = bytearray(original)
        how = draw(st.sampled_from(["flip", "flip", "cut", "zero", "splice", "kline"]))
        if how == "flip":
            for _ in range(draw(st.integers(1, 4))):
                blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
        elif how == "cut":
            del blob[draw(st.integers(0, len(blob) - 1)) :]
        elif how == "zero":
            at = draw(st.integers(0, len(blob) - 1))
            end = at + draw(st.integers(1, 64))
            blob[at:end] = bytes(len(blob[at:end]))
        elif how == "splice":
            at = draw(st.integers(0, len(blob)))
            blob[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            blob = bytearray(KLINES.read_bytes())
        return bytes(blob)

    nameless = io.BytesIO()  # a member whose name was damaged to "": IndexError escaped
    with zipfile.ZipFile(nameless, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), rows)

    @given(blob=damaged())
    @example(blob=original[: len(original) // 2])  # cut: EOFError escaped before
    @example(blob=nameless.getvalue())
    @budget
    def fuzz(blob: bytes) -> None:
        path.write_bytes(blob)
        archive = raised(lambda: read_archive(path, ingestion_us=0))
        if isinstance(archive, BaseException):
            assert isinstance(archive, ArchiveError), repr(archive)
            assert str(archive).startswith(str(path)), archive
        else:  # anything that still reads passed zip's CRC check: the very same rows
            assert archive.trades.to_pylist() == expected

    fuzz()


@pytest.mark.parametrize("budget", BUDGETS)
def test_checksum_is_matched_exactly(budget: settings, tmp_path: Path) -> None:
    rows = f"1,42000,0.5,1,{MS_2024},true,true\n".encode()
    path, _ = write(tmp_path, ArchiveKind.TRADES, rows, zipped=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = path.with_name(path.name + ".CHECKSUM")
    other = ("1" if digest[0] != "1" else "2") + digest[1:]
    texts = st.one_of(
        st.builds(
            "{}{}{}{}".format,
            st.sampled_from([digest, digest.upper(), other, digest[:-1], "", "zz" * 32]),
            st.sampled_from(["  ", " ", "\t", ""]),
            st.sampled_from([path.name, "", "BTCUSDT-trades-2024-01-01.zip", path.name + "x"]),
            st.sampled_from(["\n", "", "\r\n", "\n\n"]),
        ),
        st.text(max_size=80),
    )

    @given(text=texts)
    @budget
    def fuzz(text: str) -> None:
        sidecar.write_text(text, encoding="utf-8")
        fields = sidecar.read_bytes().decode("ascii", errors="replace").split()  # ASCII format
        good = (
            len(fields) >= 1
            and fields[0].lower() == digest
            and (len(fields) == 1 or fields[1] == path.name)
        )
        verified = raised(lambda: verify_checksum(path))
        if isinstance(verified, BaseException):
            assert isinstance(verified, ArchiveError) and not good, repr(verified)
            assert path.name in str(verified), verified
            with pytest.raises(ArchiveError):
                read_archive(path, ingestion_us=0)
        else:
            assert good and verified is True
            assert read_archive(path, ingestion_us=0).checksum_verified

    fuzz()


@pytest.mark.parametrize(
    "budget",
    [
        pytest.param(settings(FAST, max_examples=8), id="fast"),
        pytest.param(settings(FAST, max_examples=150), id="slow", marks=pytest.mark.slow),
    ],
)
def test_failing_archive_leaves_the_lake_unchanged(budget: settings, tmp_path: Path) -> None:
    table = ensure_tables(catalog_from(LakeSettings(), tmp_path / "lake"))["trades"]
    inbox = tmp_path / "inbox"
    inbox.mkdir()

    @given(case=archive_texts())
    @example(case=FOUND[1])
    @budget
    def fuzz(case: tuple[ArchiveKind, bytes]) -> None:
        kind, text = case
        path, source = write(inbox, kind, text, zipped=True)
        expected = oracle(text, kind)
        table.refresh()
        before = table.current_snapshot()
        report = raised(lambda: backfill(table, [path], workers=1))
        if isinstance(report, BaseException):
            assert isinstance(report, ArchiveError) and isinstance(expected, Bad), repr(report)
            assert str(report).startswith(source)
            table.refresh()
            assert table.current_snapshot() == before  # nothing committed
            return
        assert not isinstance(expected, Bad), f"bad archive imported: {expected}"
        assert report.rows_read == len(expected)
        table.refresh()
        ids = {r["message_id"] for r in expected}
        stored = table.scan(row_filter=f"symbol == '{SYMBOL}'").to_arrow()["message_id"]
        assert ids <= set(stored.to_pylist())
        snap = table.current_snapshot()
        if report.rows_added:
            assert snap is not None and snap.summary is not None
            assert snap.summary[PROP_ARCHIVE] == path.name

    fuzz()


def test_bad_zip_member_lists_are_refused(tmp_path: Path) -> None:
    """Zero members, two members, or a member that is not a CSV: named in the error."""
    path = tmp_path / f"{SYMBOL}-trades-{DATE}.zip"
    for members in ([], ["a.csv", "b.csv"], ["a.txt"], ["dir/"]):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for m in members:
                zf.writestr(m, "" if m.endswith("/") else "1,1,1,1,1,true,true\n")
        path.write_bytes(buf.getvalue())
        with pytest.raises(ArchiveError, match=r"expected one CSV inside"):
            read_archive(path, ingestion_us=0)
