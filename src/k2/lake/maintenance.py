"""Table maintenance: compaction, snapshot expiry, orphan-file cleanup.

All three are safe to run while the sink appends:

- :func:`compact` rewrites each partition's small files into sorted, bigger ones in one
  Iceberg commit that deletes exactly the files it read and adds the files it wrote.
  The commit is a compare-and-swap on the table's metadata, validated at serializable
  isolation: if the sink committed in between, the rewrite fails (and is re-planned
  from the new head) instead of overwriting the sink's snapshot, so no append is lost.
  Run one ``k2 maintain`` per table at a time.
- :func:`expire_snapshots` drops snapshots older than the time-travel window, but keeps
  the one that was current at the window's start, so every instant inside the window
  still reads. It only edits metadata; the files it frees become orphans.
- :func:`remove_orphan_files` deletes files under the table's location that no retained
  snapshot references and that are older than a grace period (a file written by an
  in-flight commit is young, so it is spared). Table metadata JSON files are left to the
  catalog.

Compaction snapshots carry ``k2.maintenance = compaction`` and are ``overwrite``
snapshots with no log offsets: a reader of the sink's offsets must walk back to the
newest snapshot that has them.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from k2.errors import K2Error, TerminalError, TransientError
from k2.lake.minutes import minutes_path
from k2.lake.sink_offsets import offsets_properties
from k2.lake.writer import SMALL_ZSTD_LEVEL, write_files

if TYPE_CHECKING:
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import FileScanTask, Table

#: Summary property naming the maintenance operation of a snapshot.
PROP_MAINTENANCE = "k2.maintenance"
#: Files below this size are compaction candidates by default.
DEFAULT_SMALL_FILE_BYTES = 32 * 1024 * 1024


class MaintenanceError(TerminalError):
    """A maintenance step that cannot proceed (e.g. an unsupported file system)."""


@dataclass(frozen=True)
class CompactionReport:
    """What :func:`compact` did: partitions rewritten, files and bytes before/after."""

    partitions: int
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    rows: int
    snapshot_id: int | None


@dataclass(frozen=True)
class ExpiryReport:
    """Snapshots :func:`expire_snapshots` removed, and the cutoff it used (UTC)."""

    expired: list[int]
    cutoff: datetime
    kept: int


@dataclass(frozen=True)
class OrphanReport:
    """Files :func:`remove_orphan_files` deleted (or would delete, for a dry run)."""

    paths: list[str]
    bytes: int
    dry_run: bool


def files_per_partition(table: Table) -> dict[str, int]:
    """Live data files per partition of the current snapshot (partition key → count)."""
    table.refresh()
    if table.current_snapshot() is None:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for task in table.scan().plan_files():
        counts[_partition_key(task.file)] += 1
    return dict(counts)


def compact(
    table: Table,
    *,
    small_file_bytes: int = DEFAULT_SMALL_FILE_BYTES,
    min_files: int = 2,
    attempts: int = 5,
) -> CompactionReport:
    """Rewrite every partition holding ``min_files`` or more small files, in one commit.

    A file is small below ``small_file_bytes``. Rows are read with the table's current
    schema (files written before a column was added read it as null) and written sorted
    by the table's sort order. Files with row-level deletes are left alone. Returns a
    report; ``snapshot_id`` is ``None`` when nothing needed compacting.

    pyiceberg validates the rewrite at serializable isolation, so a sink commit landing
    while the files are rewritten makes the commit fail rather than lose the sink's rows;
    the whole plan is then redone, up to ``attempts`` times, after which
    :class:`~k2.errors.TransientError` is raised (run it again later).
    """
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    for attempt in range(1, attempts + 1):
        try:
            return _compact_once(table, small_file_bytes, min_files)
        except (CommitFailedException, ValidationException) as exc:
            if attempt == attempts:
                raise TransientError(
                    f"{table.name()}: compaction conflicted with concurrent commits "
                    f"{attempts} times; last: {exc}"
                ) from exc
    raise ValueError("attempts must be at least 1")


def _compact_once(table: Table, small_file_bytes: int, min_files: int) -> CompactionReport:
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files

    table.refresh()
    if table.current_snapshot() is None:
        return CompactionReport(0, 0, 0, 0, 0, 0, None)
    groups: dict[str, list[FileScanTask]] = defaultdict(list)
    for task in table.scan().plan_files():
        if task.delete_files or task.file.file_size_in_bytes >= small_file_bytes:
            continue
        groups[_partition_key(task.file)].append(task)
    chosen = {k: v for k, v in groups.items() if len(v) >= min_files}
    if not chosen:
        return CompactionReport(0, 0, 0, 0, 0, 0, None)
    metadata = table.metadata
    sort_columns = _sort_columns(table)
    old: list[DataFile] = []
    new: list[DataFile] = []
    rows = 0
    write_uuid = uuid.uuid4()
    for tasks in chosen.values():
        scan = ArrowScan(metadata, table.io, table.schema(), AlwaysTrue())
        try:
            data = scan.to_table(tasks)
        except (OSError, ValueError) as exc:  # pyarrow's errors for a damaged file
            raise _unreadable(table, scan, tasks, exc) from exc
        if sort_columns and data.num_rows > 1:
            data = data.sort_by([(c, "ascending") for c in sort_columns])
        rows += data.num_rows
        old.extend(t.file for t in tasks)
        if tasks[0].file.spec_id == metadata.default_spec_id:
            like = tasks[0].file
            new.extend(
                write_files(table, data, partition=like.partition, spec_id=like.spec_id,
                            prefix="compacted", zstd_level=SMALL_ZSTD_LEVEL,
                            write_uuid=uuid.uuid5(write_uuid, _partition_key(like)),
                            message_id_rule=True)
            )  # fmt: skip
        else:  # an older partition spec: let pyiceberg re-partition under the current one
            new.extend(_dataframe_to_data_files(metadata, data, table.io, write_uuid=write_uuid))
    # Carry the sink's log position forward: once older snapshots expire, the sink
    # must still find it in a retained one.
    props = {
        **offsets_properties(table),
        PROP_MAINTENANCE: "compaction",
        "k2.compaction.partitions": str(len(chosen)),
    }
    with (
        table.transaction() as tx,
        tx.update_snapshot(snapshot_properties=props).overwrite() as rewrite,
    ):
        for f in old:
            rewrite.delete_data_file(f)
        for f in new:
            rewrite.append_data_file(f)
    snap = table.current_snapshot()
    return CompactionReport(
        partitions=len(chosen),
        files_before=len(old),
        files_after=len(new),
        bytes_before=sum(f.file_size_in_bytes for f in old),
        bytes_after=sum(f.file_size_in_bytes for f in new),
        rows=rows,
        snapshot_id=snap.snapshot_id if snap is not None else None,
    )


def _unreadable(
    table: Table, scan: ArrowScan, tasks: list[FileScanTask], exc: Exception
) -> K2Error:
    """The error for a partition whose files could not be read: which file is damaged
    (each is read alone to find it), and that nothing was changed."""
    for task in tasks:
        try:
            scan.to_table([task])
        except (OSError, ValueError) as file_exc:
            return MaintenanceError(
                f"{'.'.join(table.name())}: data file {task.file.file_path} cannot be read "
                f"({file_exc}): it is corrupt or truncated. Compaction stopped and changed "
                "nothing; restore the file (or remove it from the table), then run it again."
            )
    return TransientError(f"{'.'.join(table.name())}: reading files to compact failed: {exc}")


def expire_snapshots(
    table: Table,
    *,
    keep: timedelta,
    now: Callable[[], datetime] | None = None,
) -> ExpiryReport:
    """Expire snapshots no longer needed to read any instant of the last ``keep``.

    Snapshots committed before ``now() - keep`` are expired, except the newest of them
    (it is the table's state at the window's start) and any snapshot a branch or tag
    points at. ``now`` returns an aware datetime (default: the UTC wall clock).
    """
    current_time = (now or (lambda: datetime.now(UTC)))()
    cutoff = current_time - keep
    cutoff_ms = int(cutoff.timestamp() * 1000)
    table.refresh()
    snaps = sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.snapshot_id))
    before = [s for s in snaps if s.timestamp_ms < cutoff_ms]
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    doomed = [s.snapshot_id for s in before[:-1] if s.snapshot_id not in protected]
    if doomed:
        table.maintenance.expire_snapshots().by_ids(doomed).commit()
    return ExpiryReport(doomed, cutoff, len(snaps) - len(doomed))


def remove_orphan_files(
    table: Table,
    *,
    older_than: timedelta,
    now: Callable[[], datetime] | None = None,
    dry_run: bool = False,
) -> OrphanReport:
    """Delete files under the table's location that no retained snapshot references.

    Only files last modified before ``now() - older_than`` are touched, so files of a
    commit in flight survive; ``*.metadata.json`` files are never touched. Raises
    :class:`MaintenanceError` when the table's file IO cannot list files.
    """
    current_time = (now or (lambda: datetime.now(UTC)))()
    cutoff = current_time - older_than
    table.refresh()
    referenced = _referenced_paths(table)
    fs, root = _filesystem(table)
    from pyarrow import fs as pafs

    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    orphans: list[str] = []
    size = 0
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or info.path.endswith(".metadata.json"):
            continue
        if _normalise(info.path) in referenced:
            continue
        mtime = info.mtime
        if mtime is None or mtime.astimezone(UTC) >= cutoff:
            continue
        orphans.append(info.path)
        size += info.size or 0
    if not dry_run:
        for path in orphans:
            fs.delete_file(path)
    return OrphanReport(sorted(orphans), size, dry_run)


# -- helpers ---------------------------------------------------------------------------


def _partition_key(f: DataFile) -> str:
    values = [f.partition[i] for i in range(len(f.partition))]
    return f"{f.spec_id}:{values!r}"


def _sort_columns(table: Table) -> list[str]:
    schema = table.schema()
    return [schema.find_column_name(field.source_id) or "" for field in table.sort_order().fields]


def _referenced_paths(table: Table) -> set[str]:
    io = table.io
    paths: set[str] = set()
    for snap in table.metadata.snapshots:
        if snap.manifest_list:
            paths.add(_normalise(snap.manifest_list))
        for manifest in snap.manifests(io):
            paths.add(_normalise(manifest.manifest_path))
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                paths.add(_normalise(entry.data_file.file_path))
                # Its minute partials, if K2's writer stored any, live as long as it.
                paths.add(_normalise(minutes_path(entry.data_file.file_path)))
    for stats in table.metadata.statistics:
        paths.add(_normalise(stats.statistics_path))
    return paths


def _filesystem(table: Table) -> tuple[Any, str]:
    from pyiceberg.io.pyarrow import PyArrowFileIO

    io = table.io
    if not isinstance(io, PyArrowFileIO):
        raise MaintenanceError(
            f"{table.name()}: orphan cleanup needs pyiceberg's PyArrowFileIO, got "
            f"{type(io).__name__}"
        )
    scheme, netloc, path = PyArrowFileIO.parse_location(table.location(), io.properties)
    return io.fs_by_scheme(scheme, netloc), path


def _normalise(location: str) -> str:
    """A location as the file system lists it: local path, or ``bucket/key``."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return parsed.path
    return f"{parsed.netloc}{parsed.path}"


@dataclass(frozen=True)
class MaintenanceReport:
    """One :func:`maintain` pass over a table: compaction, expiry, orphan cleanup."""

    table: str
    compaction: CompactionReport
    expiry: ExpiryReport
    orphans: OrphanReport


def maintain(
    table: Table,
    *,
    keep: timedelta,
    orphan_grace: timedelta = timedelta(days=1),
    small_file_bytes: int = DEFAULT_SMALL_FILE_BYTES,
    now: Callable[[], datetime] | None = None,
    dry_run: bool = False,
) -> MaintenanceReport:
    """Compact, then expire snapshots outside the ``keep`` window, then remove orphans.

    The service behind ``k2 maintain``. With ``dry_run`` nothing is changed: the
    compaction and expiry steps are skipped (reported empty) and orphans are only listed.
    """
    clock = now or (lambda: datetime.now(UTC))
    if dry_run:
        empty = CompactionReport(0, 0, 0, 0, 0, 0, None)
        expiry = ExpiryReport([], clock() - keep, len(table.metadata.snapshots))
    else:
        empty = compact(table, small_file_bytes=small_file_bytes)
        expiry = expire_snapshots(table, keep=keep, now=clock)
    orphans = remove_orphan_files(table, older_than=orphan_grace, now=clock, dry_run=dry_run)
    return MaintenanceReport(".".join(table.name()), empty, expiry, orphans)
