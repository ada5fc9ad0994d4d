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

Files are headerless CSV; a header line (first field not a number) is accepted and
skipped. A zip holds exactly one CSV. Times are milliseconds before 2025-01-01 and
microseconds from then on; each value is classified by magnitude (below 10**14 is ms),
so a file straddling the switch still reads right. Output times are UTC microseconds.

Columns are parsed by ``pyarrow.csv`` straight to ``int64``/``decimal(18, 8)``/``bool``
(no per-row Python). Any value that does not fit fails the whole archive with an
:class:`ArchiveError` naming the file, the line and the column: an archive is Binance's
published record, so a bad line means a wrong or damaged file, not one bad trade.
"""

from __future__ import annotations

import enum
import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from k2.errors import TerminalError
from k2.records import DECIMAL_PRECISION, DECIMAL_SCALE, TRADE
from k2.sources.binance.parse import ASSET_CLASS, EXCHANGE, quote_asset_of

_DECIMAL = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_TS = pa.timestamp("us", tz="UTC")
#: Below this a timestamp is milliseconds (10**14 ms is the year 5138; µs is 1973).
_MS_LIMIT = 10**14
_CHUNK = 1 << 24  # hashing block
#: CSV bytes parsed per piece (~250k trades): pieces are parsed while the next inflates.
_CSV_CHUNK = 1 << 24
_PARSE_THREADS = 2

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

    A header line is skipped. ``first_line`` is the file line ``data`` starts at (for
    a chunk of a larger file). Raises :class:`ArchiveError` naming ``source``, the line
    (1-based, counting a header) and the column when a value does not parse, and when
    the column count is not the one ``kind`` has (e.g. a kline file).
    """
    columns = kind.columns
    head = data[: data.find(b"\n")] if b"\n" in data else data
    first = head.split(b",")
    if not data.strip():
        return pa.table({c: pa.array([], _TYPES[c]) for c in columns})
    has_header = not first[0].strip().lstrip(b"-").isdigit()
    if len(first) != len(columns):
        raise ArchiveError(
            f"{source}: line {first_line} has {len(first)} columns, a {kind.value} archive has "
            f"{len(columns)} ({','.join(columns)}); expected {_EXPECTED}"
        )
    read = pacsv.ReadOptions(column_names=list(columns), skip_rows=1 if has_header else 0)
    convert = pacsv.ConvertOptions(
        column_types={c: _TYPES[c] for c in columns},
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=read, convert_options=convert)
    except pa.ArrowInvalid as exc:
        where = _locate_error(data, columns, has_header, source, exc, first_line)
        raise ArchiveError(where) from None
    for c in columns:
        if table[c].null_count:
            raise ArchiveError(_locate_error(data, columns, has_header, source, None, first_line))
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
    notional = pc.round(pc.multiply(price, qty), ndigits=DECIMAL_SCALE, round_mode="half_to_even")
    try:
        notional = notional.cast(_DECIMAL)
    except pa.ArrowInvalid:
        raise ArchiveError(
            f"archive {symbol}-{name.kind.value}-{name.date}: price × quantity does not fit "
            f"decimal({DECIMAL_PRECISION}, {DECIMAL_SCALE})"
        ) from None
    times = raw["time"].combine_chunks()
    ts = pc.if_else(pc.less(times, _MS_LIMIT), pc.multiply(times, 1000), times).cast(_TS)
    maker = raw["is_buyer_maker"].combine_chunks()
    best = raw["is_best_match"].combine_chunks()
    best_json = pc.if_else(best, "true", "false")
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
        vendor = pc.binary_join_element_wise('{"M":', best_json, "}", "")
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
            pc.if_else(maker, "SELL", "BUY"),
            maker,
            ids,
            pa.repeat(pa.scalar(ingestion_us, pa.int64()).cast(_TS), n),
            vendor,
        ],
        schema=TRADE.arrow_schema(),
    )
    return sort_by_time(trades)


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


def _csv_chunks(path: Path, blob: bytes) -> Iterator[tuple[bytes, int, str]]:
    """The CSV text of an archive in pieces of whole lines: (bytes, first line, member).

    A zip is inflated progressively, so a caller can parse one piece while the next is
    being inflated. Raises :class:`ArchiveError` for a zip that is not one CSV.
    """
    if path.suffix.lower() != ".zip":
        yield from _split_lines(io.BytesIO(blob), "")
        return
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                listed = ", ".join(m.filename for m in members) or "nothing"
                raise ArchiveError(f"{path}: expected one CSV inside, found {listed}")
            with zf.open(members[0]) as stream:
                yield from _split_lines(stream, f"!{members[0].filename}")
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise ArchiveError(f"{path}: not a valid zip file: {exc}") from None


def _split_lines(stream: IO[bytes], member: str) -> Iterator[tuple[bytes, int, str]]:
    carry = b""
    line = 1
    while block := stream.read(_CSV_CHUNK):
        block = carry + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: keep reading
            carry = block
            continue
        piece, carry = block[:cut], block[cut:]
        yield piece, line, member
        line += piece.count(b"\n")
    if carry.strip():
        yield carry, line, member


_PATTERNS: dict[str, str] = {
    "int": r"^-?[0-9]+$",
    "decimal": r"^-?[0-9]{1,10}(\.[0-9]{0,8})?$",
    "bool": r"^(true|True|TRUE|false|False|FALSE)$",
}


def _pattern(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return _PATTERNS["int"]
    if pa.types.is_decimal(t):
        return _PATTERNS["decimal"]
    if pa.types.is_boolean(t):
        return _PATTERNS["bool"]
    return None


def _locate_error(
    data: bytes,
    columns: tuple[str, ...],
    has_header: bool,
    source: str,
    exc: Exception | None,
    first_line: int = 1,
) -> str:
    """Find the first bad line and column (error path only, still vectorised)."""
    read = pacsv.ReadOptions(
        column_names=list(columns),
        skip_rows=1 if has_header else 0,
        autogenerate_column_names=False,
    )
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()), strings_can_be_null=False
    )
    offset = first_line + (1 if has_header else 0)
    try:
        text = pacsv.read_csv(io.BytesIO(data), read_options=read, convert_options=convert)
    except pa.ArrowInvalid as inner:
        # Ragged rows: pyarrow names the row count it expected; say so with the file.
        return f"{source}: {inner}"
    for c in columns:
        pattern = _pattern(_TYPES[c])
        if pattern is None:
            continue
        col = text[c].combine_chunks()
        ok = pc.fill_null(pc.match_substring_regex(col, pattern), False)
        bad = pc.index(ok, False).as_py()
        if bad >= 0:
            return (
                f"{source}: line {bad + offset}, column {c!r}: {col[bad].as_py()!r} is not a "
                f"valid {_TYPES[c]}"
            )
    return f"{source}: {exc}" if exc else f"{source}: unreadable CSV"
