"""What produced a benchmark run: the machine, the software, the code, the load.

Read from ``/proc``, ``/etc/os-release``, package metadata and the ``.git`` directory
(files only: no ``git`` process), so a run on a fresh clone records its commit. Every
fact degrades to ``"unknown"`` rather than failing a run.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The libraries whose versions decide the numbers (K2's stack and the peers).
LIBRARIES = (
    "pyarrow",
    "msgspec",
    "numpy",
    "pyiceberg",
    "duckdb",
    "arcticdb",
    "pandas",
    "fastapi",
    "uvicorn",
    "websockets",
    "aiohttp",
    "confluent-kafka",
    "fastavro",
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or what ``platform`` knows)."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> str:
    """Total RAM from ``/proc/meminfo``, GiB."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def os_name() -> str:
    """The distribution's ``PRETTY_NAME`` and the kernel release."""
    pretty = "unknown"
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    return f"{pretty}, kernel {platform.release()}"


def load_average() -> str:
    """The 1/5/15-minute load averages (``/proc/loadavg``): other work on the machine."""
    parts = _read("/proc/loadavg").split()
    return " / ".join(parts[:3]) if len(parts) >= 3 else "unknown"


def git_commit(root: Path = ROOT) -> str:
    """The checked-out commit (short hash and branch), read from ``.git`` files."""
    git = root / ".git"
    head = _read(str(git / "HEAD")).strip()
    if not head:
        return "unknown (no .git)"
    if not head.startswith("ref: "):
        return head[:12]
    ref = head[5:]
    branch = ref.removeprefix("refs/heads/")
    sha = _read(str(git / ref)).strip()
    if not sha:
        for line in _read(str(git / "packed-refs")).splitlines():
            if line.endswith(" " + ref):
                sha = line.split()[0]
    return f"{sha[:12]} ({branch})" if sha else f"unknown ({branch}, no commit yet)"


def versions() -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES` (``missing`` when not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def facts() -> dict[str, str]:
    """Everything the header records, as label → value."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "memory": memory_gib(),
        "os": os_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average (1/5/15 min) at start": load_average(),
    }


def stamp() -> str:
    """One line for a results block: when, on what, at which commit."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}, {cpu_model()} ({os.cpu_count()} cores, "
        f"{memory_gib()}), commit {git_commit()}"
    )
