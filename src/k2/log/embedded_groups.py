"""Consumer groups of the embedded log, across processes, with no coordinator process.

The group's state lives in the log file, and every change happens in one short write
transaction, so the file itself is the coordinator:

- ``members``: one row per live member with its topics, session timeout and last
  heartbeat (injectable clock, UTC µs). A member heartbeats when it polls.
- ``owners``: which member owns which partition. This row is the fence: a member may
  commit a partition only while it owns it, checked in the commit's own transaction,
  and a member claims a partition only when no row names another owner. So at any
  moment at most one member owns a partition.
- ``groups.version``: bumped by every join, leave, expiry, release and claim. Polling
  members read it (a cheap read that never blocks) and re-run the sync when it moves.

A *sync* — on join, when the version moved, at least every third of the session
timeout, and once another member's session may have ended — heartbeats, removes
members whose session expired (and their ownership), computes the target assignment
over the live members (per topic, the members subscribed to it sorted by id;
partition ``p`` goes to member ``p mod m``), releases owned partitions outside the
target and claims unowned ones inside it. A partition moving from A to B is released
by A's next sync and claimed by B's sync after that: one poll each, typically a few
milliseconds apart. A member that dies keeps its partitions until its session expires
(default 6 s), as in Kafka.

A member that paused longer than its session may still *read* a partition it lost
until its next poll notices; it can never *commit* it (:class:`NotPartitionOwner`),
so the group's committed offsets only ever move under the partition's one owner.

Positions follow Kafka: a newly owned partition starts at the group's committed offset,
else at ``start`` (``earliest``: the oldest record held; ``latest``: the end).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from k2.errors import ConfigError, TerminalError, TransientError
from k2.log.base import LogBatch, TopicPartition
from k2.log.embedded_db import Database
from k2.log.embedded_segments import read_range
from k2.log.embedded_topics import TopicInfo
from k2.ops.log import get_logger

log = get_logger(__name__)

#: Longest pause between two looks at the file while ``poll`` waits for records (s):
#: the added latency of the embedded log when idle; each look is two indexed reads.
MAX_IDLE_PAUSE_S = 0.025


class NotPartitionOwner(TransientError):
    """A group member used a partition it does not (or no longer) own: the group
    rebalanced, or the member's session expired. Records it read from that partition
    since its last commit will be delivered again to the partition's new owner."""


class EmbeddedConsumer:
    """A member of a consumer group on the embedded log (see the module docstring).

    Implements :class:`k2.log.base.Consumer`. Use from one thread at a time, like a
    Kafka consumer; it owns its own connection to the log file.
    """

    def __init__(
        self,
        db: Database,
        group: str,
        topics: Sequence[TopicInfo],
        *,
        start: str,
        session_timeout_s: float,
        clock: Callable[[], int],
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ConfigError(f"consumer start must be 'earliest' or 'latest', not {start!r}")
        if session_timeout_s <= 0:
            raise ConfigError(f"session_timeout_s must be > 0, not {session_timeout_s}")
        if not group or not topics:
            raise ConfigError("a consumer needs a group name and at least one topic")
        self._db = db
        self._group = group
        self._topics = {t.name: t for t in topics}
        self._start = start
        self._session_us = round(session_timeout_s * 1_000_000)
        self._clock = clock
        self.member_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._tp: dict[int, TopicPartition] = {}
        self._info: dict[int, TopicInfo] = {}
        for t in topics:
            for tp in t.partitions():
                pid = t.pid(tp.partition)
                self._tp[pid], self._info[pid] = tp, t
        self._owned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._consumed: dict[int, int] = {}  # next offset after what poll returned
        self._lost_uncommitted: set[int] = set()
        self._version = -1
        self._last_sync_us: int | None = None
        self._next_expiry_us: int | None = None  # earliest session end of another member
        self._turn = 0
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._sync()

    # -- Consumer protocol ---------------------------------------------------------

    def poll(self, max_records: int = 50_000, timeout_s: float = 1.0) -> list[LogBatch]:
        """Up to ``max_records`` records from owned partitions, waiting up to
        ``timeout_s`` for the first. Heartbeats and follows rebalances first."""
        if max_records < 1:
            raise ConfigError(f"max_records must be >= 1, not {max_records}")
        deadline = time.monotonic() + max(timeout_s, 0.0)
        pause = 0.001
        with self._lock:
            self._check_open()
            while True:
                self._maybe_sync()
                batches = self._fetch(max_records)
                remaining = deadline - time.monotonic()
                if batches or remaining <= 0:
                    return batches
                # No server can push a wake-up to another process: look again soon.
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, MAX_IDLE_PAUSE_S)

    def assignment(self) -> list[TopicPartition]:
        """The partitions this member owns as of its last sync, sorted."""
        return sorted(self._tp[pid] for pid in self._owned)

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Store next-offsets for the group, durably, in one transaction (all or none).

        Raises :class:`NotPartitionOwner` (nothing committed) if the member does not own
        one of the partitions now, or — for ``offsets=None`` — if it lost a partition
        from which poll returned records since its last commit (reported once).
        """
        with self._lock:
            self._check_open()
            if offsets is None:
                lost = sorted(self._tp[p] for p in self._lost_uncommitted)
                self._lost_uncommitted.clear()
                if lost:
                    raise NotPartitionOwner(
                        f"member {self.member_id} of group {self._group} lost {lost} "
                        "before committing what it read from them; their new owner reads "
                        "them again from the group's last commit"
                    )
                wanted = dict(self._consumed)
            else:
                wanted = {self._pid(tp): _offset(tp, off) for tp, off in offsets.items()}
            if wanted:
                self._store(wanted)
            for pid, off in wanted.items():
                if self._consumed.get(pid, off + 1) <= off:
                    del self._consumed[pid]

    def committed(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed next-offset per partition (``None``: never committed)."""
        with self._lock:
            self._check_open()
            pids = {tp: self._pid(tp) for tp in partitions}
            if not pids:
                return {}
            marks = ",".join("?" * len(pids))
            found = dict(
                self._db.query(
                    f"SELECT pid, next_offset FROM commits WHERE grp = ? AND pid IN ({marks})",
                    (self._group, *pids.values()),
                )
            )
            return {tp: found.get(pid) for tp, pid in pids.items()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Make the next poll of an owned ``partition`` start at ``offset``.
        :class:`NotPartitionOwner` if this member does not own it now."""
        with self._lock:
            self._check_open()
            pid = self._pid(partition)
            if pid not in self._owned:
                raise NotPartitionOwner(f"member {self.member_id} does not own {partition}")
            self._positions[pid] = _offset(partition, offset)

    def position(self, partition: TopicPartition) -> int | None:
        """Where the next poll of ``partition`` starts; ``None`` if not owned."""
        return self._positions.get(self._pid(partition))

    def close(self) -> None:
        """Leave the group now (partitions move at the others' next poll); no commit.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with self._db.write("leave consumer group") as conn:
                    args = (self._group, self.member_id)
                    conn.execute("DELETE FROM owners WHERE grp = ? AND member = ?", args)
                    conn.execute("DELETE FROM members WHERE grp = ? AND member = ?", args)
                    _bump(conn, self._group)
            finally:
                self._db.close()

    # -- group protocol ------------------------------------------------------------

    def _maybe_sync(self) -> None:
        now = self._clock()
        due = (
            self._last_sync_us is None
            or now - self._last_sync_us >= self._session_us // 3
            or (self._next_expiry_us is not None and now > self._next_expiry_us)
        )
        if not due:
            rows = self._db.query("SELECT version FROM groups WHERE grp = ?", (self._group,))
            if rows and rows[0][0] == self._version:
                return
        self._sync()

    def _sync(self) -> None:
        now = self._clock()
        g, me = self._group, self.member_id
        with self._db.write("consumer group sync") as conn:
            conn.execute("INSERT OR IGNORE INTO groups (grp, version) VALUES (?, 0)", (g,))
            changed = False
            beat = conn.execute(
                "UPDATE members SET last_seen_us = ? WHERE grp = ? AND member = ?", (now, g, me)
            )
            if beat.rowcount == 0:
                if self._last_sync_us is not None:
                    log.warning("consumer_rejoined", group=g, member=me, reason="session expired")
                conn.execute(
                    "INSERT INTO members (grp, member, topics, session_us, last_seen_us)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (g, me, json.dumps(sorted(self._topics)), self._session_us, now),
                )
                changed = True
            expired = conn.execute(
                "SELECT member FROM members WHERE grp = ? AND member <> ?"
                " AND last_seen_us + session_us < ?",
                (g, me, now),
            ).fetchall()
            if expired:
                log.warning("consumer_members_expired", group=g, members=[m for (m,) in expired])
                for sql in ("DELETE FROM members WHERE grp = ? AND member = ?",
                            "DELETE FROM owners WHERE grp = ? AND member = ?"):  # fmt: skip
                    conn.executemany(sql, [(g, m) for (m,) in expired])
                changed = True
            target = self._target(conn)
            held = _owned_by(conn, g, me)
            release = held - target
            conn.executemany(
                "DELETE FROM owners WHERE grp = ? AND pid = ? AND member = ?",
                [(g, pid, me) for pid in release],
            )
            wanted = target - held
            taken = _owned_by(conn, g, None, wanted)
            claim = wanted - taken
            conn.executemany(
                "INSERT INTO owners (grp, pid, member) VALUES (?, ?, ?)",
                [(g, pid, me) for pid in claim],
            )
            if changed or release or claim:
                _bump(conn, g)
            version = conn.execute("SELECT version FROM groups WHERE grp = ?", (g,)).fetchone()[0]
            (next_expiry,) = conn.execute(
                "SELECT min(last_seen_us + session_us) FROM members WHERE grp = ? AND member <> ?",
                (g, me),
            ).fetchone()
            owned = (held - release) | claim
            starts = self._starts(conn, owned - self._owned)
        # Only now, with the transaction committed, does local state follow.
        for pid in self._owned - owned:
            self._positions.pop(pid, None)
            if self._consumed.pop(pid, None) is not None:
                self._lost_uncommitted.add(pid)
        self._positions.update(starts)
        if owned != self._owned:
            names = [f"{self._tp[p].topic}[{self._tp[p].partition}]" for p in sorted(owned)]
            log.info("consumer_assignment", group=g, member=me, partitions=names)
        self._owned, self._version, self._last_sync_us = owned, version, now
        self._next_expiry_us = next_expiry

    def _target(self, conn: sqlite3.Connection) -> set[int]:
        live = conn.execute(
            "SELECT member, topics FROM members WHERE grp = ? ORDER BY member", (self._group,)
        ).fetchall()
        subscribed = [(m, set(json.loads(t))) for m, t in live]
        target: set[int] = set()
        for name, info in self._topics.items():
            members = [m for m, topics in subscribed if name in topics]
            mine = members.index(self.member_id)
            target.update(info.pids[mine :: len(members)])
        return target

    def _starts(self, conn: sqlite3.Connection, gained: set[int]) -> dict[int, int]:
        if not gained:
            return {}
        marks = ",".join("?" * len(gained))
        rows = conn.execute(
            "SELECT p.pid, c.next_offset, p.begin_offset, p.next_offset FROM partitions p"
            " LEFT JOIN commits c ON c.grp = ? AND c.pid = p.pid"
            f" WHERE p.pid IN ({marks})",
            (self._group, *gained),
        ).fetchall()
        fallback = 2 if self._start == "earliest" else 3
        return {r[0]: r[1] if r[1] is not None else r[fallback] for r in rows}

    def _store(self, offsets: dict[int, int]) -> None:
        now = self._clock()
        g, me = self._group, self.member_id
        with self._db.write("commit offsets") as conn:
            held = _owned_by(conn, g, me)
            lost = sorted(self._tp[pid] for pid in set(offsets) - held)
            if lost:
                raise NotPartitionOwner(
                    f"member {me} of group {g} cannot commit {lost}: it no longer owns them "
                    "(the group rebalanced or its session expired)"
                )
            conn.executemany(
                "INSERT INTO commits (grp, pid, next_offset, committed_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (grp, pid) DO UPDATE SET next_offset = excluded.next_offset,"
                " committed_us = excluded.committed_us",
                [(g, pid, off, now) for pid, off in offsets.items()],
            )
            conn.execute(
                "UPDATE members SET last_seen_us = ? WHERE grp = ? AND member = ?", (now, g, me)
            )

    # -- reading -------------------------------------------------------------------

    def _fetch(self, max_records: int) -> list[LogBatch]:
        if not self._owned:
            return []
        pids = sorted(self._owned)
        marks = ",".join("?" * len(pids))
        bounds = {
            pid: (begin, end)
            for pid, begin, end in self._db.query(
                f"SELECT pid, begin_offset, next_offset FROM partitions WHERE pid IN ({marks})",
                pids,
            )
        }
        # Start with a different partition each poll so a busy one cannot starve others.
        self._turn = (self._turn + 1) % len(pids)
        out: list[LogBatch] = []
        budget = max_records
        for pid in pids[self._turn :] + pids[: self._turn]:
            begin, end = bounds[pid]
            position = self._positions[pid]
            if position < begin:
                log.warning("consumer_skipped_deleted", partition=str(self._tp[pid]),
                            position=position, begin=begin)  # fmt: skip
                position = begin
            if position >= end:
                self._positions[pid] = position
                continue
            info = self._info[pid]
            for batch in read_range(self._db, self._tp[pid], pid, info.schema, position, end,
                                    max_records=budget, limit=budget):  # fmt: skip
                out.append(batch)
                budget -= batch.records.num_rows
                position = batch.next_offset
            self._positions[pid] = self._consumed[pid] = position
            if budget <= 0:
                break
        return out

    def _pid(self, tp: TopicPartition) -> int:
        info = self._topics.get(tp.topic)
        if info is None:
            raise NotPartitionOwner(
                f"member {self.member_id} of group {self._group} is not subscribed to {tp.topic}"
            )
        return info.pid(tp.partition)

    def _check_open(self) -> None:
        if self._closed:
            raise TerminalError(f"consumer {self.member_id} of group {self._group} is closed")


def _owned_by(
    conn: sqlite3.Connection, group: str, member: str | None, among: set[int] | None = None
) -> set[int]:
    """Partitions of ``group`` owned by ``member`` (``None``: by anyone), optionally
    only those in ``among``."""
    sql = "SELECT pid FROM owners WHERE grp = ?"
    args: list[object] = [group]
    if member is not None:
        sql += " AND member = ?"
        args.append(member)
    if among is not None:
        if not among:
            return set()
        sql += f" AND pid IN ({','.join('?' * len(among))})"
        args.extend(among)
    return {pid for (pid,) in conn.execute(sql, args)}


def _bump(conn: sqlite3.Connection, group: str) -> None:
    conn.execute("UPDATE groups SET version = version + 1 WHERE grp = ?", (group,))


def _offset(tp: TopicPartition, offset: int) -> int:
    if not isinstance(offset, int) or offset < 0:
        raise TerminalError(f"offset of {tp} must be an int >= 0, not {offset!r}")
    return offset
