"""Archive reading: names, CHECKSUM, zip/CSV, ms/µs, aggTrades, errors naming file and line."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from k2.lake.archives import (
    ArchiveError,
    ArchiveKind,
    parse_name,
    read_archive,
    verify_checksum,
)
from k2.records import TRADE

VISION = Path(__file__).parents[1] / "data" / "binance" / "vision"
KLINES = VISION / "BTCUSDT-1m-2020-01-01.zip"

#: 2024-01-01 00:00:00 UTC in ms, and 2025-01-02 00:00:00 UTC in µs.
MS_2024 = 1_704_067_200_000
US_2025 = 1_735_776_000_000_000


def trade_rows(first_id: int, count: int, start_time: int, step: int = 1) -> list[str]:
    """Binance trades CSV lines: ids from ``first_id``, times ``start_time + i*step``."""
    rows = []
    for i in range(count):
        price = Decimal("42000.00") + Decimal(i % 7) / 100
        qty = Decimal("0.00100000") * (1 + i % 5)
        rows.append(
            f"{first_id + i},{price:.8f},{qty:.8f},{price * qty:.8f},"
            f"{start_time + i * step},{'True' if i % 2 else 'False'},True"
        )
    return rows


def write_archive(
    directory: Path,
    name: str,
    rows: list[str],
    *,
    zipped: bool = True,
    header: str | None = None,
    checksum: bool = False,
) -> Path:
    """Write ``rows`` as Binance would: ``name``.zip holding ``name``.csv, or a bare CSV."""
    text = "\n".join(([header] if header else []) + rows) + "\n"
    if zipped:
        path = directory / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{name}.csv", text)
    else:
        path = directory / f"{name}.csv"
        path.write_text(text)
    if checksum:
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (directory / f"{path.name}.CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


def test_parse_name_kinds_and_refuses_klines() -> None:
    n = parse_name("/x/BTCUSDT-trades-2024-01-01.zip")
    assert (n.symbol, n.kind, n.date) == ("BTCUSDT", ArchiveKind.TRADES, "2024-01-01")
    assert parse_name("ETHBTC-aggTrades-2024-02.csv").kind is ArchiveKind.AGG_TRADES
    with pytest.raises(ArchiveError, match=r"BTCUSDT-1m-2020-01-01\.zip.*'1m'.*trades archive"):
        parse_name(KLINES)


def test_real_kline_archive_checksum_verifies_but_import_is_refused() -> None:
    assert verify_checksum(KLINES) is True
    with pytest.raises(ArchiveError) as err:
        read_archive(KLINES, ingestion_us=0)
    assert "BTCUSDT-1m-2020-01-01.zip" in str(err.value)
    assert "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match" in str(err.value)


def test_kline_content_under_a_trades_name_is_refused_by_column_count(tmp_path: Path) -> None:
    fake = tmp_path / "BTCUSDT-trades-2020-01-01.zip"
    shutil.copy(KLINES, fake)
    with pytest.raises(ArchiveError, match=r"BTCUSDT-trades-2020-01-01\.zip.*12 columns"):
        read_archive(fake, ingestion_us=0)


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / KLINES.name
    shutil.copy(KLINES, copy)
    (tmp_path / f"{KLINES.name}.CHECKSUM").write_text(f"{'0' * 64}  {KLINES.name}\n")
    with pytest.raises(ArchiveError, match=r"BTCUSDT-1m-2020-01-01\.zip: sha256 dd579c62"):
        verify_checksum(copy)
    assert verify_checksum(tmp_path / "absent.zip") is False


def test_zip_trades_ms_to_canonical_rows(tmp_path: Path) -> None:
    path = write_archive(
        tmp_path, "BTCUSDT-trades-2024-01-01", trade_rows(100, 5, MS_2024), checksum=True
    )
    a = read_archive(path, ingestion_us=123)
    assert a.checksum_verified and a.trades.schema == TRADE.arrow_schema()
    assert (a.min_id, a.max_id) == (100, 104)
    row = a.trades.to_pylist()[1]
    assert row["message_id"] == "binance:BTCUSDT:101"
    assert row["timestamp"] == datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
    assert row["event_time"] == row["timestamp"]
    assert row["price"] == Decimal("42000.01") and row["quantity"] == Decimal("0.002")
    assert row["quote_quantity"] == Decimal("84.00002")
    assert (row["side"], row["is_buyer_maker"]) == ("SELL", True)
    assert (row["currency"], row["source_sequence"]) == ("USDT", 101)
    assert json.loads(row["vendor_data"]) == {"M": True}
    assert row["ingestion_timestamp"] == datetime(1970, 1, 1, 0, 0, 0, 123, tzinfo=UTC)


def test_bare_csv_with_header_and_microseconds(tmp_path: Path) -> None:
    path = write_archive(
        tmp_path,
        "BTCUSDT-trades-2025-01-02",
        trade_rows(1, 3, US_2025, step=7),
        zipped=False,
        header="id,price,qty,quote_qty,time,is_buyer_maker,is_best_match",
    )
    a = read_archive(path, ingestion_us=0)
    assert not a.checksum_verified
    times = a.trades["timestamp"].to_pylist()
    assert times[0] == datetime(2025, 1, 2, tzinfo=UTC)
    assert times[2] == datetime(2025, 1, 2, 0, 0, 0, 14, tzinfo=UTC)


def test_ms_and_us_in_one_file_are_classified_per_value(tmp_path: Path) -> None:
    rows = trade_rows(1, 1, MS_2024) + trade_rows(2, 1, US_2025)
    a = read_archive(write_archive(tmp_path, "BTCUSDT-trades-2024-12-31", rows), ingestion_us=0)
    assert [t.year for t in a.trades["timestamp"].to_pylist()] == [2024, 2025]


def test_out_of_order_rows_come_out_time_ordered(tmp_path: Path) -> None:
    rows = trade_rows(1, 4, MS_2024)
    rows = [rows[2], rows[0], rows[3], rows[1]]
    a = read_archive(write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", rows), ingestion_us=0)
    assert a.trades["trade_id"].to_pylist() == [1, 2, 3, 4]


def test_agg_trades_get_their_own_namespace(tmp_path: Path) -> None:
    rows = [
        f"7,42000.5,0.25,100,103,{MS_2024},True,True",
        f"8,42001,1.5,104,104,{MS_2024 + 5},False,True",
    ]
    path = write_archive(tmp_path, "BTCUSDT-aggTrades-2024-01-01", rows)
    a = read_archive(path, ingestion_us=0)
    first, second = a.trades.to_pylist()
    assert first["message_id"] == "binance:BTCUSDT:agg:7" and first["trade_id"] == 7
    assert json.loads(first["vendor_data"]) == {"agg": True, "f": 100, "l": 103, "M": True}
    assert first["quote_quantity"] == Decimal("10500.125") and first["side"] == "SELL"
    assert second["side"] == "BUY"


def test_bad_value_names_file_line_and_column(tmp_path: Path) -> None:
    rows = trade_rows(1, 5, MS_2024)
    rows[3] = rows[3].replace("42000.03", "42k")
    path = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", rows)
    with pytest.raises(ArchiveError, match=r"trades-2024-01-01\.zip!.*csv: line 4, column 'price'"):
        read_archive(path, ingestion_us=0)
    path = write_archive(
        tmp_path, "ETHUSDT-trades-2024-01-01", rows, zipped=False, header="id,price,qty,x,y,z,w"
    )
    with pytest.raises(ArchiveError, match=r"ETHUSDT-trades-2024-01-01\.csv: line 5, column"):
        read_archive(path, ingestion_us=0)


def test_zip_with_two_members_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2024-01-01.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.csv", "1\n")
        zf.writestr("b.csv", "2\n")
    with pytest.raises(ArchiveError, match=r"expected one CSV inside, found a\.csv, b\.csv"):
        read_archive(path, ingestion_us=0)


def test_isal_inflate_equals_zipfile_and_checks_crc_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deflated members are inflated by ISA-L in steps, outside zipfile: the rows must
    be zipfile's, and a damaged stream must fail as zipfile would (CRC, size, cut)."""
    import k2.lake.archives as archives

    rows = trade_rows(1, 3000, MS_2024)
    path = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", rows)
    monkeypatch.setattr(archives, "_DEFLATE_STEP", 101)  # many small inflate steps
    fast = read_archive(path, ingestion_us=0).trades
    monkeypatch.setattr(archives, "_inflater", None)  # zipfile's own reader
    assert read_archive(path, ingestion_us=0).trades.equals(fast)
    assert fast["trade_id"].to_pylist() == list(range(1, 3001))
    monkeypatch.undo()

    stored = tmp_path / "ETHUSDT-trades-2024-01-01.zip"  # not deflated: zipfile reads it
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ETHUSDT-trades-2024-01-01.csv", "\n".join(rows) + "\n")
    assert read_archive(stored, ingestion_us=0).trades["price"].equals(fast["price"])

    blob = path.read_bytes()
    info = zipfile.ZipFile(path).infolist()[0]
    data_at = info.header_offset + 30 + len(info.filename)
    crc_at = blob.rfind(b"PK\x01\x02") + 16  # the central directory's CRC-32 field
    wrong_crc = bytearray(blob)
    wrong_crc[crc_at] ^= 0xFF
    cut = blob[: data_at + info.compress_size // 2]
    garbage = bytearray(blob)
    garbage[data_at : data_at + 8] = b"\xff" * 8  # an invalid deflate block type
    for damaged, why in (
        (bytes(wrong_crc), "Bad CRC-32"),
        (cut, "not a valid zip file"),
        (bytes(garbage), "not a valid zip file"),
    ):
        path.write_bytes(damaged)
        with pytest.raises(ArchiveError, match=why) as err:
            read_archive(path, ingestion_us=0)
        assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("zipped", [True, False])
def test_archive_read_in_pieces_equals_one_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zipped: bool
) -> None:
    """Pieces are parsed while the next inflates: the result and line numbers in error
    messages must not depend on where the pieces were cut."""
    import k2.lake.archives as archives

    rows = trade_rows(1, 2000, MS_2024)
    path = write_archive(tmp_path, "BTCUSDT-trades-2024-01-01", rows, zipped=zipped)
    whole = read_archive(path, ingestion_us=0).trades
    monkeypatch.setattr(archives, "_CSV_CHUNK", 997)  # cuts mid-line, ~20 lines a piece
    pieces = read_archive(path, ingestion_us=0).trades
    assert pieces.equals(whole)
    assert pieces["trade_id"].to_pylist() == list(range(1, 2001))

    rows[1733] = rows[1733].replace(",True,", ",maybe,", 1)
    bad = write_archive(tmp_path, "ETHUSDT-trades-2024-01-01", rows, zipped=zipped)
    with pytest.raises(ArchiveError, match=r"line 1734, column 'is_buyer_maker'"):
        read_archive(bad, ingestion_us=0)
