"""The block-caching fsspec view DuckDB reads S3 files through (here over pyarrow's
local filesystem, which the wrapper treats exactly like S3; DuckDB reading through it
from a real S3 server is tests/query/test_engine.py::test_s3_warehouse)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow.fs as pafs

from k2.query.objectstore import BLOCK_BYTES, CachingArrowFS


def test_reads_are_exact_across_blocks_and_served_from_cache(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK_BYTES + 12_345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    fs = CachingArrowFS(pafs.LocalFileSystem())
    rng = random.Random(3)
    with fs.open(str(path), "rb") as fh:
        assert fh.read() == data
        for _ in range(200):
            start = rng.randrange(0, len(data))
            size = rng.choice([1, 100, BLOCK_BYTES - 1, BLOCK_BYTES + 7, 3 * BLOCK_BYTES])
            fh.seek(start)
            assert fh.read(size) == data[start : start + size]
        fh.seek(-10, os.SEEK_END)
        assert fh.read() == data[-10:] and fh.read() == b""
    path.unlink()  # immutable files: what was read is still served
    with fs.open(str(path), "rb") as again:
        again.seek(BLOCK_BYTES - 3)
        assert again.read(6) == data[BLOCK_BYTES - 3 : BLOCK_BYTES + 3]
    assert fs.glob(str(path)) == [str(path)] and fs.glob(str(tmp_path / "none.bin")) == []
