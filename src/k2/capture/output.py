"""The capture pipeline's output interface, and what it hands over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from k2.quality.rejects import Reject


@dataclass
class OutputBatch:
    """What one step of the pipeline hands to its output, all at once.

    ``trades``/``quotes`` are canonical batches (possibly empty); each reject carries
    the data type it was meant to be (``None`` when the frame was unreadable).
    """

    trades: pa.RecordBatch | None = None
    quotes: pa.RecordBatch | None = None
    rejects: list[Reject] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)


class CaptureOutput(Protocol):
    """Where captured records go: an NDJSON file, or the log (``k2 ingest``)."""

    async def write(self, batch: OutputBatch) -> None:
        """Persist ``batch``; on return it is as durable as the output promises (the
        log: durable; the capture pipeline takes no further frames until then)."""
        ...

    async def flush(self) -> None:
        """Push everything written so far to its destination."""
        ...
