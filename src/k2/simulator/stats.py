"""Counters of what the simulator did, for tests, benchmarks and logs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["SimulatorStats"]


@dataclass
class SimulatorStats:
    """Running totals since the server started (all connections together).

    ``frames_sent`` counts well-formed data frames written, by stream type (``trade``,
    ``bookTicker``, ``depth``...), duplicates included; ``malformed`` frames replaced a
    data frame and are not in ``frames_sent``; ``dropped`` frames were never written.
    ``lagged`` counts events a connection skipped because it fell off the tape.
    """

    frames_sent: dict[str, int] = field(default_factory=dict)
    events_on_tape: int = 0
    control_replies: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    malformed: int = 0
    lagged: int = 0
    stalls: int = 0
    disconnects_forced: int = 0
    server_shutdowns_sent: int = 0
    rate_limit_disconnects: int = 0
    pong_timeouts: int = 0
    connections_opened: int = 0
    connections_active: int = 0
    rest_requests: int = 0
    rest_429s: int = 0
    rest_418s: int = 0

    @property
    def total_frames_sent(self) -> int:
        """Well-formed data frames written, all stream types together."""
        return sum(self.frames_sent.values())

    def count_sent(self, stream_type: str, frames: int) -> None:
        """Add ``frames`` well-formed data frames of ``stream_type``."""
        self.frames_sent[stream_type] = self.frames_sent.get(stream_type, 0) + frames

    def snapshot(self) -> dict[str, object]:
        """A plain, JSON-serialisable copy of every counter."""
        data = asdict(self)
        data["frames_sent"] = dict(self.frames_sent)
        return data
