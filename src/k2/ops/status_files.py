"""Small JSON status files that running stages leave in the run directory.

Each long-running stage (``k2 ingest``, ``k2 sink``, ``k2 serve``, and ``k2 up`` for
the stages it supervises) rewrites ``<run_dir>/<name>.json`` every
``ops.status_interval_s``; ``k2 status`` reads them. A file is replaced atomically
(written beside, then renamed), so a reader never sees half of one, and it carries
``updated_at`` (unix seconds) so a reader can tell a live stage from a dead one's
leftovers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from k2.config import Settings


def run_dir(settings: Settings) -> Path:
    """Where status files and stage locks live (``ops.run_dir`` or ``data_dir/run``)."""
    return settings.ops.run_dir or settings.data_dir / "run"


def status_path(settings: Settings, name: str) -> Path:
    """The status file of stage ``name``."""
    return run_dir(settings) / f"{name}.json"


def write_status(path: Path, payload: dict[str, Any]) -> None:
    """Replace ``path`` with ``payload`` plus ``pid`` and ``updated_at``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**payload, "pid": os.getpid(), "updated_at": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, default=str, separators=(",", ":")))
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The status in ``path``, or ``None`` if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_fresh(status: dict[str, Any] | None, interval_s: float, now: float | None = None) -> bool:
    """Whether ``status`` was written within the last three intervals (and its process
    still exists): the stage that wrote it is alive."""
    if not status:
        return False
    age = (now if now is not None else time.time()) - float(status.get("updated_at", 0))
    if age > 3 * interval_s + 1:
        return False
    pid = status.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True
