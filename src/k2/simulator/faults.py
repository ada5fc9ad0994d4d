"""Delivery faults: what a connection's frames go through between the tape and the socket.

Faults act on copies of the outgoing frames of one connection, never on the tape or
the trade history, so everything lost on the wire can be recovered over REST. Each
connection draws from its own RNG, seeded from the fault seed and the connection's
ordinal, so a run with the same config and connection order is reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from k2.simulator.config import FaultConfig
from k2.simulator.stats import SimulatorStats

__all__ = ["RestFaults", "RestVerdict", "StreamFaults", "corrupt"]


def corrupt(frame: bytes, rng: random.Random) -> bytes:
    """A copy of ``frame`` that is no longer valid JSON but is still ASCII text.

    Two out of three are truncated at a random point (any proper prefix of a JSON
    object is invalid); the rest lose their first ``:``.
    """
    if len(frame) > 2 and rng.random() < 2 / 3:
        return frame[: rng.randrange(1, len(frame) - 1)]
    colon = frame.find(b":")
    if colon < 0:
        return frame[: max(1, len(frame) // 2)]
    return frame[:colon] + frame[colon + 1 :]


class StreamFaults:
    """Drops, duplicates, reorders and corrupts a connection's data frames.

    Order of application per frame: drop, then corrupt, then duplicate; reordering then
    swaps frames of the batch with one 1..``reorder_depth`` positions later.
    """

    def __init__(self, config: FaultConfig, ordinal: int, stats: SimulatorStats) -> None:
        self._config = config
        self._rng = random.Random(f"{config.seed}:{ordinal}")
        self._stats = stats

    def apply(
        self, streams: list[str], frames: list[bytes]
    ) -> tuple[list[str | None], list[bytes]]:
        """Faulted copies of parallel ``streams``/``frames`` lists.

        In the result a stream of ``None`` marks a corrupted frame (it counts as
        malformed, not as a frame of its stream).
        """
        cfg = self._config
        rng = self._rng.random
        out_streams: list[str | None] = []
        out_frames: list[bytes] = []
        stats = self._stats
        for stream, frame in zip(streams, frames, strict=True):
            if cfg.drop and rng() < cfg.drop:
                stats.dropped += 1
                continue
            if cfg.malformed and rng() < cfg.malformed:
                stats.malformed += 1
                out_streams.append(None)
                out_frames.append(corrupt(frame, self._rng))
                continue
            out_streams.append(stream)
            out_frames.append(frame)
            if cfg.duplicate and rng() < cfg.duplicate:
                stats.duplicated += 1
                out_streams.append(stream)
                out_frames.append(frame)
        if cfg.reorder:
            self._reorder(out_streams, out_frames)
        return out_streams, out_frames

    def _reorder(self, streams: list[str | None], frames: list[bytes]) -> None:
        depth = self._config.reorder_depth
        last = len(frames) - 1
        for i in range(last):
            if self._rng.random() < self._config.reorder:
                j = min(last, i + self._rng.randint(1, depth))
                if frames[i] != frames[j]:
                    frames[i], frames[j] = frames[j], frames[i]
                    streams[i], streams[j] = streams[j], streams[i]
                    self._stats.reordered += 1


@dataclass(frozen=True, slots=True)
class RestVerdict:
    """What to do with one REST request: serve it (``status`` 200) or refuse it.

    For 429/418, ``retry_after_s`` is the ``Retry-After`` header value and
    ``banned_until_ms`` (418 only) when the ban ends, UTC milliseconds.
    """

    status: int
    retry_after_s: int = 0
    banned_until_ms: int = 0


class RestFaults:
    """Decides which REST requests get HTTP 429 (and 418 for clients that ignore it).

    Time is taken from the caller (monotonic seconds and wall ms) so the verdicts can
    be driven by an injected clock.
    """

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(f"{config.seed}:rest")
        self._requests = 0
        self._backoff_until = 0.0
        self._ignored = 0
        self._banned_until = 0.0

    def judge(self, now: float, now_ms: int) -> RestVerdict:
        """The verdict for a request arriving at monotonic second ``now``.

        A request inside the Retry-After window of an earlier 429 is refused again (it
        "ignored" the 429); ``rest_418_after`` such requests earn a 418 ban.
        """
        cfg = self._config
        if now < self._banned_until:
            remaining = self._banned_until - now
            return RestVerdict(418, math.ceil(remaining), now_ms + math.ceil(remaining * 1000))
        if now < self._backoff_until:
            self._ignored += 1
            if cfg.rest_418_after is not None and self._ignored >= cfg.rest_418_after:
                self._ignored = 0
                self._banned_until = now + cfg.rest_ban_s
                return RestVerdict(418, cfg.rest_ban_s, now_ms + cfg.rest_ban_s * 1000)
            return RestVerdict(429, math.ceil(self._backoff_until - now))
        self._ignored = 0
        self._requests += 1
        limited = bool(cfg.rest_429_every_n and self._requests % cfg.rest_429_every_n == 0)
        if not limited and cfg.rest_429_share:
            limited = self._rng.random() < cfg.rest_429_share
        if limited:
            self._backoff_until = now + cfg.rest_retry_after_s
            return RestVerdict(429, cfg.rest_retry_after_s)
        return RestVerdict(200)
