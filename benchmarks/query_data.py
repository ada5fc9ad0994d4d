"""The query benchmark's dataset: synthetic trades in a K2 lake and in ArcticDB (LMDB).

How the trades are generated (numpy, ``numpy.random.default_rng(seed)``, vectorised per
symbol and interval, straight to Arrow in the canonical ``TRADE`` schema):

- ``SYMBOLS``: 100 Binance-style USDT pairs. Activity is Zipf-like: symbol of rank
  ``k`` gets a share proportional to ``1 / k``, so BTCUSDT has ~19% of all trades and
  the last symbol ~0.2%.
- ``DAYS`` (30) UTC days from 2024-03-01. Each day gets ``trades / DAYS`` trades
  (remainder to the last day), dealt over symbols by a multinomial on the Zipf shares.
- Within a symbol-day, taker orders ("events") arrive uniformly at random (ms
  resolution, a Poisson process); an event fills 1 maker (p = 0.55) or 2–8 makers
  (uniform), all in the same millisecond with consecutive trade ids, the same side and
  prices stepping one tick in the aggressor's direction, so ~80% of trades share their
  millisecond with another.
- Price: a Brownian random walk on the symbol's tick grid, 3% standard deviation per
  day (the step between two events is normal with variance proportional to the time
  between them, rounded to whole ticks), carried from day to day. BTCUSDT starts at
  62,000 with a 0.01 tick, the others at fixed or log-uniform (0.01–300) prices with
  ``tick = 10^(floor(log10 price) - 6)`` (at least 1e-8): ~7 significant digits.
- Quantity: log-uniform between 1 and 200,000 lots of the symbol's step
  (``10^floor(log10(0.42 / price))``: 0.00001 for BTC), so most trades are small and
  a few are large, 30% of them rounded down to one significant digit (round sizes);
  ``quote_quantity`` is the exact product (no rounding is needed on these grids).
- Ids: ``trade_id`` contiguous per symbol from 1,000,000,000 (also
  ``source_sequence``), ``message_id`` ``binance:SYMBOL:trade_id``; ``side`` is the
  aggressor (SELL when the buyer is the maker, p = 0.5 per event); ``event_time`` is the
  trade time plus 0–4 ms, ``ingestion_timestamp`` the event time plus 2–60 ms;
  ``vendor_data`` ``{"M":true}`` as Binance's stream carries it.

Stored twice, built once and cached under ``K2_BENCH_DIR`` (default
``~/.cache/k2-bench``) in a directory keyed by size and seed:

- a K2 lake (embedded SQLite catalog, local warehouse): one commit per day of the
  day's trades sorted with :func:`k2.lake.tables.sort_for`, written as compaction
  writes them (:func:`k2.lake.writer.write_partitioned`: K2's encodings, zstd level
  9, the table's row groups of ≤ 16,384 rows), one Parquet file per
  ``day × symbol bucket`` partition: the layout of a compacted K2 lake;
- an ArcticDB library on LMDB, one ArcticDB symbol per market symbol, a DatetimeIndex
  on the trade time (ns, UTC), columns ``trade_id`` (int64), ``price``, ``quantity``,
  ``quote_quantity`` (float64: ArcticDB has no decimal type), ``is_buyer_maker`` (bool),
  ``event_time``, ``ingestion_timestamp`` (datetime64): the information of a trade
  minus what the ArcticDB symbol implies (exchange, symbol, currency...) or what is
  derived (message id, side). Appended one day at a time with ``append_batch``,
  previous versions pruned.

The scaling runs (:mod:`benchmarks.bench_scaling`) build the same kind of table at
other sizes and symbol counts (``ensure_dataset(trades, symbols=N, arctic=False)``):
past the 100 real names, :func:`symbols_for` makes up ``SYMnnnnUSDT`` pairs with
log-uniform prices, and the Zipf shares stretch over all ``N``; those tables are in
the K2 lake only.

:class:`LiveFeed` continues the same processes (prices, ids) at the 100M dataset's
average rate (~39 trades/s) for "live" trades near the wall clock. The benchmark runs
against an *overlay* (:func:`open_overlay`): a per-run catalog that registers the
cached table's metadata, so the run's own commits never change the cached snapshot;
:func:`reset_overlay` deletes whatever a run added to the cached directories.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.tables import TABLE_DEFS, TRADES, ensure_tables, sort_for
from k2.lake.writer import SMALL_ZSTD_LEVEL, append_partitioned
from k2.records import TRADE

if TYPE_CHECKING:
    from arcticdb.version_store.library import Library  # type: ignore[import-untyped]
    from pyiceberg.catalog import Catalog

#: Bump when generation or layout changes: older caches are then rebuilt.
FORMAT_VERSION = 8
DEFAULT_TRADES = 100_000_000
DEFAULT_SEED = 20240301
DAYS = 30
START_US = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z
DAY_US = 86_400_000_000
ZIPF_EXPONENT = 1.0
#: Standard deviation of a day's price change (a Brownian walk in ticks).
DAILY_VOLATILITY = 0.03
#: Share of trades whose size is rounded to one significant digit (in lots).
ROUND_SIZE_SHARE = 0.3
#: ArcticDB's library in the LMDB store.
ARCTIC_LIBRARY = "trades"

_BASES = (  # noqa: SIM905 - a word list reads better as text
    "BTC ETH SOL BNB XRP DOGE ADA TRX AVAX SHIB LINK DOT BCH TON NEAR POL LTC ICP UNI APT "
    "ETC FIL ATOM ARB OP INJ IMX STX HBAR VET MKR GRT RENDER TIA SEI SUI AAVE ALGO FTM EGLD "
    "FLOW XLM THETA SAND MANA AXS CHZ GALA APE LDO CRV SNX COMP ENS DYDX GMX RUNE KAVA ZEC "
    "DASH EOS NEO IOTA XTZ QNT KSM ZIL ONE CELO ENJ BAT ZRX YFI SUSHI 1INCH LRC ANKR STORJ "
    "SKL ROSE FET WLD JUP PYTH BONK PEPE FLOKI WIF ORDI BLUR MASK ID CFX ACH HOOK MAGIC "
    "JASMY GLM MINA RSI"
).split()
#: The market symbols, most active first.
SYMBOLS: tuple[str, ...] = tuple(f"{b}USDT" for b in _BASES)


def symbols_for(count: int) -> tuple[str, ...]:
    """``count`` market symbols, most active first: the first of :data:`SYMBOLS`, then
    made-up ``SYMnnnnUSDT`` pairs past the 100 real ones (for the scaling runs)."""
    made_up = tuple(f"SYM{k:04d}USDT" for k in range(len(SYMBOLS), count))
    return (SYMBOLS + made_up)[:count]


_FIXED_PRICES = {"BTCUSDT": 62_000.0, "ETHUSDT": 3_400.0, "SOLUSDT": 150.0, "BNBUSDT": 580.0}
_MIN_LOTS, _MAX_LOTS = 1, 200_000
_VENDOR = '{"M":true}'


def _weights(count: int = len(SYMBOLS)) -> np.ndarray:
    w = 1.0 / np.arange(1, count + 1) ** ZIPF_EXPONENT
    return np.asarray(w / w.sum())


@dataclass
class SymbolState:
    """Where one symbol's processes stand: its grids, current price and next id."""

    symbol: str
    tick_exp: int  # tick = 10**tick_exp
    lot_exp: int  # quantity step = 10**lot_exp
    ticks: int  # current price in ticks
    next_id: int


def initial_states(seed: int, symbols: tuple[str, ...] = SYMBOLS) -> list[SymbolState]:
    """Every symbol's starting point (prices, grids, ids), fixed by ``seed``."""
    rng = np.random.default_rng([seed, 1])
    states = []
    for symbol in symbols:
        price = _FIXED_PRICES.get(symbol) or float(np.exp(rng.uniform(np.log(0.01), np.log(300))))
        tick_exp = max(math.floor(math.log10(price)) - 6, -8)
        lot_exp = math.floor(math.log10(0.42 / price))
        # quote_quantity = ticks * lots * 10**(tick_exp + lot_exp) must be exact at 8 places.
        lot_exp = max(lot_exp, -8 - tick_exp)
        ticks = round(price / 10.0**tick_exp)
        states.append(SymbolState(symbol, tick_exp, lot_exp, ticks, 1_000_000_000))
    return states


def _decimal(units: np.ndarray) -> pa.Array:
    """A ``decimal128(18, 8)`` array whose unscaled values are ``units`` (int64, ≥ 0)."""
    words = np.zeros((len(units), 2), dtype=np.int64)
    words[:, 0] = units  # little-endian low word; non-negative, so the high word is 0
    return pa.Array.from_buffers(
        pa.decimal128(18, 8), len(units), [None, pa.py_buffer(words.tobytes())]
    )


@dataclass
class _Columns:
    """One symbol's generated trades as numpy columns (µs times, integer units)."""

    index: int
    ts: np.ndarray
    event: np.ndarray
    ingest: np.ndarray
    ids: np.ndarray
    price: np.ndarray  # 1e-8 units
    qty: np.ndarray
    quote: np.ndarray
    maker: np.ndarray


def _symbol_trades(
    state: SymbolState, index: int, count: int, t0_us: int, t1_us: int, rng: np.random.Generator
) -> _Columns:
    """``count`` trades of ``state``'s symbol in ``[t0_us, t1_us)``; advances ``state``."""
    fills = np.where(rng.random(count // 2 + 16) < 0.55, 1, rng.integers(2, 9, count // 2 + 16))
    ends = np.cumsum(fills)
    while ends[-1] < count:  # pragma: no cover - 2.8 fills per event on average
        fills = np.concatenate([fills, rng.integers(1, 9, count)])
        ends = np.cumsum(fills)
    events = int(np.searchsorted(ends, count)) + 1
    fills = fills[:events].copy()
    fills[-1] -= int(ends[events - 1]) - count
    t0_ms, t1_ms = -(-t0_us // 1000), -(-t1_us // 1000)
    times = np.sort(rng.integers(t0_ms, t1_ms, events)) * 1000
    maker = rng.random(events) < 0.5
    direction = np.where(maker, -1, 1)
    sweep = direction * (fills - 1)
    # Brownian steps with DAILY_VOLATILITY whatever the rate; event e starts where
    # event e-1's sweep left the price, plus its own step.
    gaps = np.diff(times, prepend=t0_ms * 1000) / DAY_US
    sigma = DAILY_VOLATILITY * state.ticks * np.sqrt(gaps)
    steps = np.rint(rng.standard_normal(events) * sigma).astype(np.int64)
    base = state.ticks + np.cumsum(steps) + np.cumsum(sweep) - sweep
    starts = np.repeat(ends[:events] - fills, fills)
    within = np.arange(count) - starts
    event_of = np.repeat(np.arange(events), fills)
    ticks = np.maximum(base[event_of] + direction[event_of] * within, 1)
    lots = np.exp(rng.uniform(np.log(_MIN_LOTS), np.log(_MAX_LOTS), count)).astype(np.int64)
    # People type round sizes: some trades are one significant digit.
    unit = 10 ** np.floor(np.log10(lots)).astype(np.int64)
    lots = np.where(rng.random(count) < ROUND_SIZE_SHARE, lots // unit * unit, lots)
    ts = times[event_of]
    event = ts + rng.integers(0, 5, count) * 1000
    ids = state.next_id + np.arange(count, dtype=np.int64)
    state.ticks = int(ticks[-1])
    state.next_id += count
    return _Columns(
        index=index,
        ts=ts,
        event=event,
        ingest=event + rng.integers(2_000, 60_000, count),
        ids=ids,
        price=ticks * 10 ** (state.tick_exp + 8),
        qty=lots * 10 ** (state.lot_exp + 8),
        quote=ticks * lots * 10 ** (state.tick_exp + state.lot_exp + 8),
        maker=maker[event_of],
    )


def generate(
    states: list[SymbolState], counts: np.ndarray, t0_us: int, t1_us: int, rng: np.random.Generator
) -> tuple[pa.Table, list[_Columns]]:
    """``counts[k]`` trades of symbol ``k`` in ``[t0_us, t1_us)`` as a canonical table
    (rows grouped by symbol, in time order within a symbol) and the numpy columns."""
    parts = [
        _symbol_trades(states[k], k, int(c), t0_us, t1_us, rng)
        for k, c in enumerate(counts)
        if c > 0
    ]
    if not parts:
        return TRADE.arrow_schema().empty_table(), []
    n = sum(len(p.ts) for p in parts)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    codes = np.concatenate([np.full(len(p.ts), p.index, dtype=np.int32) for p in parts])
    names = pa.array([s.symbol for s in states])
    symbol = pa.DictionaryArray.from_arrays(codes, names).cast(pa.string())
    ids = pa.array(cat("ids"))
    maker = pa.array(cat("maker"))
    ts_type = pa.timestamp("us", tz="UTC")
    columns: dict[str, pa.Array] = {
        "message_id": pc.binary_join_element_wise("binance", symbol, ids.cast(pa.string()), ":"),
        "trade_id": ids,
        "exchange": pa.repeat("binance", n),
        "symbol": symbol,
        "asset_class": pa.repeat("crypto", n),
        "timestamp": pa.array(cat("ts")).cast(ts_type),
        "event_time": pa.array(cat("event")).cast(ts_type),
        "price": _decimal(cat("price")),
        "quantity": _decimal(cat("qty")),
        "quote_quantity": _decimal(cat("quote")),
        "currency": pa.repeat("USDT", n),
        "side": pc.if_else(maker, "SELL", "BUY"),
        "is_buyer_maker": maker,
        "source_sequence": ids,
        "ingestion_timestamp": pa.array(cat("ingest")).cast(ts_type),
        "vendor_data": pa.repeat(_VENDOR, n),
    }
    schema = TRADE.arrow_schema()
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema), parts


def arctic_frame(part: _Columns) -> pd.DataFrame:
    """One symbol's trades as the ArcticDB frame described in the module doc."""
    return pd.DataFrame(
        {
            "trade_id": part.ids,
            "price": part.price / 1e8,
            "quantity": part.qty / 1e8,
            "quote_quantity": part.quote / 1e8,
            "is_buyer_maker": part.maker,
            "event_time": (part.event * 1000).astype("datetime64[ns]"),
            "ingestion_timestamp": (part.ingest * 1000).astype("datetime64[ns]"),
        },
        index=pd.DatetimeIndex((part.ts * 1000).astype("datetime64[ns]"), name="timestamp"),
    )


# --- the cached dataset -------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A built dataset: where it is and what the build recorded (``manifest.json``)."""

    root: Path
    manifest: dict[str, Any]

    @property
    def trades(self) -> int:
        return int(self.manifest["trades"])

    @property
    def table_dir(self) -> Path:
        """The trades table's directory (``data/`` and ``metadata/`` below it)."""
        return Path(self.manifest["table_dir"])

    @property
    def data_glob(self) -> str:
        """A glob matching every data file of the table (what a plain scan reads)."""
        return str(self.table_dir / "data" / "**" / "*.parquet")

    @property
    def arctic_uri(self) -> str:
        return str(self.manifest["arctic_uri"])

    @property
    def end_us(self) -> int:
        return int(self.manifest["end_us"])

    @property
    def symbols(self) -> tuple[str, ...]:
        """The dataset's market symbols, most active first."""
        return tuple(self.manifest.get("symbols") or SYMBOLS)

    @property
    def has_arctic(self) -> bool:
        """Whether the trades are also in ArcticDB (the query benchmark's datasets)."""
        return bool(self.manifest.get("arctic_uri"))

    def states(self) -> list[SymbolState]:
        """Every symbol's state after the last generated trade."""
        return [SymbolState(**s) for s in self.manifest["states"]]

    def arctic_library(self) -> Library:
        import arcticdb  # type: ignore[import-untyped]

        return arcticdb.Arctic(self.arctic_uri).get_library(ARCTIC_LIBRARY)


def bench_root() -> Path:
    """``K2_BENCH_DIR`` or ``~/.cache/k2-bench``: where datasets are cached."""
    return Path(os.environ.get("K2_BENCH_DIR") or Path.home() / ".cache" / "k2-bench")


def ensure_dataset(
    trades: int = DEFAULT_TRADES,
    seed: int = DEFAULT_SEED,
    root: Path | None = None,
    *,
    symbols: int = len(SYMBOLS),
    arctic: bool = True,
) -> Dataset:
    """The dataset of ``trades`` trades over ``symbols`` symbols (:func:`symbols_for`)
    and ``seed``: the cached one, or built now.

    ``arctic`` false builds the K2 lake only (the scaling runs ask nothing of ArcticDB);
    a cached dataset that has ArcticDB too serves such a request as well. A directory
    without ``manifest.json`` is an interrupted build: it is removed and built again.
    Building 100M trades takes minutes and a few GB of disk.
    """
    base = root or bench_root()
    name = f"query-v{FORMAT_VERSION}-{trades}-seed{seed}"
    if symbols != len(SYMBOLS):
        name += f"-sym{symbols}"
    full = base / name
    candidates = [full] if arctic else [full, base / f"{name}-lake"]
    for directory in candidates:
        if (directory / "manifest.json").is_file():
            return Dataset(directory, json.loads((directory / "manifest.json").read_text()))
    target = candidates[-1]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    built = _build(target, trades, seed, symbols_for(symbols), arctic=arctic)
    (target / "manifest.json").write_text(json.dumps(built, indent=1))
    return Dataset(target, built)


def _day_counts(
    trades: int, rng: np.random.Generator, symbols: int = len(SYMBOLS)
) -> Iterator[tuple[int, np.ndarray]]:
    per_day = trades // DAYS
    weights = _weights(symbols)
    for day in range(DAYS):
        total = per_day + (trades - per_day * DAYS if day == DAYS - 1 else 0)
        yield day, rng.multinomial(total, weights)


def _build(
    root: Path, trades: int, seed: int, symbols: tuple[str, ...] = SYMBOLS, *, arctic: bool = True
) -> dict[str, Any]:
    import arcticdb
    from arcticdb.version_store.library import WritePayload

    began = time.perf_counter()
    table = ensure_tables(catalog_from(LakeSettings(), root))["trades"]
    map_size_gb = max(2, math.ceil(trades * 120 / 1e9))
    arctic_uri = f"lmdb://{root / 'arctic'}?map_size={map_size_gb}GB" if arctic else ""
    library = (
        arcticdb.Arctic(arctic_uri).get_library(ARCTIC_LIBRARY, create_if_missing=True)
        if arctic
        else None
    )
    states = initial_states(seed, symbols)
    rng = np.random.default_rng([seed, 2])
    lake_s = arctic_s = 0.0
    for day, counts in _day_counts(trades, rng, len(symbols)):
        t0 = START_US + day * DAY_US
        data, parts = generate(states, counts, t0, t0 + DAY_US, rng)
        tick = time.perf_counter()
        # One day's sorted trades as compaction would leave them, in one fast append.
        day_rows = sort_for(TABLE_DEFS["trades"], data)
        append_partitioned(table, day_rows, prefix="bench", zstd_level=SMALL_ZSTD_LEVEL,
                           threads=2, message_id_rule=True)  # fmt: skip
        lake_s += time.perf_counter() - tick
        if library is None:
            continue
        tick = time.perf_counter()
        payloads = [WritePayload(symbols[p.index], arctic_frame(p)) for p in parts]
        if day == 0:
            library.write_batch(payloads, prune_previous_versions=True)
        else:
            library.append_batch(payloads, prune_previous_versions=True)
        arctic_s += time.perf_counter() - tick
    table.refresh()
    snapshot = table.current_snapshot()
    assert snapshot is not None
    table_dir = Path(table.location().removeprefix("file://"))
    return {
        "format_version": FORMAT_VERSION,
        "trades": trades,
        "seed": seed,
        "days": DAYS,
        "start_us": START_US,
        "end_us": START_US + DAYS * DAY_US,
        "built_at": datetime.now(UTC).isoformat(),
        "build_seconds": round(time.perf_counter() - began, 1),
        "lake_write_seconds": round(lake_s, 1),
        "arctic_write_seconds": round(arctic_s, 1),
        "metadata_location": table.metadata_location,
        "snapshot_id": snapshot.snapshot_id,
        "table_dir": str(table_dir),
        "base_files": sorted(str(p.relative_to(table_dir)) for p in _files(table_dir)),
        "arctic_uri": arctic_uri,
        "symbols": list(symbols),
        "states": [vars(s) for s in states],
        "layout": _layout(table_dir, root / "arctic", trades),
    }


def _files(table_dir: Path) -> list[Path]:
    return [p for p in table_dir.rglob("*") if p.is_file()]


def _layout(table_dir: Path, arctic_dir: Path, trades: int) -> dict[str, Any]:
    """Files, sizes and row groups of the lake (its minute partials' bytes apart), and
    the LMDB store's size on disk."""
    files = sorted((table_dir / "data").rglob("*.parquet"))
    sizes = [f.stat().st_size for f in files]
    row_groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    arctic_bytes = sum(p.stat().st_blocks * 512 for p in arctic_dir.rglob("*") if p.is_file())
    minutes = sum(p.stat().st_size for p in (table_dir / "data").rglob("*.minutes"))
    return {
        "files": len(files),
        "bytes": sum(sizes),
        "bytes_per_trade": round(sum(sizes) / trades, 2),
        "minutes_bytes": minutes,
        "median_file_bytes": int(np.median(sizes)),
        "median_file_rows": int(np.median(rows)),
        "row_groups": sum(row_groups),
        "arctic_bytes": arctic_bytes,
        "arctic_bytes_per_trade": round(arctic_bytes / trades, 2),
    }


# --- a run's overlay ---------------------------------------------------------------


def open_overlay(dataset: Dataset, run_dir: Path) -> Catalog:
    """A catalog under ``run_dir`` whose trades table is the cached table (registered
    from its metadata file), plus K2's other tables, empty, in ``run_dir``.

    Commits through it (a run's live trades) write new data and metadata files into
    the cached table's directory but never move the cached catalog's pointer: call
    :func:`reset_overlay` afterwards.
    """
    reset_overlay(dataset)
    catalog = catalog_from(LakeSettings(), run_dir)
    catalog.create_namespace_if_not_exists(TRADES.split(".")[0])
    catalog.register_table(TRADES, dataset.manifest["metadata_location"])
    ensure_tables(catalog)
    return catalog


def reset_overlay(dataset: Dataset) -> list[Path]:
    """Put the cache back as built: delete files in the table's directory that the
    build did not write, and ArcticDB rows after the dataset's end (a run's live
    trades). Returns the files deleted."""
    base = set(dataset.manifest["base_files"])
    table_dir = dataset.table_dir
    extra = [p for p in _files(table_dir) if str(p.relative_to(table_dir)) not in base]
    for path in extra:
        path.unlink()
    if not dataset.has_arctic:
        return extra
    library = dataset.arctic_library()
    end = pd.Timestamp(dataset.end_us * 1000)
    for symbol in SYMBOLS:
        if library.tail(symbol, 1).data.index[-1] >= end:
            library.delete_data_in_range(symbol, (end, None), prune_previous_versions=True)
    return extra


# --- live trades ---------------------------------------------------------------------


#: Live trades per second over all symbols: the 100M dataset's average rate, whatever
#: the dataset's size, so quick runs see the same live load.
LIVE_RATE = DEFAULT_TRADES / (DAYS * 86_400)


class LiveFeed:
    """Trades near the wall clock that continue the dataset (prices, ids).

    ``rate`` is trades per second over all symbols (:data:`LIVE_RATE` by default),
    dealt by the Zipf shares; :meth:`between` makes the trades of an interval
    (Poisson counts), in time order per symbol.
    """

    def __init__(self, dataset: Dataset, *, rate: float = LIVE_RATE, seed: int = 7) -> None:
        self.states = dataset.states()
        self.rate = rate
        self._rng = np.random.default_rng([dataset.manifest["seed"], 3, seed])
        self._shares = _weights()

    def between(self, t0_us: int, t1_us: int) -> tuple[pa.Table, list[_Columns]]:
        """The trades of ``[t0_us, t1_us)`` (UTC µs)."""
        expected = self._shares * self.rate * (t1_us - t0_us) / 1e6
        counts = self._rng.poisson(expected)
        return generate(self.states, counts, t0_us, t1_us, self._rng)


def arctic_append(library: Library, parts: list[_Columns]) -> None:
    """Append generated trades to their ArcticDB symbols (one batch)."""
    from arcticdb.version_store.library import WritePayload

    payloads = [WritePayload(SYMBOLS[p.index], arctic_frame(p)) for p in parts]
    library.append_batch(payloads, prune_previous_versions=True)
