"""Result encodings on real captured trades, and content negotiation."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from k2.api.formats import (
    META_KEY,
    encode_arrow,
    encode_csv,
    encode_json,
    encode_parquet,
    iso_strings,
    negotiate,
)
from k2.api.problems import ApiProblem
from k2.sources.binance.parse import FrameParser

Frames = tuple[list[bytes], list[int]]


@pytest.fixture(scope="module")
def trades() -> pa.Table:
    from tests.captures import hft_frames

    frames, received = hft_frames()
    return pa.Table.from_batches([FrameParser().parse(frames, received).trades]).slice(0, 200)


def test_json_decimals_are_exact_strings_and_times_iso_utc(trades: pa.Table) -> None:
    doc = json.loads(encode_json(trades, {"rows": trades.num_rows}))
    assert doc["meta"] == {"rows": 200}
    first, expected = doc["data"][0], trades.slice(0, 1).to_pylist()[0]
    assert set(first) == set(trades.column_names)
    assert first["price"] == "28165.47000000"
    assert Decimal(first["price"]) == expected["price"]
    assert first["timestamp"] == "2023-04-04T23:59:59.999000Z"
    assert first["ingestion_timestamp"] == "2023-04-05T00:00:00.004107Z"
    assert first["trade_id"] == expected["trade_id"] and first["is_buyer_maker"] is True
    for row, want in zip(doc["data"], trades.to_pylist(), strict=True):
        assert Decimal(row["quantity"]) == want["quantity"]
        assert datetime.fromisoformat(row["timestamp"]) == want["timestamp"]


def test_iso_strings_keep_unit_precision_and_zone() -> None:
    us = pa.array([0, None], pa.timestamp("us", tz="UTC"))
    assert iso_strings(us).to_pylist() == ["1970-01-01T00:00:00.000000Z", None]
    naive_s = pa.array([86_400], pa.timestamp("s"))
    assert iso_strings(naive_s).to_pylist() == ["1970-01-02T00:00:00"]
    tokyo = pa.array([0], pa.timestamp("ms", tz="Asia/Tokyo"))
    assert iso_strings(tokyo).to_pylist() == ["1970-01-01T00:00:00.000Z"]  # stored as UTC


def test_json_of_awkward_results() -> None:
    table = pa.table(
        {
            "a b": [1, 2],
            "__dict__": [1.5, float("nan")],
            "list": [[1, 2], None],
            "struct": [{"x": Decimal("1.10")}, None],
            "bin": [b"\x00\xff", None],
            "dict": pa.array(["x", "y"]).dictionary_encode(),
            "day": pa.array([0, None], pa.date32()),
        }
    )
    doc = json.loads(encode_json(table, {}))
    assert doc["data"][0] == {
        "a b": 1,
        "__dict__": 1.5,
        "list": [1, 2],
        "struct": {"x": "1.10"},
        "bin": "AP8=",
        "dict": "x",
        "day": "1970-01-01",
    }
    assert doc["data"][1]["__dict__"] is None  # NaN is not JSON
    dup = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    assert json.loads(encode_json(dup, {}))["data"] == [{"a": 2}]  # falls back to dicts
    quoted = pa.table({'q"x': [1]})
    assert json.loads(encode_json(quoted, {}))["data"] == [{'q"x': 1}]


def _csv_back(data: bytes) -> pa.Table:
    # Read every column as text: compare with the JSON strings exactly.
    head = data.split(b"\n", 1)[0].decode()
    names = [n.strip('"') for n in head.split(",")]
    opts = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    return pacsv.read_csv(io.BytesIO(data), convert_options=opts)


def test_csv_has_the_json_text(trades: pa.Table) -> None:
    rows = json.loads(encode_json(trades, {}))["data"]
    back = _csv_back(encode_csv(trades)).to_pylist()
    assert len(back) == len(rows)
    for got, want in zip(back, rows, strict=True):
        for name, value in want.items():
            expected = (
                None
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
            assert got[name] == expected, name


def test_csv_nested_values_are_json_text() -> None:
    table = pa.table({"l": [[1, 2], None], "t": pa.array([0, 1], pa.timestamp("us", "UTC"))})
    back = _csv_back(encode_csv(table)).to_pylist()
    assert back == [
        {"l": "[1,2]", "t": "1970-01-01T00:00:00.000000Z"},
        {"l": None, "t": "1970-01-01T00:00:00.000001Z"},
    ]


def test_parquet_and_arrow_keep_native_types_and_meta(trades: pa.Table) -> None:
    meta = {"rows": trades.num_rows, "snapshot_id": 7}
    pq_back = pq.read_table(io.BytesIO(encode_parquet(trades, meta)))
    ipc_back = pa.ipc.open_stream(encode_arrow(trades, meta)).read_all()
    for back in (pq_back, ipc_back):
        assert back.schema.field("price").type == pa.decimal128(18, 8)
        assert back.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
        assert back.drop_columns([]).to_pylist() == trades.to_pylist()
        assert msgspec.json.decode(back.schema.metadata[META_KEY]) == meta


def test_parquet_refuses_types_it_cannot_hold() -> None:
    table = pa.table({"i": pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())})
    with pytest.raises(ApiProblem) as err:
        encode_parquet(table, {})
    assert err.value.status == 400 and err.value.code == "unsupported-format"
    assert pa.ipc.open_stream(encode_arrow(table, {})).read_all().num_rows == 1


@pytest.mark.parametrize(
    ("fmt", "accept", "expected"),
    [
        (None, None, "json"),
        (None, "", "json"),
        (None, "*/*", "json"),
        (None, "text/csv", "csv"),
        (None, "application/vnd.apache.parquet", "parquet"),
        (None, "application/vnd.apache.arrow.stream", "arrow"),
        (None, "text/csv;q=0.5, application/vnd.apache.parquet;q=0.9", "parquet"),
        (None, "text/html, application/json;q=0.1", "json"),
        (None, "text/csv;q=0, */*;q=0.1", "json"),
        ("csv", "application/json", "csv"),
        ("arrow", None, "arrow"),
    ],
)
def test_negotiation(fmt: str | None, accept: str | None, expected: str) -> None:
    assert negotiate(fmt, accept) == expected


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/csv;q=0", "application/xml"])
def test_unacceptable_accept_is_406(accept: str) -> None:
    with pytest.raises(ApiProblem) as err:
        negotiate(None, accept)
    assert err.value.status == 406 and "format=" in err.value.detail


def test_unknown_format_is_400() -> None:
    with pytest.raises(ApiProblem) as err:
        negotiate("xlsx", None)
    assert err.value.status == 400 and err.value.code == "unsupported-format"


def test_timestamp_json_matches_python_isoformat(trades: pa.Table) -> None:
    rows = json.loads(encode_json(trades.select(["timestamp"]), {}))["data"]
    for row, want in zip(rows, trades["timestamp"].to_pylist(), strict=True):
        assert row["timestamp"] == want.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_tiny_decimals_are_plain_text_everywhere() -> None:
    values = [Decimal("0E-8"), Decimal("1E-8"), Decimal("-9.9E-7"), Decimal("0.000001"), None]
    table = pa.table({"d": pa.array(values, pa.decimal128(18, 8)), "i": range(5)})
    expected = ["0.00000000", "0.00000001", "-0.00000099", "0.00000100", None]
    assert [r["d"] for r in json.loads(encode_json(table, {}))["data"]] == expected
    assert _csv_back(encode_csv(table))["d"].to_pylist() == expected
