"""One client WebSocket: its subscriptions, its cursor on the tape, its faults and timers.

A connection runs three kinds of task:

- the reader answers control messages, enforces Binance's 5-messages-a-second limit
  (closing with 1008 "Too many requests") and handles ping/pong frames;
- the pump reads the tape from the connection's cursor, wraps payloads for combined
  streams, applies delivery faults, frames everything itself and writes up to
  ``send_batch`` frames in one socket write before awaiting the drain;
- timers: the heartbeat (ping every ``ping_interval_s``, drop the connection when no
  matching pong came within ``pong_timeout_s``) and the scheduled faults
  (forced disconnects, ``serverShutdown``).

The :class:`Hub` is what connections share: tape, clock, settings, counters, and the
signals the replay uses for flow control and for knowing when everything was sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Coroutine
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from k2.ops.log import bind_correlation, get_logger
from k2.simulator.clock import Clock
from k2.simulator.config import SimulatorConfig
from k2.simulator.control import ControlState, handle_control
from k2.simulator.faults import StreamFaults
from k2.simulator.stats import SimulatorStats
from k2.simulator.streams import SERVER_SHUTDOWN_STREAM, stream_type
from k2.simulator.tape import Tape
from k2.simulator.wire import COMBINED_SUFFIX, combined_prefix, text_frame_header

__all__ = ["Connection", "Hub"]

_log = get_logger(__name__)

_RATE_WINDOW_S = 1.0
_MAX_SUFFIX_STARTS = 64  # prune the mid-connection subscription table beyond this


class Hub:
    """State shared by the server and all its connections."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Clock,
        stats: SimulatorStats,
        tape: Tape,
    ) -> None:
        self.config = config
        self.clock = clock
        self.stats = stats
        self.tape = tape
        self.connections: set[Connection] = set()
        self.first_subscription = asyncio.Event()
        self._ordinals = 0
        self._disconnects_left = config.faults.max_disconnects
        self._progress: asyncio.Future[None] | None = None

    def next_ordinal(self) -> int:
        """A new connection number (seeds that connection's fault RNG)."""
        self._ordinals += 1
        return self._ordinals

    def take_disconnect(self) -> bool:
        """Consume one forced disconnect from the budget; False when it is spent."""
        if self._disconnects_left is None:
            return True
        if self._disconnects_left <= 0:
            return False
        self._disconnects_left -= 1
        return True

    def notify_progress(self) -> None:
        """Wake coroutines waiting in :meth:`wait_for_readers`."""
        waiter, self._progress = self._progress, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def readers(self) -> list[Connection]:
        """Open connections that are subscribed to at least one stream."""
        return [c for c in self.connections if c.active]

    async def wait_for_readers(self, position: int) -> None:
        """Return once every subscribed connection has read the tape up to ``position``."""
        while any(c.position < position for c in self.readers()):
            if self._progress is None:
                self._progress = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._progress)


class Connection:
    """Serves one accepted WebSocket until it closes.

    ``combined`` selects the ``{"stream":..,"data":..}`` wrapper (``/stream``);
    ``micros`` selects microsecond time fields (``timeUnit=MICROSECOND``); ``streams``
    are the streams named in the URL, subscribed from the start.
    """

    def __init__(
        self,
        hub: Hub,
        ws: web.WebSocketResponse,
        writer: AbstractStreamWriter,
        transport: asyncio.Transport,
        *,
        combined: bool,
        micros: bool,
        streams: list[str],
    ) -> None:
        self._hub = hub
        self._ws = ws
        self._writer = writer
        self._transport = transport
        self._micros = micros
        self.ordinal = hub.next_ordinal()
        self._state = ControlState(combined=combined, subscriptions=dict.fromkeys(streams))
        self._position = hub.tape.head
        self._starts: dict[str, int] = {}
        self._subscribed = asyncio.Event()
        self._closed = False
        self._recent: collections.deque[float] = collections.deque()
        self._outstanding_pings: dict[bytes, float] = {}
        faults = hub.config.faults
        self._faults = (
            StreamFaults(faults, self.ordinal, hub.stats) if faults.stream_faults else None
        )
        self._stream_types: dict[str, str] = {}
        if streams:
            self._on_subscribed()

    @property
    def position(self) -> int:
        """Tape position this connection has read (and written) up to."""
        return self._position

    @property
    def active(self) -> bool:
        """Open and subscribed to at least one stream."""
        return not self._closed and bool(self._state.subscriptions)

    @property
    def subscriptions(self) -> list[str]:
        """Current subscriptions, in the order they were made."""
        return list(self._state.subscriptions)

    async def run(self) -> None:
        """Serve the connection until the client or a fault closes it."""
        hub = self._hub
        hub.connections.add(self)
        hub.stats.connections_opened += 1
        hub.stats.connections_active += 1
        with bind_correlation(conn_id=f"sim-{self.ordinal}"):
            _log.info("connection opened", streams=self.subscriptions, micros=self._micros)
            tasks = [self._spawn(self._pump()), self._spawn(self._heartbeat())]
            faults = hub.config.faults
            if faults.disconnect_every_s is not None:
                tasks.append(self._spawn(self._disconnect_later(faults.disconnect_every_s)))
            if faults.server_shutdown_after_s is not None:
                tasks.append(self._spawn(self._shutdown_later(faults.server_shutdown_after_s)))
            try:
                await self._read()
            finally:
                self._closed = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                hub.connections.discard(self)
                hub.stats.connections_active -= 1
                hub.notify_progress()
                _log.info("connection closed", code=self._ws.close_code)

    async def close(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"") -> None:
        """Close the WebSocket politely (a close frame with ``code``)."""
        self._closed = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close(code=code, message=message)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self._closed = True
        self._transport.abort()

    async def flush(self) -> None:
        """Wait until everything written so far has left the transport's buffer."""
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            return
        high, low = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)  # pauses writing while non-empty
        try:
            await self._writer.drain()
        except ConnectionError:
            return
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    # -- reader ---------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self._ws
        while not ws.closed:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type is WSMsgType.ERROR:
                _log.info("connection error", error=str(ws.exception()))
                return
            if self._over_rate_limit():
                self._hub.stats.rate_limit_disconnects += 1
                _log.warning("control message rate exceeded; closing")
                await self.close(WSCloseCode.POLICY_VIOLATION, b"Too many requests")
                return
            if msg.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self._on_pong(bytes(msg.data))
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._on_control(msg.data)

    def _over_rate_limit(self) -> bool:
        now = self._hub.clock.monotonic()
        recent = self._recent
        recent.append(now)
        while recent and recent[0] <= now - _RATE_WINDOW_S:
            recent.popleft()
        return len(recent) > self._hub.config.max_control_per_s

    async def _on_control(self, data: str | bytes) -> None:
        had_streams = bool(self._state.subscriptions)
        result = handle_control(data, self._state, self._hub.config.max_streams)
        head = self._hub.tape.head
        for name in result.added:
            if had_streams:
                self._starts[name] = head
        if result.added and not had_streams:
            self._position = head  # a first subscription starts at the head
            self._starts.clear()
        if self._state.subscriptions:
            self._on_subscribed()
        else:
            self._subscribed.clear()
        self._hub.stats.control_replies += 1
        with contextlib.suppress(ConnectionError):
            await self._ws.send_frame(result.reply, WSMsgType.TEXT)

    def _on_subscribed(self) -> None:
        self._subscribed.set()
        self._hub.first_subscription.set()

    # -- pump -----------------------------------------------------------------------

    async def _pump(self) -> None:
        hub = self._hub
        tape = hub.tape
        clock = hub.clock
        faults = hub.config.faults
        batch = hub.config.send_batch
        next_stall = (
            clock.monotonic() + faults.stall_every_s if faults.stall_every_s is not None else None
        )
        try:
            while not self._closed:
                if not self._state.subscriptions:
                    await self._subscribed.wait()
                    continue
                if next_stall is not None and clock.monotonic() >= next_stall:
                    hub.stats.stalls += 1
                    await clock.sleep(faults.stall_s)
                    next_stall = clock.monotonic() + (faults.stall_every_s or 0.0)
                    continue
                if self._position >= tape.head:
                    hub.notify_progress()
                    if tape.finished:
                        await self._idle_forever()
                        return
                    await tape.wait_beyond(self._position)
                    continue
                read = tape.read(
                    self._position,
                    self._state.subscriptions,
                    batch,
                    micros=self._micros,
                    starts=self._starts or None,
                )
                self._position = read.next_pos
                if read.lagged:
                    hub.stats.lagged += read.lagged
                if self._starts and len(self._starts) > _MAX_SUFFIX_STARTS:
                    self._starts = {s: p for s, p in self._starts.items() if p > self._position}
                if read.payloads:
                    self._write(read.streams, read.payloads)
                    await self._writer.drain()
                else:
                    await asyncio.sleep(0)  # a long scan without matches must not hog the loop
        except ConnectionError:
            self._closed = True

    async def _idle_forever(self) -> None:
        # A finished tape has nothing more to send; the reader and the heartbeat keep
        # the connection alive until the client or the server closes it.
        await asyncio.Event().wait()

    def _write(self, streams: list[str], payloads: list[bytes]) -> None:
        transport = self._transport
        if transport.is_closing():
            raise ConnectionResetError("transport closed")
        parts: list[bytes] = []
        add = parts.append
        counts: dict[str, int] = {}
        if self._faults is None:
            combined = self._state.combined
            for stream, payload in zip(streams, payloads, strict=True):
                counts[stream] = counts.get(stream, 0) + 1
                if combined:
                    prefix = combined_prefix(stream)
                    add(text_frame_header(len(prefix) + len(payload) + 1))
                    add(prefix)
                    add(payload)
                    add(COMBINED_SUFFIX)
                else:
                    add(text_frame_header(len(payload)))
                    add(payload)
        else:
            frames = [self._wrap(s, p) for s, p in zip(streams, payloads, strict=True)]
            sent_streams, sent_frames = self._faults.apply(streams, frames)
            for stream_or_none, frame in zip(sent_streams, sent_frames, strict=True):
                if stream_or_none is not None:
                    counts[stream_or_none] = counts.get(stream_or_none, 0) + 1
                add(text_frame_header(len(frame)))
                add(frame)
        if parts:
            transport.write(b"".join(parts))
        stats = self._hub.stats
        for stream, count in counts.items():
            kind = self._stream_types.get(stream)
            if kind is None:
                kind = self._stream_types[stream] = stream_type(stream)
            stats.count_sent(kind, count)

    def _wrap(self, stream: str, payload: bytes) -> bytes:
        if self._state.combined:
            return combined_prefix(stream) + payload + COMBINED_SUFFIX
        return payload

    # -- timers ---------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        config = self._hub.config
        clock = self._hub.clock
        next_ping = clock.monotonic() + config.ping_interval_s
        while not self._closed:
            now = clock.monotonic()
            if self._outstanding_pings:
                oldest = min(self._outstanding_pings.values())
                if now - oldest >= config.pong_timeout_s:
                    self._hub.stats.pong_timeouts += 1
                    _log.warning("no pong within timeout; dropping connection")
                    self.abort()
                    return
            if now >= next_ping:
                payload = str(clock.time_us() // 1000).encode()
                self._outstanding_pings[payload] = now
                try:
                    await self._ws.ping(payload)
                except ConnectionError:
                    return
                next_ping = now + config.ping_interval_s
            deadline = next_ping
            if self._outstanding_pings:
                oldest = min(self._outstanding_pings.values())
                deadline = min(deadline, oldest + config.pong_timeout_s)
            await clock.sleep(deadline - now)

    def _on_pong(self, payload: bytes) -> None:
        sent = self._outstanding_pings.get(payload)
        if sent is None:
            return  # unsolicited pongs do not keep a connection alive
        self._outstanding_pings = {p: t for p, t in self._outstanding_pings.items() if t > sent}

    async def _disconnect_later(self, after_s: float) -> None:
        await self._hub.clock.sleep(after_s)
        if self._closed or not self._hub.take_disconnect():
            return
        self._hub.stats.disconnects_forced += 1
        _log.info("fault: forced disconnect")
        self.abort()

    async def _shutdown_later(self, after_s: float) -> None:
        hub = self._hub
        await hub.clock.sleep(after_s)
        if self._closed:
            return
        millis = hub.clock.time_us() // 1000
        event = b'{"e":"serverShutdown","E":%d}' % (hub.clock.time_us() if self._micros else millis)
        frame = combined_prefix(SERVER_SHUTDOWN_STREAM) + event + COMBINED_SUFFIX
        if not self._state.combined:
            frame = event
        with contextlib.suppress(ConnectionError):
            await self._ws.send_frame(frame, WSMsgType.TEXT)
        hub.stats.server_shutdowns_sent += 1
        _log.info("fault: serverShutdown sent")
        await hub.clock.sleep(hub.config.faults.server_shutdown_grace_s)
        await self.close(WSCloseCode.GOING_AWAY, b"server shutdown")
