"""The embedded log's SQLite file: opening it, its tables, transactions, and errors.

One database file per log directory holds every topic, the segments, and the consumer
groups. One file rather than one per topic because a consumer group's commits and
ownership span topics and must change in one transaction, and because SQLite is far from
the bottleneck: on the 2-core development VM one file commits ~950 write transactions/s
of four 75 KB segments each with ``synchronous=FULL`` (≈ 9.5 M records/s at 2,500 rows per
segment), while Arrow encoding and Python costs cap produce at a few hundred thousand
records/s per process (BENCHMARKS.md).

Durability (``PRAGMA synchronous`` in WAL mode), exactly:

- ``"full"``: the WAL is fsync'ed before every commit returns. A batch acknowledged by
  ``produce`` (and an offset acknowledged by ``commit``) survives a process crash, an OS
  crash and power loss, on storage that honours fsync.
- ``"normal"``: the WAL is fsync'ed only at checkpoints. An acknowledged write survives a
  process crash (SIGKILL: it is in the OS page cache), but an OS crash or power loss may
  roll back the last transactions — never a torn or corrupt one, and never one the
  database had checkpointed. Several times fewer fsyncs; pick it when the exchange can
  replay (K2's gap repair) and throughput matters more.

Multi-process: WAL lets readers run beside the one writer; writers take the write lock
with ``BEGIN IMMEDIATE`` and wait up to ``busy_timeout_s`` for it. Every write
transaction K2 runs is short (one produce, one retention step, one group sync).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from k2.errors import ConfigError, K2Error, TerminalError, TransientError

Durability = Literal["full", "normal"]

#: File name of the database inside a log directory.
DB_FILE = "k2-log.sqlite3"

#: Bumped when the tables change incompatibly; a file of another version is refused.
FORMAT_VERSION = 1

#: 16 KiB pages: a 300 KB segment spans 19 overflow pages instead of 75; measured
#: ~35% more write transactions/s than 4 KiB pages for 75 KB blobs, and only applies to
#: a new file (SQLite fixes the page size at creation in WAL mode).
PAGE_SIZE = 16_384

#: Checkpoint once the WAL holds this many pages (16 KiB each: 64 MiB) rather than
#: SQLite's default 1000 pages, so producers pay for a checkpoint less often.
WAL_AUTOCHECKPOINT_PAGES = 4096

#: After a checkpoint resets the WAL, truncate the file to this size (bytes).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    record_type TEXT NOT NULL,
    partitions INTEGER NOT NULL,
    max_age_us INTEGER,
    max_bytes INTEGER,
    arrow_schema BLOB NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    pid INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    begin_offset INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    UNIQUE (topic, partition)
);
-- One row per partition chunk of one produce call. The payload comes last so that
-- reading the other columns never touches its overflow pages.
CREATE TABLE IF NOT EXISTS segments (
    pid INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    min_log_us INTEGER NOT NULL,
    max_log_us INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    codec TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (pid, base_offset)
);
CREATE TABLE IF NOT EXISTS groups (
    grp TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    topics TEXT NOT NULL,
    session_us INTEGER NOT NULL,
    last_seen_us INTEGER NOT NULL,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    grp TEXT NOT NULL,
    pid INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, pid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
    grp TEXT NOT NULL,
    pid INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_us INTEGER NOT NULL,
    PRIMARY KEY (grp, pid)
) WITHOUT ROWID;
"""


class LogBusy(TransientError):
    """The log file stayed locked by another process for longer than the busy timeout."""


class LogStorageError(TerminalError):
    """The log file cannot be used: disk full, corrupt, unreadable or not a K2 log."""


# SQLite primary result codes (the low byte of an extended code).
_BUSY, _LOCKED, _FULL, _CORRUPT, _NOTADB = 5, 6, 13, 11, 26
_TERMINAL_HINTS = {
    _FULL: "the disk is full (free space on it, then restart: K2 resumes where the log ends)",
    _CORRUPT: "the database file is corrupt",
    _NOTADB: "the file is not an SQLite database",
    8: "the file is read-only",
    10: "an I/O error occurred",
    14: "the file cannot be opened",
}


def translate_error(err: sqlite3.Error, path: Path, action: str) -> K2Error:
    """The K2 error for an ``sqlite3`` error met while doing ``action`` on ``path``:
    a lock held too long is transient (retry), anything about the file is terminal."""
    code = getattr(err, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    name = getattr(err, "sqlite_errorname", type(err).__name__)
    if primary in (_BUSY, _LOCKED) or "locked" in str(err):
        return LogBusy(f"{action}: log file {path} is locked by another writer ({name}): {err}")
    hint = _TERMINAL_HINTS.get(primary or -1, "SQLite failed")
    return LogStorageError(f"{action}: {hint} — log file {path} ({name}: {err})")


@contextmanager
def translated(path: Path, action: str) -> Iterator[None]:
    """Run a block, turning any ``sqlite3.Error`` into a K2 error naming the file."""
    try:
        yield
    except sqlite3.Error as err:
        raise translate_error(err, path, action) from err


@contextmanager
def write_transaction(conn: sqlite3.Connection, path: Path, action: str) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: take the write lock up front (waiting up to the
    busy timeout), commit on success, roll back on any exception (K2 errors raised by
    the block pass through unchanged). Durable on return per the synchronous level."""
    with translated(path, action):
        conn.execute("BEGIN IMMEDIATE")
        done = False
        try:
            yield
            conn.execute("COMMIT")
            done = True
        finally:
            if not done and conn.in_transaction:
                conn.execute("ROLLBACK")


def open_database(
    directory: Path, durability: Durability, busy_timeout_s: float
) -> sqlite3.Connection:
    """Open (creating if needed) the log database in ``directory``, in WAL mode.

    Safe to call from several processes at once. Raises :class:`LogStorageError` if
    the file is unusable or of another format version, :class:`LogBusy` if another
    process holds the lock longer than ``busy_timeout_s``.
    """
    if durability not in ("full", "normal"):
        raise ConfigError(f"durability must be 'full' or 'normal', not {durability!r}")
    # Setting up a connection (WAL mode, the schema) can meet SQLITE_BUSY without
    # SQLite's busy handler waiting, e.g. while another process opens or recovers
    # the file: try again until the busy timeout is spent.
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            return _open_once(directory, durability, busy_timeout_s)
        except LogBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(_OPEN_RETRY_S)


#: Pause between attempts to open a log file another process holds locked.
_OPEN_RETRY_S = 0.05


def _open_once(
    directory: Path, durability: Durability, busy_timeout_s: float
) -> sqlite3.Connection:
    path = directory / DB_FILE
    with translated(path, "open log"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LogStorageError(f"cannot create log directory {directory}: {err}") from err
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LogStorageError(f"log file {path} cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {durability.upper()}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            _ensure_schema(conn, path)
        except BaseException:
            conn.close()
            raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    # Statements one by one: executescript() would COMMIT the open transaction first.
    with write_transaction(conn, path, "create log tables"):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)", (str(FORMAT_VERSION),)
        )
        found = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
    if found != str(FORMAT_VERSION):
        raise LogStorageError(
            f"log file {path} has format version {found}; this K2 reads version {FORMAT_VERSION}"
        )


class Database:
    """One connection to the log file, shared by the threads of one handle.

    A lock serialises use of the connection; every query finishes (``fetchall``) before
    the lock is released, so no statement or read snapshot outlives a call.
    """

    def __init__(self, directory: Path, durability: Durability, busy_timeout_s: float) -> None:
        self.path = directory / DB_FILE
        self._conn = open_database(directory, durability, busy_timeout_s)
        self._lock = threading.RLock()
        self._closed = False

    def query(self, sql: str, params: Sequence[object] | Mapping[str, object] = ()) -> list[Any]:
        """All rows of one statement (a read, or a single-statement write)."""
        with self._lock, translated(self.path, "read log"):
            self._check_open()
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def write(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write transaction (see :func:`write_transaction`) on the shared connection;
        ``action`` names what is being done in any error raised."""
        with self._lock:
            self._check_open()
            with write_transaction(self._conn, self.path, action):
                yield self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with translated(self.path, "close log"):
                    self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TerminalError(f"log {self.path} is closed")
