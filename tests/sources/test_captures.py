"""read_capture on the real captures in tests/data/binance, and on broken files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from k2.sources.captures import CapturedFrame, CaptureError, CaptureFormatError, read_capture

DATA = Path(__file__).resolve().parents[1] / "data" / "binance"
HFT = DATA / "hftbacktest_spot_btcusdt_20230405.dat.gz"
CF_SPOT = DATA / "cryptofeed_BINANCE.ws.1.0.txt"
CF_FUTURES = DATA / "cryptofeed_BINANCE_FUTURES.ws.1.0.txt"


def test_hftbacktest_capture_yields_every_line_exactly() -> None:
    frames = list(read_capture(HFT))
    lines = gzip.decompress(HFT.read_bytes()).splitlines()
    assert len(frames) == len(lines) == 15_088
    for frame, line in zip(frames, lines, strict=True):
        stamp, raw = line.split(b" ", 1)
        assert frame == CapturedFrame(int(stamp), raw)
    assert frames[0].received_us == 1_680_652_800_004_107
    trades = [f for f in frames if f.frame.startswith(b'{"stream":"btcusdt@trade"')]
    assert len(trades) == 3_144


def test_cryptofeed_capture_skips_header_and_blank_lines() -> None:
    frames = list(read_capture(CF_SPOT))
    body = [line for line in CF_SPOT.read_bytes().splitlines()[1:] if line.strip()]
    assert len(frames) == len(body) == 265
    assert frames[0].frame == body[0].split(b": ", 1)[1]
    assert all(f.frame.startswith(b'{"stream":') for f in frames)


def test_cryptofeed_seconds_become_rounded_microseconds() -> None:
    first = next(read_capture(CF_SPOT))
    # "1633998512.0633569" seconds: .9 µs rounds up
    assert first.received_us == 1_633_998_512_063_357
    futures = next(read_capture(CF_FUTURES))
    assert futures.received_us == 1_626_992_741_062_170  # "1626992741.06217"


def test_half_microseconds_round_to_even(tmp_path: Path) -> None:
    path = tmp_path / "cf.txt"
    path.write_bytes(b"wss://example <-> 1.0\n1.0000005: {}\n1.0000015: {}\n1633998512: []\n")
    assert [f.received_us for f in read_capture(path)] == [
        1_000_000,
        1_000_002,
        1_633_998_512_000_000,
    ]


def test_plain_and_gzip_read_the_same(tmp_path: Path) -> None:
    gz = tmp_path / "spot.txt.gz"
    with gzip.open(gz, "wb") as out:
        out.write(CF_SPOT.read_bytes())
    plain = tmp_path / "hft.dat"
    plain.write_bytes(gzip.decompress(HFT.read_bytes()))
    assert list(read_capture(gz)) == list(read_capture(CF_SPOT))
    assert list(read_capture(plain))[-1] == list(read_capture(HFT))[-1]


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"wss://x <-> 1.5\n2.0: {}\nnot-a-time: {}\n")
    with pytest.raises(CaptureFormatError) as info:
        list(read_capture(path))
    assert info.value.line == 3
    assert str(path) in str(info.value)
    assert ":3:" in str(info.value)


def test_hftbacktest_line_without_frame_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.dat"
    path.write_bytes(b"1 {}\n2 {}\n3\n")
    with pytest.raises(CaptureFormatError, match=r"bad\.dat:3:"):
        list(read_capture(path))


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "http.txt"
    shutil.copy(DATA / "cryptofeed_BINANCE.http.0.0.txt", path)
    with pytest.raises(CaptureFormatError, match="unrecognised capture format"):
        list(read_capture(path))


def test_missing_and_corrupt_files_raise_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read capture"):
        list(read_capture(tmp_path / "absent.dat.gz"))
    broken = tmp_path / "broken.dat.gz"
    whole = gzip.compress(b"".join(b"%d {}\n" % (i * 7919) for i in range(5000)))
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CaptureError):
        list(read_capture(broken))
