"""Read data.binance.vision archives into canonical trade batches (pure, vectorised).

Two archive kinds are understood, both spot, both Binance's documented layout:

- ``<SYMBOL>-trades-<date>.zip|csv``: ``id,price,qty,quote_qty,time,is_buyer_maker,
  is_best_match``; one row per exchange trade. ``message_id`` is ``binance:SYMBOL:id``,
  exactly what the live stream produces for the same trade, so an archive that overlaps
  captured data carries the same ids and the loader can drop the overlap.
- ``<SYMBOL>-aggTrades-<date>.zip|csv``: ``agg_id,price,qty,first_id,last_id,time,
  is_buyer_maker,is_best_match``; one row per *aggregate* (consecutive fills of one
  taker order at one price). Aggregate ids are a different id space from trade ids, so
  they get their own namespace: ``message_id`` is ``binance:SYMBOL:agg:<agg_id>`` and
  ``trade_id``/``source_sequence`` hold the aggregate id. The raw trade ids the
  aggregate covers go to ``vendor_data`` as ``{"agg":true,"f":first,"l":last,"M":..}``.
  An aggregate never collides with a raw trade, but loading both kinds for the same
  symbol and day counts the volume twice: pick one kind per symbol and day.

Files are headerless, unquoted CSV; a first line holding no number and no boolean is
a header and is skipped; empty lines are skipped. A zip holds exactly one CSV. Times are
milliseconds before 2025-01-01 and microseconds from then on; each value is classified
by magnitude (below 10**14 is ms), so a file straddling the switch still reads right.
Output times are UTC microseconds; a time must be at or after 1970 and before 9999.

Columns are parsed by ``pyarrow.csv`` to ``int64``/``bool``, and price and qty to text
that is screened and cast to ``decimal(18, 8)`` (no per-row Python). Any value that does
not fit fails the whole archive with an :class:`ArchiveError` naming the file, the first
bad line and the column: an archive is Binance's published record, so a bad line means
a wrong or damaged file, not one bad trade. What a good line is: :func:`_line_problem`.
"""

from __future__ import annotations

import enum
import hashlib
import io
import lzma
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

try:  # ISA-L inflates ~2.7x faster than zlib; zipfile's own path is the fallback.
    from isal import isal_zlib as _inflater
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflater = None  # type: ignore[assignment]

from k2.errors import TerminalError
from k2.records import DECIMAL_PRECISION, DECIMAL_SCALE, TRADE
from k2.sources.binance.parse import ASSET_CLASS, EXCHANGE, quote_asset_of
from k2.sources.binance.wire import TIME_LIMIT_US

_DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_TS = pa.timestamp("us", tz="UTC")
#: Below this a timestamp is milliseconds (10**14 ms is the year 5138; µs is 1973).
_MS_LIMIT = 10**14
_CHUNK = 1 << 24  # hashing block
#: CSV bytes parsed per piece (~250k trades): pieces are parsed while the next inflates.
_CSV_CHUNK = 1 << 24
_PARSE_THREADS = 2
#: A zip local file header: signature, 22 bytes of fields, then name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
#: Deflated bytes inflated per step (~15 MB of CSV out), so parsing starts early.
_DEFLATE_STEP = 3 << 20

_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<kind>trades|aggTrades)-(?P<date>\d{4}-\d{2}(?:-\d{2})?)"
    r"\.(?P<ext>zip|csv)$"
)
_ANY_VISION_NAME = re.compile(r"^(?P<symbol>[A-Z0-9]+)-(?P<kind>[A-Za-z0-9]+)-\d{4}-\d{2}")


class ArchiveError(TerminalError):
    """An archive that cannot be imported: wrong kind, bad line, checksum mismatch."""


class ArchiveKind(enum.Enum):
    """The archive layouts K2 imports."""

    TRADES = "trades"
    AGG_TRADES = "aggTrades"

    @property
    def columns(self) -> tuple[str, ...]:
        """Binance's documented column order for this kind."""
        return _COLUMNS[self]


_COLUMNS: dict[ArchiveKind, tuple[str, ...]] = {
    ArchiveKind.TRADES: (
        "id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match",
    ),
    ArchiveKind.AGG_TRADES: (
        "agg_id", "price", "qty", "first_id", "last_id", "time", "is_buyer_maker",
        "is_best_match",
    ),
}  # fmt: skip

_TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(),
    "agg_id": pa.int64(),
    "first_id": pa.int64(),
    "last_id": pa.int64(),
    "time": pa.int64(),
    "price": _DECIMAL,
    "qty": _DECIMAL,
    "quote_qty": pa.string(),  # recomputed canonically; kept only to check the shape
    "is_buyer_maker": pa.bool_(),
    "is_best_match": pa.bool_(),
}

#: price and qty are read as text and checked before Arrow casts them: Arrow's own
#: decimal reader crashes on some exponents (1E-10000000) and lets values past the
#: 18-digit precision through.
_DECIMAL_COLUMNS = ("price", "qty")
_DECIMAL_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")
_MAX_DECIMAL_TEXT = 20  # "-9999999999.99999999"
_INT_TEXT = re.compile(r"^-?[0-9]+$")
_TRUE = ["true", "True", "TRUE"]
_FALSE = ["false", "False", "FALSE"]
#: A header is a first line with none of these (a number or a boolean) in it.
_VALUE = re.compile(rb"[-+]?[0-9.]*[0-9][0-9.]*|true|false", re.IGNORECASE)
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)
_DECIMAL_LIMIT = Decimal(10) ** (DECIMAL_PRECISION - DECIMAL_SCALE)
#: Binance archives are never quoted: a quote character is data (and then an error).
_PARSE = pacsv.ParseOptions(quote_char=False)
_CONVERT = pacsv.ConvertOptions(
    column_types={c: pa.string() if c in _DECIMAL_COLUMNS else t for c, t in _TYPES.items()},
    true_values=_TRUE,
    false_values=_FALSE,
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)

_EXPECTED = (
    "a Binance spot trades archive (<SYMBOL>-trades-<date>.zip|csv: "
    "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match) or aggTrades archive "
    "(<SYMBOL>-aggTrades-<date>.zip|csv: agg_id,price,qty,first_id,last_id,time,"
    "is_buyer_maker,is_best_match)"
)


@dataclass(frozen=True)
class ArchiveName:
    """What an archive's file name says: symbol (upper case), kind and date text."""

    symbol: str
    kind: ArchiveKind
    date: str


@dataclass(frozen=True)
class Archive:
    """One archive read into canonical trades.

    ``trades`` has :data:`k2.records.TRADE`'s schema, ordered by ``timestamp`` then
    ``trade_id``; ``sha256`` is the hex digest of the file as stored; ``checksum_verified``
    says whether a ``.CHECKSUM`` file was found beside it and matched.
    """

    path: Path
    name: ArchiveName
    trades: pa.Table
    sha256: str
    checksum_verified: bool

    @property
    def min_id(self) -> int:
        """Smallest ``trade_id`` in the archive (aggregate id for aggTrades)."""
        return int(pc.min(self.trades["trade_id"]).as_py())

    @property
    def max_id(self) -> int:
        """Largest ``trade_id`` in the archive (aggregate id for aggTrades)."""
        return int(pc.max(self.trades["trade_id"]).as_py())


def parse_name(path: str | Path) -> ArchiveName:
    """Symbol, kind and date from a data.binance.vision file name.

    Raises :class:`ArchiveError` naming the file and the expected format for anything
    else (klines, book tickers, futures metrics, an unrelated file).
    """
    name = Path(path).name
    m = _NAME.match(name)
    if m is None:
        other = _ANY_VISION_NAME.match(name)
        what = f" (a {other['kind']!r} archive)" if other else ""
        raise ArchiveError(f"{path}: not a trades archive{what}; expected {_EXPECTED}")
    return ArchiveName(m["symbol"], ArchiveKind(m["kind"]), m["date"])


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, sha256: str | None = None) -> bool:
    """Check ``path`` against ``<path>.CHECKSUM`` (``<sha256>  <name>``) when it exists.

    Returns ``True`` when the checksum file exists and matches, ``False`` when there is
    none. Raises :class:`ArchiveError` on a mismatch or an unreadable checksum file.
    ``sha256`` may pass an already computed digest of ``path``.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".CHECKSUM")
    if not sidecar.exists():
        return False
    text = sidecar.read_text(encoding="ascii", errors="replace").split()
    if not text or not re.fullmatch(r"[0-9a-fA-F]{64}", text[0]):
        raise ArchiveError(f"{sidecar}: expected '<sha256>  <file name>'")
    if len(text) > 1 and text[1] != path.name:
        raise ArchiveError(f"{sidecar}: names {text[1]!r}, not {path.name!r}")
    actual = sha256 or file_sha256(path)
    if actual.lower() != text[0].lower():
        raise ArchiveError(f"{path}: sha256 {actual} does not match {sidecar.name} ({text[0]})")
    return True


def read_archive(
    path: str | Path,
    *,
    ingestion_us: int,
    quote_assets: Mapping[str, str] | None = None,
    verify: bool = True,
) -> Archive:
    """Read one trades or aggTrades archive (zip or bare CSV) into canonical trades.

    ``ingestion_us`` (UTC µs) becomes every row's ``ingestion_timestamp``; ``event_time``
    is the trade time (archives carry no event time). With ``verify`` a ``.CHECKSUM``
    beside the file is checked first. Raises :class:`ArchiveError` naming the file (and
    the line and column for a bad value) when the archive is not importable.
    """
    path = Path(path)
    name = parse_name(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read: {exc}") from exc
    sha = hashlib.sha256(blob).hexdigest()
    verified = verify_checksum(path, sha) if verify else False
    source = str(path)

    def convert(chunk: bytes, first_line: int, member: str) -> pa.Table:
        raw = parse_csv(chunk, name.kind, source=f"{source}{member}", first_line=first_line)
        return to_trades(raw, name, ingestion_us=ingestion_us, quote_assets=quote_assets)

    # Inflate in this thread while earlier chunks are parsed and converted in others:
    # zlib, the CSV reader and the Arrow kernels all release the GIL.
    with ThreadPoolExecutor(max_workers=_PARSE_THREADS, thread_name_prefix="k2-csv") as pool:
        parts = [
            pool.submit(convert, chunk, line, member)
            for chunk, line, member in _csv_chunks(path, blob)
        ]
        tables = [f.result() for f in parts]
    if not tables:
        tables = [convert(b"", 1, "")]
    trades = sort_by_time(pa.concat_tables(tables).combine_chunks())
    return Archive(path, name, trades, sha, verified)


def parse_csv(data: bytes, kind: ArchiveKind, *, source: str, first_line: int = 1) -> pa.Table:
    """The archive's own columns (Binance names, typed) from CSV bytes.

    ``first_line`` is the file line ``data`` starts at (for a piece of a larger file);
    only the piece starting at line 1 may open with a header, which is a line holding no
    number and no boolean. Empty lines are skipped. Raises :class:`ArchiveError` naming
    ``source``, the first bad line (1-based, counting a header) and its column when a
    value does not parse, or when a line's column count is not the one ``kind`` has
    (e.g. a kline file). See :func:`_line_problem` for what a good line is.
    """
    columns = kind.columns
    start, line = _skip_empty_lines(data, 0, first_line)
    if start == len(data):
        return _empty(columns)
    end = data.find(b"\n", start)
    head = data[start:] if end < 0 else data[start:end].removesuffix(b"\r")
    fields = head.split(b",")
    if b"\r" in head or len(fields) != len(columns):
        raise ArchiveError(
            f"{source}: line {line}{_line_problem(head, kind)}; expected {_EXPECTED}"
        )
    if first_line == 1 and not any(_VALUE.fullmatch(field.strip()) for field in fields):
        if end < 0:
            return _empty(columns)
        start, line = _skip_empty_lines(data, end + 1, line + 1)  # past a header
        if start == len(data):
            return _empty(columns)
    if data.find(b"\r", start) >= 0 and data.count(b"\r", start) != data.count(b"\r\n", start):
        # A lone \r ends a line for Arrow but not for anyone counting lines by \n.
        raise ArchiveError(_bad_line(data[start:], kind, source, line))
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data)[start:]),
            read_options=pacsv.ReadOptions(column_names=list(columns)),
            parse_options=_PARSE,
            convert_options=_CONVERT,
        )
    except pa.ArrowInvalid as exc:
        raise ArchiveError(_bad_line(data[start:], kind, source, line, exc)) from None
    plain = _plain_decimals(table)
    if (
        not plain
        or any(table[c].null_count for c in columns)
        # pyarrow reads " 5" and "0x10" as ints; Binance never writes either.
        or any(data.find(b, start) >= 0 for b in (b"x", b"X", b" ", b"\t"))
    ):
        problem = _first_bad_line(data[start:], kind, line)
        if problem or not plain:  # never cast text that is not plain: see _plain_decimals
            raise ArchiveError(f"{source}: {problem or 'unreadable decimal text'}")
    try:
        for c in _DECIMAL_COLUMNS:
            table = table.set_column(columns.index(c), c, table[c].cast(_DECIMAL))
    except pa.ArrowInvalid as exc:
        raise ArchiveError(_bad_line(data[start:], kind, source, line, exc)) from None
    if not _in_range(table):
        raise ArchiveError(_bad_line(data[start:], kind, source, line))
    return table


def to_trades(
    raw: pa.Table,
    name: ArchiveName,
    *,
    ingestion_us: int,
    quote_assets: Mapping[str, str] | None = None,
) -> pa.Table:
    """Canonical trades (``TRADE`` schema) from :func:`parse_csv` output, time-ordered.

    Follows the live parser's conventions (:func:`k2.sources.binance.parse.build_trades`):
    side is the aggressor's (``SELL`` when the buyer was maker), ``quote_quantity`` is
    price × quantity rounded half-even to 8 places, ``currency`` the quote asset.
    """
    n = raw.num_rows
    symbol = name.symbol
    agg = name.kind is ArchiveKind.AGG_TRADES
    ids = raw["agg_id" if agg else "id"].combine_chunks()
    prefix = f"{EXCHANGE}:{symbol}:agg:" if agg else f"{EXCHANGE}:{symbol}:"
    message_ids = pc.binary_join_element_wise(prefix, pc.cast(ids, pa.string()), "")
    price = raw["price"].combine_chunks()
    qty = raw["qty"].combine_chunks()
    notional = _notional(price, qty)
    if notional is None:
        raise ArchiveError(
            f"archive {symbol}-{name.kind.value}-{name.date}: price × quantity does not fit "
            f"decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
        )
    times = raw["time"].combine_chunks()
    ts = pc.if_else(pc.less(times, _MS_LIMIT), pc.multiply(times, 1000), times).cast(_TS)
    maker = raw["is_buyer_maker"].combine_chunks()
    best = raw["is_best_match"].combine_chunks()
    best_json = _pick(best, "false", "true")
    if agg:
        vendor = pc.binary_join_element_wise(
            '{"agg":true,"f":',
            pc.cast(raw["first_id"].combine_chunks(), pa.string()),
            ',"l":',
            pc.cast(raw["last_id"].combine_chunks(), pa.string()),
            ',"M":',
            best_json,
            "}",
            "",
        )
    else:
        vendor = _pick(best, '{"M":false}', '{"M":true}')
    trades = pa.Table.from_arrays(
        [
            message_ids,
            ids,
            pa.repeat(EXCHANGE, n),
            pa.repeat(symbol, n).cast(pa.string()),
            pa.repeat(ASSET_CLASS, n),
            ts,
            ts,
            price,
            qty,
            notional,
            pa.repeat(quote_asset_of(symbol, quote_assets), n).cast(pa.string()),
            _pick(maker, "BUY", "SELL"),
            maker,
            ids,
            pa.repeat(pa.scalar(ingestion_us, pa.int64()).cast(_TS), n),
            vendor,
        ],
        schema=TRADE.arrow_schema(),
    )
    return sort_by_time(trades)


def _notional(price: pa.Array, qty: pa.Array) -> pa.Array | None:
    """price × qty rounded half-even to 8 places as decimal(18, 8); ``None`` if it does
    not fit. Most products already have at most 8 places (a 0.01 tick times a 0.00001
    step): the exact cast succeeds and the rounding pass is skipped."""
    product = pc.multiply(price, qty)
    try:
        return product.cast(_DECIMAL)  # safe: fails if a digit would be dropped
    except pa.ArrowInvalid:
        pass
    rounded = pc.round(product, ndigits=DECIMAL_SCALE, round_mode="half_to_even")
    try:
        return rounded.cast(_DECIMAL)
    except pa.ArrowInvalid:
        return None


def _pick(flags: pa.Array, if_false: str, if_true: str) -> pa.Array:
    """One of two strings per boolean, without building a string per row when all agree."""
    if flags.null_count == 0 and len(flags):
        if pc.all(flags).as_py():
            return pa.repeat(if_true, len(flags)).cast(pa.string())
        if not pc.any(flags).as_py():
            return pa.repeat(if_false, len(flags)).cast(pa.string())
    return pa.array([if_false, if_true], pa.string()).take(flags.cast(pa.int8()))


def sort_by_time(trades: pa.Table) -> pa.Table:
    """``trades`` ordered by ``timestamp`` then ``trade_id`` (a no-op when already so)."""
    if trades.num_rows < 2:
        return trades
    ts = trades["timestamp"].combine_chunks().cast(pa.int64())
    ids = trades["trade_id"].combine_chunks()
    ts_prev, ts_next = ts.slice(0, len(ts) - 1), ts.slice(1)
    ordered = pc.or_(
        pc.less(ts_prev, ts_next),
        pc.and_(pc.equal(ts_prev, ts_next), pc.less_equal(ids.slice(0, len(ids) - 1), ids[1:])),
    )
    if pc.all(ordered).as_py():
        return trades
    return trades.sort_by([("timestamp", "ascending"), ("trade_id", "ascending")])


#: What zipfile raises on damaged bytes besides BadZipFile: a bad deflate stream
#: (zlib.error), a cut one (EOFError), a garbled offset (ValueError: negative seek), an
#: unknown method or version (NotImplementedError), a flipped "encrypted" flag
#: (RuntimeError), a bad bzip2/lzma stream (OSError, LZMAError).
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    OSError,
    struct.error,
)
if _inflater is not None:
    # A bad deflate stream as ISA-L reports it (its stubs call the class an instance).
    _ZIP_ERRORS += (cast("type[BaseException]", _inflater.error),)


def _csv_chunks(path: Path, blob: bytes) -> Iterator[tuple[bytes, int, str]]:
    """The CSV text of an archive in pieces of whole lines: (bytes, first line, member).

    A zip is inflated progressively, so a caller can parse one piece while the next is
    being inflated. Raises :class:`ArchiveError` for a zip that is not one CSV or whose
    bytes are damaged (bad deflate stream, CRC-32 or size mismatch).
    """
    if path.suffix.lower() != ".zip":
        yield from _split_lines(_blocks(io.BytesIO(blob)), "")
        return
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            # Not ZipInfo.is_dir(): it raises IndexError on an empty (damaged) name.
            members = [m for m in zf.infolist() if not m.filename.endswith("/")]
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                listed = ", ".join(m.filename or "(no name)" for m in members) or "nothing"
                raise ArchiveError(f"{path}: expected one CSV inside, found {listed}")
            info, member = members[0], f"!{members[0].filename}"
            if _inflater is not None and info.compress_type == zipfile.ZIP_DEFLATED:
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"{path}: the CSV inside is encrypted")
                yield from _split_lines(_inflate(blob, info), member)
            else:  # stored, bzip2, lzma (or no ISA-L): zipfile reads and checks it
                with zf.open(info) as stream:
                    yield from _split_lines(_blocks(stream), member)
    except _ZIP_ERRORS as exc:
        raise ArchiveError(f"{path}: not a valid zip file: {exc or type(exc).__name__}") from None


def _blocks(stream: IO[bytes]) -> Iterator[bytes]:
    while block := stream.read(_CSV_CHUNK):
        yield block


def _inflate(blob: bytes, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The deflated member ``info`` of the zip in ``blob``, inflated by ISA-L in steps,
    checked against the CRC-32 and size the zip's directory records (as zipfile does)."""
    assert _inflater is not None
    at = info.header_offset
    header = blob[at : at + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size:
        raise zipfile.BadZipFile(f"no local file header for {info.filename!r}")
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local file header for {info.filename!r}")
    start = at + _LOCAL_HEADER.size + name_len + extra_len
    deflated = memoryview(blob)[start : start + info.compress_size]
    inflater = _inflater.decompressobj(-15)
    crc, size = 0, 0
    for i in range(0, len(deflated), _DEFLATE_STEP):
        block = inflater.decompress(deflated[i : i + _DEFLATE_STEP])
        crc, size = _inflater.crc32(block, crc), size + len(block)
        if size > info.file_size:
            break
        yield block
    tail = inflater.flush()
    crc, size = _inflater.crc32(tail, crc), size + len(tail)
    if not inflater.eof or size != info.file_size:
        raise zipfile.BadZipFile(
            f"{info.filename!r} inflates to {size:,} bytes, the zip says {info.file_size:,}"
            + ("" if inflater.eof else " (the deflate stream is cut short)")
        )
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    if tail:
        yield tail


def _split_lines(blocks: Iterator[bytes], member: str) -> Iterator[tuple[bytes, int, str]]:
    carry = b""
    line = 1
    for block in blocks:
        block = carry + block if carry else block
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: keep reading
            carry = block
            continue
        piece, carry = block[:cut], block[cut:]
        yield piece, line, member
        line += piece.count(b"\n")
    if carry:
        yield carry, line, member


def _skip_empty_lines(data: bytes, start: int, line: int) -> tuple[int, int]:
    """The offset and line number of the first non-empty line at or after ``start``."""
    while True:
        if data.startswith(b"\n", start):
            start += 1
        elif data.startswith(b"\r\n", start):
            start += 2
        else:
            return start, line
        line += 1


def _empty(columns: tuple[str, ...]) -> pa.Table:
    return pa.table({c: pa.array([], _TYPES[c]) for c in columns})


def _plain_decimals(table: pa.Table) -> bool:
    """Whether the price and qty texts are safe to hand to Arrow's decimal cast: only
    ``0-9 . -`` and at most 20 characters each (checked on the raw buffers, cheaply).

    Arrow's decimal parsing crashes the process on some exponents (``1E-10000000``)
    and silently drops digits past 38 (``0.<100 zeros>1`` becomes 0); the cast itself
    rejects every other malformed text, too many decimals and too large a value.
    """
    for c in _DECIMAL_COLUMNS:
        for chunk in table[c].chunks:
            data = chunk.buffers()[2]
            if data is not None and data.to_pybytes().translate(None, b"0123456789.-"):
                return False
        longest = pc.max(pc.binary_length(table[c])).as_py()
        if longest is not None and longest > _MAX_DECIMAL_TEXT:
            return False
    return True


def _in_range(table: pa.Table) -> bool:
    """Vectorised: times in range, price × qty within decimal(18, 8)."""
    if table.num_rows == 0:
        return True
    times = pc.min_max(table["time"]).as_py()
    if times["min"] < 0 or times["max"] >= TIME_LIMIT_US:
        return False
    price, qty = (table[c] for c in _DECIMAL_COLUMNS)
    bounds = [pc.min_max(col).as_py() for col in (price, qty)]
    largest = [max(abs(b["min"]), abs(b["max"])) for b in bounds]
    if largest[0] * largest[1] < _DECIMAL_LIMIT - _QUANTUM:
        return True  # rounding cannot reach the limit either
    notional = pc.round(pc.multiply(price, qty), ndigits=DECIMAL_SCALE, round_mode="half_to_even")
    limit = pa.scalar(_DECIMAL_LIMIT, notional.type)
    return not pc.any(pc.greater_equal(pc.abs(notional), limit)).as_py()


def _bad_line(
    data: bytes, kind: ArchiveKind, source: str, line: int, exc: Exception | None = None
) -> str:
    """The error message for ``data``, which pyarrow (or a stray ``\\r``) refused."""
    problem = _first_bad_line(data, kind, line)
    if problem:
        return f"{source}: {problem}"
    return f"{source}: unreadable CSV: {exc}" if exc else f"{source}: unreadable CSV"


def _first_bad_line(data: bytes, kind: ArchiveKind, first_line: int) -> str | None:
    """``line N, column 'c': ...`` for the first bad line of ``data`` (header already
    dropped; ``data`` starts at ``first_line``), or ``None`` if every line is good.

    Error path only: this reads line by line in Python, mirroring what the vectorised
    path accepts, so the message points at the exact line and column.
    """
    pieces = data.split(b"\n")
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        text = piece[:-1] if i < last and piece.endswith(b"\r") else piece
        if text:  # pyarrow skips empty lines
            problem = _line_problem(text, kind)
            if problem:
                return f"line {first_line + i}{problem}"
    return None


def _line_problem(text: bytes, kind: ArchiveKind) -> str | None:
    """What is wrong with one CSV line (no line end), as the tail of a message.

    A good line has exactly ``kind``'s columns, separated by commas, no quoting:
    integers are ``-?[0-9]+`` and fit int64; ``time`` is ms or µs since 1970-01-01,
    before 9999-01-01; price and qty are plain decimals (``-?`` digits with one optional
    point, at most 20 characters) below 10^10 with at most 8 decimal places; booleans
    are true/false (any of three casings); ``quote_qty`` is any UTF-8 text (it is
    recomputed); price × qty, rounded half-even to 8 places, fits decimal(18, 8).
    """
    if b"\r" in text:
        return ": a carriage return (\\r) inside the line"
    columns = kind.columns
    cells = text.split(b",")
    if len(cells) != len(columns):
        return (
            f" has {len(cells)} columns, a {kind.value} archive has {len(columns)} "
            f"({','.join(columns)})"
        )
    for name, cell in zip(columns, cells, strict=True):
        problem = _cell_problem(name, cell)
        if problem:
            return f", column {name!r}: {_shown(cell)} {problem}"
    price, qty = (Decimal(cells[columns.index(c)].decode()) for c in _DECIMAL_COLUMNS)
    notional = (price * qty).quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
    if abs(notional) >= _DECIMAL_LIMIT:
        return (
            f", columns 'price' × 'qty': {price} × {qty} = {notional} does not fit "
            f"decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
        )
    return None


def _cell_problem(name: str, cell: bytes) -> str | None:
    try:
        text = cell.decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8"
    kind = _TYPES[name]
    if pa.types.is_integer(kind):
        if not _INT_TEXT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
            return f"is not a valid {kind}"
        if name == "time" and not 0 <= int(text) < TIME_LIMIT_US:
            return "is not a time in ms or µs since 1970-01-01 before 9999-01-01"
    elif pa.types.is_decimal(kind) and not _fits_decimal(text):
        return (
            f"is not a valid {kind} (a plain decimal of at most {_MAX_DECIMAL_TEXT} "
            f"characters, below 10^{DECIMAL_PRECISION - DECIMAL_SCALE}, at most "
            f"{DECIMAL_SCALE} decimal places)"
        )
    elif pa.types.is_boolean(kind) and text not in _TRUE + _FALSE:
        return f"is not a valid {kind} ({'/'.join(_TRUE + _FALSE)})"
    return None


def _fits_decimal(text: str) -> bool:
    if len(text) > _MAX_DECIMAL_TEXT or not _DECIMAL_TEXT.fullmatch(text):
        return False
    value = Decimal(text)
    return abs(value) < _DECIMAL_LIMIT and value == value.quantize(_QUANTUM)


def _shown(cell: bytes) -> str:
    text = cell.decode("utf-8", errors="replace")
    return repr(text if len(text) <= 40 else text[:40] + "…")
