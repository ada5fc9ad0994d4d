"""Reading lake files from S3 for DuckDB: pyarrow's S3 client behind fsspec, with a
block cache.

DuckDB's own S3 support is an extension K2 cannot download, so DuckDB reads
``s3://`` paths through an fsspec filesystem. Wrapping pyarrow's S3 filesystem
(:class:`fsspec.implementations.arrow.ArrowFSWrapper`) works but costs one request
per read DuckDB makes, and DuckDB makes many small ones. Iceberg data files are
immutable, so :class:`CachingArrowFS` keeps what it fetched: a file's size and time,
and its bytes in fixed-size blocks in a process-wide LRU bounded in bytes. Repeated
questions over the same files then cost no requests at all; a cold read costs one
request per block.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

from fsspec.implementations.arrow import ArrowFSWrapper  # type: ignore[import-untyped]

#: Bytes fetched per request (and cached per entry).
BLOCK_BYTES = 4 * 1024 * 1024


class BlockCache:
    """``(path, block number) → bytes``, least recently used first out, ``max_bytes``
    in total. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def get(self, key: tuple[str, int]) -> bytes | None:
        """The block, or None."""
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
            return block

    def put(self, key: tuple[str, int], block: bytes) -> None:
        """Keep ``block`` (evicting the least recently used beyond ``max_bytes``)."""
        with self._lock:
            if key in self._blocks:
                return
            self._blocks[key] = block
            self._bytes += len(block)
            while self._bytes > self._max and self._blocks:
                _, old = self._blocks.popitem(last=False)
                self._bytes -= len(old)


class CachingArrowFS(ArrowFSWrapper):  # type: ignore[misc]
    """An fsspec view of a pyarrow filesystem for immutable files, caching metadata and
    blocks (read-only use: writes go straight through, uncached)."""

    def __init__(self, fs: Any, cache_bytes: int = 256 * 1024 * 1024, **kwargs: Any) -> None:
        super().__init__(fs, **kwargs)
        self.blocks = BlockCache(cache_bytes)
        self._infos: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """File info (size, type, mtime), remembered per path."""
        key = self._strip_protocol(path)
        with self._lock:
            known = self._infos.get(key)
        if known is not None:
            return dict(known)
        found: dict[str, Any] = super().info(path, **kwargs)
        if found.get("type") == "file":
            with self._lock:
                self._infos[key] = dict(found)
        return found

    def glob(self, path: str, **kwargs: Any) -> Any:
        """A path without wildcards (all K2 passes) is itself: no listing request."""
        if not any(c in path for c in "*?["):
            key = self._strip_protocol(path)
            try:
                return [key] if self.info(key).get("type") == "file" else []
            except FileNotFoundError:
                return []
        return super().glob(path, **kwargs)

    def modified(self, path: str) -> Any:
        """Modification time, from the remembered info."""
        return self.info(path).get("mtime") or super().modified(path)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        seekable: bool = True,
        **kwargs: Any,
    ) -> Any:
        if mode != "rb":
            return super()._open(path, mode, block_size, seekable, **kwargs)
        key = self._strip_protocol(path)
        return CachedFile(self, key, int(self.info(key)["size"]))


class CachedFile(io.RawIOBase):
    """A read-only, seekable file whose bytes come from the shared block cache."""

    def __init__(self, fs: CachingArrowFS, path: str, size: int) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.size = size
        self._pos = 0
        self._source: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        parts = []
        pos = self._pos
        while pos < end:
            number = pos // BLOCK_BYTES
            block = self._block(number)
            start = pos - number * BLOCK_BYTES
            chunk = block[start : start + (end - pos)]
            parts.append(chunk)
            pos += len(chunk)
        self._pos = end
        return b"".join(parts)

    def _block(self, number: int) -> bytes:
        key = (self.path, number)
        block = self.fs.blocks.get(key)
        if block is None:
            if self._source is None:
                self._source = self.fs.fs.open_input_file(self.path)
            offset = number * BLOCK_BYTES
            block = bytes(self._source.read_at(min(BLOCK_BYTES, self.size - offset), offset))
            self.fs.blocks.put(key, block)
        return block

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        super().close()
