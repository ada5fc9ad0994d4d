"""Property-based fuzzing of the frame decoder and the validation stage behind it.

Whatever bytes arrive — random bytes, JSON-shaped garbage, or real captured frames
with a field deleted, retyped, made huge, negative, non-decimal, truncated, doubled
or renamed — :meth:`FrameParser.parse` must not raise, and every frame must end up
as exactly one of: a trade, a quote, a reject (a :class:`RejectReason`, a detail that
says why, the frame's exact bytes), or a counted control/shutdown notice. A record's
values must be exactly what its frame says (no silent rounding or wrapping), and a
frame's outcome must not depend on its neighbours: parsing a batch gives, frame by
frame, what parsing each frame alone gives. Validation after parsing keeps the same
accounting.

Each receive time is the frame's index plus a base, so every output row and reject
can be traced back to the one frame it came from.

The fast tests run a few hundred examples; the ``slow`` ones run thousands. Examples
are derandomized, so a failure in CI reproduces locally.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from k2.quality.rejects import Reject, RejectReason
from k2.quality.validate import validate_quotes, validate_trades
from k2.sources.base import ParsedBatch
from k2.sources.binance.parse import FrameParser
from k2.sources.binance.wire import TIME_LIMIT_US
from tests.captures import FUTURES_CAPTURE, HFT_CAPTURE, SPOT_CF_CAPTURE

#: Receive time of frame 0 (2023-04-05T00:00:00Z, the hftbacktest capture's day).
BASE_US = 1_680_652_800_000_000
NOW_US = BASE_US + 3_600_000_000
MAX_FUTURE_US = 5_000_000
KNOWN = frozenset({"BTCUSDT", "ETHUSDT", "NKNUSDT", "LRCBTC", "BLZETH"})

FAST = settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=3000)
BUDGETS = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]


# -- seeds: real frames ------------------------------------------------------------------


def _seed_frames() -> list[bytes]:
    """A few real frames of every kind in the shipped captures (spot and futures)."""
    with gzip.open(HFT_CAPTURE) as fh:
        hft = [line.split(b" ", 1)[1] for line in fh.read().splitlines()[:400]]
    cryptofeed: list[bytes] = []
    for path in (SPOT_CF_CAPTURE, FUTURES_CAPTURE):
        lines = path.read_bytes().splitlines()[1:]
        cryptofeed += [line.split(b": ", 1)[1] for line in lines if b": " in line]
    seeds: list[bytes] = []
    per_stream: dict[bytes, int] = {}
    for frame in hft + cryptofeed:
        stream = frame[: frame.find(b'"', 11)]
        kind = stream[stream.find(b"@") :]
        if per_stream.get(kind, 0) < 3:
            per_stream[kind] = per_stream.get(kind, 0) + 1
            seeds.append(frame)
    return seeds


SEEDS = _seed_frames()
TRADE_FRAME = SEEDS[0]
QUOTE_FRAME = next(f for f in SEEDS if b"@bookTicker" in f)
CONTROL_FRAMES = [
    b'{"result":null,"id":1}',
    b'{"error":{"code":2,"msg":"Invalid request"},"id":7}',
    b'{"e":"serverShutdown","E":1680652800000}',
    b'{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1680652800000}}',
]
RAW_TRADE = (
    b'{"e":"trade","E":1680652800000,"s":"BNBUSDT","t":5,"p":"300.1","q":"2",'
    b'"T":1680652799999,"m":true,"M":true}'
)
RAW_QUOTE = b'{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}'  # noqa: E501
ALL_SEEDS = SEEDS + CONTROL_FRAMES + [RAW_TRADE, RAW_QUOTE]
PARSED_SEEDS = [f for f in SEEDS if b"@trade" in f or b"@bookTicker" in f] + [RAW_TRADE, RAW_QUOTE]

#: Every key a spot or futures payload or an envelope carries.
KEYS = ["stream", "data", "e", "E", "s", "t", "p", "q", "T", "m", "M", "b", "a", "u", "B",
        "A", "X", "U", "pu", "id", "result", "error"]  # fmt: skip


def with_field(frame: bytes, key: str, raw_value: bytes) -> bytes:
    """``frame`` (a real trade or quote) with ``key`` of its payload set to the JSON text
    ``raw_value`` verbatim (may be invalid JSON)."""
    obj = json.loads(frame)
    obj["data"][key] = "\x00placeholder\x00"
    return (
        json.dumps(obj, separators=(",", ":"))
        .encode()
        .replace(b'"\\u0000placeholder\\u0000"', raw_value)
    )


# -- strategies ---------------------------------------------------------------------------

NASTY_INTS = st.one_of(  # ids and times past int64, negative, at the limits
    st.sampled_from(
        [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30,
         -(10**30), 10**14 - 1, 10**14, TIME_LIMIT_US - 1, TIME_LIMIT_US]
    ),
    st.integers(),
    st.integers(min_value=2**63 - 2**10),
    st.integers(max_value=-(2**63) + 2**10),
)  # fmt: skip

#: Decimal strings Binance never sends: non-finite, exponents (some crash Arrow), too
#: many digits (some Arrow silently zeroes), padded, non-ASCII digits, hex, empty.
NASTY_DECIMAL_TEXTS = [
    "NaN", "nan", "-Infinity", "inf", "sNaN", "-0", "0", "0.00000000", "1e-10000000",
    "0E-10000000", "1E+999999999", "1E-999999999", "0." + "0" * 100 + "1",
    "1." + "0" * 100 + "1", "0" * 100 + "1.5", "9999999999.99999999", "10000000000", "-5",
    "0.000000001", "1.000000000", " 1", "1 ", "1_0", "١٢٣", "１", "+1", ".5", "5.", "", ".",
    "-", "0x10", "1,5", "1e5", "1E+3", "1E", "1e-9999999999999999999",
]  # fmt: skip
EXPONENTS = st.builds(
    "{}{}{}".format,
    st.sampled_from(["0", "1", "1.5", "-2", ".5", "0.00"]),
    st.sampled_from(["e", "E", "E+", "e-"]),
    st.integers(0, 10**12) | st.sampled_from([10**7, 10**8, 999_999_999, 2**31, 2**31 - 1]),
)
LONG_DIGITS = st.builds(
    lambda n, form: form.replace("N", "0" * n),
    st.integers(30, 300),
    st.sampled_from(["0.N1", "1.N1", "1N", "N1.5", "0.N"]),
)
NASTY_DECIMALS = st.one_of(
    st.sampled_from(NASTY_DECIMAL_TEXTS),
    EXPONENTS,
    LONG_DIGITS,
    st.from_regex(r"-?[0-9]{0,12}(\.[0-9]{0,10})?([eE][-+]?[0-9]{1,9})?", fullmatch=True),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=20),
)

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | NASTY_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(NASTY_DECIMAL_TEXTS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=4,
)

#: Verbatim JSON texts (some invalid) a field can be set to.
RAW_TOKENS = st.sampled_from(
    [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"01", b"1.0", b"-0", b"1E2",
     b'"\\ud800"', b'"\xff\xfe"', b'"\xc3"', b'"a\\u0000b"', b"[" * 5000 + b"]" * 5000,
     b'{"x":' * 3000 + b"1" + b"}" * 3000, b"18446744073709551616", b"-9223372036854775809",
     b"99999999999999999999999999999999999999999", b"", b"}", b'"', b"true false"]
)  # fmt: skip

STREAM_NAMES = st.sampled_from(
    ["btcusdt@trade", "btcusdt@bookTicker", "btcusdt@depth@100ms", "btcusdt@aggTrade",
     "btcusdt@kline_1m", "trade", "bookTicker", "", "@", "btcusdt@", "BTCUSDT@TRADE",
     "btcusdt@trade@", "ethbtc@bookTicker", "x@depth"]
) | st.text(max_size=20)  # fmt: skip


@st.composite
def one_field_changed(draw: st.DrawFn) -> bytes:
    """A real trade or quote with one payload field deleted or set to a nasty value."""
    obj: Any = json.loads(draw(st.sampled_from(PARSED_SEEDS)))
    payload = obj["data"] if "stream" in obj else obj
    how = draw(st.sampled_from(["delete", "int", "decimal", "json", "raw"]))
    trade = "t" in payload
    keys = {
        "int": ["t", "T", "E"] if trade else ["u"],
        "decimal": ["p", "q"] if trade else ["b", "B", "a", "A"],
    }.get(how, [*sorted(payload), "e", "E", "T", "X", "M"])
    key = draw(st.sampled_from(keys))
    if how == "delete":
        payload.pop(key, None)
        return json.dumps(obj, separators=(",", ":")).encode()
    if how == "raw":
        payload[key] = "\x00placeholder\x00"
        frame = json.dumps(obj, separators=(",", ":")).encode()
        return frame.replace(b'"\\u0000placeholder\\u0000"', draw(RAW_TOKENS))
    strategy = {"int": NASTY_INTS, "decimal": NASTY_DECIMALS, "json": JSON_VALUES}[how]
    payload[key] = draw(strategy)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    """A real frame with one to three mutations, structural then textual."""
    if draw(st.booleans()):
        return draw(one_field_changed())
    # Mostly trades and quotes: the frames the parser turns into records.
    seeds = PARSED_SEEDS if draw(st.integers(0, 3)) else ALL_SEEDS
    obj: Any = json.loads(draw(st.sampled_from(seeds)))
    placeholders: dict[str, bytes] = {}
    for _ in range(draw(st.integers(1, 3))):
        payload = obj.get("data") if isinstance(obj, dict) and "stream" in obj else obj
        target = payload if isinstance(payload, dict) and draw(st.integers(0, 3)) else obj
        if not isinstance(target, dict):
            obj = {"stream": draw(STREAM_NAMES), "data": obj}
            continue
        what = draw(st.sampled_from(["delete", "set", "decimal", "int", "raw", "stream",
                                     "unwrap", "wrap", "data", "unicode"]))  # fmt: skip
        key = draw(
            st.sampled_from(sorted(target) or KEYS)
            if draw(st.booleans())
            else st.sampled_from(KEYS)
        )
        if what == "delete":
            target.pop(key, None)
        elif what == "set":
            target[key] = draw(JSON_VALUES)
        elif what == "decimal":
            target[draw(st.sampled_from(["p", "q", "b", "B", "a", "A"]))] = draw(NASTY_DECIMALS)
        elif what == "int":
            target[draw(st.sampled_from(["t", "T", "E", "u", "b", "a"]))] = draw(NASTY_INTS)
        elif what == "raw":
            mark = f"\x00raw{len(placeholders)}\x00"
            placeholders[json.dumps(mark)] = draw(RAW_TOKENS)
            target[key] = mark
        elif what == "stream":
            obj["stream"] = draw(STREAM_NAMES)
        elif what == "unwrap" and isinstance(payload, dict):
            obj = payload
        elif what == "wrap":
            obj = {"stream": draw(STREAM_NAMES), "data": obj}
        elif what == "data":
            obj["data"] = draw(JSON_VALUES)
        else:
            target["s"] = draw(st.text(min_size=1, max_size=8))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    frame = text.encode("utf-8", errors="surrogatepass")
    for mark, token in placeholders.items():
        frame = frame.replace(mark.encode(), token)
    textual = draw(
        st.sampled_from(["none", "none", "truncate", "duplicate", "flip", "junk", "utf8", "deep"])
    )
    if textual == "truncate":
        frame = frame[: draw(st.integers(0, max(len(frame) - 1, 0)))]
    elif textual == "duplicate":
        # A key twice in one object: JSON readers keep the last one.
        at = frame.find(b'"data":{') + len(b'"data":{') if b'"data":{' in frame else 1
        key = draw(st.sampled_from(KEYS))
        value = json.dumps(draw(JSON_VALUES)).encode()
        frame = frame[:at] + f'"{key}":'.encode() + value + b"," + frame[at:]
    elif textual == "flip" and frame:
        i = draw(st.integers(0, len(frame) - 1))
        frame = frame[:i] + bytes([draw(st.integers(0, 255))]) + frame[i + 1 :]
    elif textual == "utf8" and b'":"' in frame:
        # Bytes that are not UTF-8 inside a string value.
        at = frame.find(b'":"', draw(st.integers(0, len(frame) - 1))) % len(frame) + 3
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf4\x90"]))
        frame = frame[:at] + bad + frame[at:]
    elif textual == "deep" and frame.startswith(b"{"):
        depth = draw(st.sampled_from([100, 1000, 5000, 100_000]))
        opener = draw(st.sampled_from([b"[", b'{"k":']))
        closer = b"]" if opener == b"[" else b"}"
        frame = b'{"zz":' + opener * depth + b"0" + closer * depth + b"," + frame[1:]
    elif textual == "junk":
        junk = draw(st.sampled_from([b"\xef\xbb\xbf", b" ", b"\n", b"}", b"\x00", b"[]"]))
        frame = junk + frame if draw(st.booleans()) else frame + junk
    return frame


def batches(frame: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """1-8 frames: the given kind, mixed with intact real frames."""
    return st.lists(frame | st.sampled_from(ALL_SEEDS), min_size=1, max_size=8)


JSON_GARBAGE = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=6).map(
        lambda d: json.dumps(d).encode()
    ),
    st.fixed_dictionaries(
        {"stream": STREAM_NAMES, "data": st.dictionaries(st.sampled_from(KEYS), JSON_VALUES)}
    ).map(lambda d: json.dumps(d).encode()),
)


# -- the properties -----------------------------------------------------------------------


def outcomes(batch: ParsedBatch) -> dict[int, tuple[Any, ...]]:
    """Frame index → what became of it: ``("trade", row)``, ``("quote", row)`` or
    ``("reject", reason, detail, data_type)``. Frames counted as control or shutdown
    notices have no entry. Fails if two outputs claim one frame."""
    found: dict[int, tuple[Any, ...]] = {}

    def claim(index: int, what: tuple[Any, ...]) -> None:
        assert index not in found, f"frame {index} produced two outputs"
        found[index] = what

    for kind, table in (("trade", batch.trades), ("quote", batch.quotes)):
        for row in table.to_pylist():
            claim(_index(row["ingestion_timestamp"]), (kind, row))
    for r in batch.rejects:
        claim(r.received_us - BASE_US, ("reject", r.reason, r.detail, r.data_type))
    return found


def _index(ts: Any) -> int:
    return int(pa.scalar(ts, pa.timestamp("us", tz="UTC")).cast(pa.int64()).as_py()) - BASE_US


def check_batch(frames: list[bytes]) -> None:
    """Every property of one parse, then of validation on its output."""
    received = [BASE_US + i for i in range(len(frames))]
    parser = FrameParser()
    out = parser.parse(frames, received)  # must not raise

    # Conservation: records + rejects + counted notices == frames in.
    found = outcomes(out)
    notices = out.server_shutdowns + out.control_replies
    assert len(found) + notices == len(frames)
    for i in set(range(len(frames))) - set(found):
        assert is_notice(frames[i]), f"frame {i} vanished: {frames[i]!r}"

    # Raw bytes are kept byte-exact, aligned with rows and rejects.
    for raws, table in ((out.trade_raw, out.trades), (out.quote_raw, out.quotes)):
        stamps = table.column("ingestion_timestamp").to_pylist()
        assert [frames[_index(ts)] for ts in stamps] == raws
    for r in out.rejects:
        check_reject(r, frames)

    # Accepted records say exactly what their frames say.
    for kind, row in (v for v in found.values() if v[0] != "reject"):
        expect_row(kind, row, frames[_index(row["ingestion_timestamp"])])

    # Isolation: each frame's fate does not depend on the rest of the batch.
    solo_notices = 0
    for i, frame in enumerate(frames):
        alone = FrameParser().parse([frame], [received[i]])
        solo_notices += alone.server_shutdowns + alone.control_replies
        assert outcomes(alone).get(i) == found.get(i), f"frame {i} depends on its neighbours"
    assert solo_notices == notices

    check_validation(out, frames)


def is_notice(frame: bytes) -> bool:
    """A control reply (``{"id":..,"result"|"error":..}``) or a server shutdown notice."""
    obj = msgspec.json.decode(frame)
    assert isinstance(obj, dict)
    data = obj.get("data", obj) if "stream" in obj else obj
    shutdown = isinstance(data, dict) and data.get("e") == "serverShutdown"
    return shutdown or ("id" in obj and ("result" in obj or "error" in obj))


def check_reject(r: Reject, frames: list[bytes]) -> None:
    assert isinstance(r.reason, RejectReason)
    assert isinstance(r.detail, str) and r.detail.strip(), f"reject without a reason: {r}"
    assert "Traceback" not in r.detail
    assert r.raw == frames[r.received_us - BASE_US]  # byte-exact
    assert r.data_type in (None, "trade", "quote")


class _Fields(msgspec.Struct):
    """Only the payload fields a record is built from: other fields of an accepted frame
    are skipped unread, as the parser skips them (they may hold e.g. ``1e400``)."""

    E: Any = None
    s: Any = None
    t: Any = None
    p: Any = None
    q: Any = None
    T: Any = None
    m: Any = None
    u: Any = None
    b: Any = None
    B: Any = None
    a: Any = None
    A: Any = None


class _Envelope(msgspec.Struct):
    stream: str
    data: _Fields


def expect_row(kind: str, row: dict[str, Any], frame: bytes) -> None:
    """The row built from ``frame`` holds the frame's values, exactly."""
    try:
        fields = msgspec.json.decode(frame, type=_Envelope).data
    except msgspec.ValidationError:
        fields = None  # a raw payload may carry a "data" of its own
    d = msgspec.structs.asdict(fields or msgspec.json.decode(frame, type=_Fields))
    if kind == "trade":
        price, qty = Decimal(d["p"]), Decimal(d["q"])
        assert (row["trade_id"], row["symbol"]) == (d["t"], d["s"])
        assert (row["price"], row["quantity"]) == (price, qty)
        assert row["quote_quantity"] == (price * qty).quantize(Decimal("1e-8"), ROUND_HALF_EVEN)
        assert row["is_buyer_maker"] is d["m"]
        assert row["side"] == ("SELL" if d["m"] else "BUY")
        assert row["message_id"] == f"binance:{d['s']}:{d['t']}"
        assert _us(row["timestamp"]) == (d["T"] * 1000 if d["T"] < 10**14 else d["T"])
        assert _us(row["event_time"]) == (d["E"] * 1000 if d["E"] < 10**14 else d["E"])
    else:
        assert (row["update_id"], row["symbol"]) == (d["u"], d["s"])
        assert (row["bid_price"], row["bid_quantity"]) == (Decimal(d["b"]), Decimal(d["B"]))
        assert (row["ask_price"], row["ask_quantity"]) == (Decimal(d["a"]), Decimal(d["A"]))
        assert row["timestamp"] == row["ingestion_timestamp"]


def _us(ts: Any) -> int:
    return int(pa.scalar(ts, pa.timestamp("us", tz="UTC")).cast(pa.int64()).as_py())


def check_validation(out: ParsedBatch, frames: list[bytes]) -> None:
    """Validation splits every parsed row into valid or rejected, never raising."""
    for validate, table, raw in (
        (validate_trades, out.trades, out.trade_raw),
        (validate_quotes, out.quotes, out.quote_raw),
    ):
        known = KNOWN if len(frames) % 2 else None  # with and without reference data
        valid, valid_raw, rejects = validate(
            table, raw, known_symbols=known, now_us=NOW_US, max_future_us=MAX_FUTURE_US,
            source="fuzz",
        )  # fmt: skip
        assert valid.num_rows + len(rejects) == table.num_rows
        assert len(valid_raw) == valid.num_rows
        for r in rejects:
            check_reject(r, frames)
        kept = {_index(ts) for ts in valid.column("ingestion_timestamp").to_pylist()}
        assert kept.isdisjoint(r.received_us - BASE_US for r in rejects)


def run(
    budget: settings, strategy: st.SearchStrategy[list[bytes]], examples: Sequence[list[bytes]] = ()
) -> Callable[[], None]:
    """A Hypothesis test of :func:`check_batch` over ``strategy``, trying ``examples`` first."""

    def fuzz(frames: list[bytes]) -> None:
        check_batch(frames)

    test = given(frames=strategy)(fuzz)
    for frames in examples:
        test = example(frames=frames)(test)
    return budget(test)


#: Frames that crashed the parser (or the process) or slipped through before the fuzzing
#: fixes, each with what it must become now; checked by the full property too.
REGRESSIONS: dict[bytes, RejectReason | None] = {
    # ids and times past int64 (msgspec reads any size; Arrow's int64 overflowed).
    with_field(TRADE_FRAME, "t", b"18446744073709551616"): RejectReason.BAD_FIELD,
    with_field(QUOTE_FRAME, "u", b"18446744073709551616"): RejectReason.BAD_FIELD,
    # A time past year 9999 (crashed validation when it described the reject).
    with_field(TRADE_FRAME, "T", b"9223372036854775807"): RejectReason.BAD_FIELD,
    with_field(TRADE_FRAME, "E", b"-1"): RejectReason.BAD_FIELD,
    # Arrow's decimal cast segfaults on these exponents: must never reach it.
    with_field(TRADE_FRAME, "p", b'"1E-10000000"'): RejectReason.INVALID_DECIMAL,
    with_field(QUOTE_FRAME, "B", b'"0E-10000000"'): None,  # zero, exactly: accepted
    # ... and silently turned this into 0 (more than 38 digits).
    with_field(TRADE_FRAME, "q", b'"0.' + b"0" * 100 + b'1"'): RejectReason.INVALID_DECIMAL,
    # decimal.Overflow escaped from the decimal check.
    with_field(TRADE_FRAME, "p", b'"1E+999999999"'): RejectReason.INVALID_DECIMAL,
    # UnicodeDecodeError and RecursionError escaped the decoder.
    with_field(TRADE_FRAME, "s", b'"BTC\xffUSDT"'): RejectReason.MALFORMED_JSON,
    b"[" * 100_000 + b"]" * 100_000: RejectReason.BAD_FIELD,  # not an object, however deep
    with_field(
        TRADE_FRAME, "zz", b'{"x":' * 3000 + b"1" + b"}" * 3000
    ): RejectReason.MALFORMED_JSON,
    # A number no JSON reader holds: ValidationError escaped the slow path.
    with_field(TRADE_FRAME, "t", b"1e400"): RejectReason.BAD_FIELD,
    # An envelope whose data is not an object was called an unknown event None.
    b'{"stream":"btcusdt@trade","data":5}': RejectReason.BAD_FIELD,
}


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS)
def test_arbitrary_bytes(budget: settings) -> None:
    run(budget, batches(st.binary(max_size=300)))()


@pytest.mark.parametrize("budget", BUDGETS)
def test_json_shaped_garbage(budget: settings) -> None:
    run(budget, batches(JSON_GARBAGE))()


@pytest.mark.parametrize("budget", BUDGETS)
def test_mutated_real_frames(budget: settings) -> None:
    # Every frame that broke the parser before, in a batch with good neighbours.
    found = [[TRADE_FRAME, frame, QUOTE_FRAME] for frame in REGRESSIONS]
    run(settings(budget, max_examples=budget.max_examples * 2), batches(mutated_frame()),
        examples=found)()  # fmt: skip


@pytest.mark.parametrize(("frame", "reason"), list(REGRESSIONS.items()))
def test_found_by_fuzzing(frame: bytes, reason: RejectReason | None) -> None:
    frames = [TRADE_FRAME, frame, QUOTE_FRAME]
    check_batch(frames)
    out = FrameParser().parse(frames, [BASE_US, BASE_US + 1, BASE_US + 2])
    assert [r.reason for r in out.rejects] == ([reason] if reason else [])
    assert out.trades.num_rows + out.quotes.num_rows == (2 if reason else 3)
