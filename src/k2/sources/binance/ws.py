"""Binance combined-stream WebSocket client: raw frames in, batches out.

:class:`BinanceStream` keeps a set of streams flowing for as long as it runs:

- streams are sharded over connections, at most ``max_streams_per_connection`` each;
- frames are read as bytes, never decoded or parsed here (``parse`` does that in batch),
  stamped with their receive time (UTC µs) and appended to one shared buffer, which
  consumers drain with :meth:`BinanceStream.batches`; when the buffer is full the
  readers stop reading from their sockets (TCP backpressure) — nothing is dropped;
- control replies (``{"result": ..., "id": N}``) are matched to pending requests;
  control messages go through a per-connection rate limiter;
- a ``serverShutdown`` event or the connection-age limit triggers a *handover*: a new
  connection is opened for the same streams and the old one is closed only once the
  new one delivers data, so nothing is missed (the overlap yields duplicates, which
  downstream ``message_id`` dedup removes);
- an unexpected close is followed by a reconnect with jittered backoff, within the
  connection-attempt budget, forever; a terminal failure (e.g. HTTP 400 on the
  handshake) ends :meth:`~BinanceStream.batches` with that error;
- :meth:`~BinanceStream.stop` closes every connection with the close handshake,
  delivering every frame that arrived before the server's close frame.

Only one task should iterate :meth:`~BinanceStream.batches` at a time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from k2.errors import (
    ConfigError,
    ConnectionLost,
    ExchangeError,
    K2Error,
    RateLimited,
    TerminalError,
    TransientError,
)
from k2.ops.breaker import CircuitBreaker
from k2.ops.clock import utc_now_us
from k2.ops.log import get_logger, new_correlation_id
from k2.sources.binance import spec
from k2.sources.supervisor import AttemptLimiter, Backoff, RateLimiter, retry

T = TypeVar("T")

_log = get_logger(__name__)

_DATA_PREFIX = b'{"stream":'
# Combined frames whose stream name starts with "!" are market-wide streams or the
# serverShutdown notice; only these leave the fast path.
_BANG_PREFIX = b'{"stream":"!'
# Frames websockets may queue before pausing the socket; our own buffer is the real one.
_WS_QUEUE = (256, 64)


@dataclass(slots=True)
class FrameBatch:
    """Raw frames in arrival order, each with its receive time (UTC µs, same index)."""

    received_us: list[int]
    frames: list[bytes]

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(slots=True)
class StreamStats:
    """Counters since the stream was created."""

    connections_opened: int = 0
    reconnects: int = 0
    handovers: int = 0
    frames_received: int = 0
    """Data frames appended to the buffer (control replies and notices excluded)."""
    bytes_received: int = 0
    """Bytes of every frame received, data or not."""
    control_messages_sent: int = 0
    control_errors: int = 0
    shutdown_notices: int = 0


class _Error(msgspec.Struct, frozen=True):
    code: int | None = None
    msg: str | None = None


class _Envelope(msgspec.Struct, frozen=True):
    """Any non-data frame: a control reply, an error, or an event."""

    id: int | str | None = None
    # An empty Raw means "absent" (msgspec cannot put Raw in a union); JSON null is b"null".
    result: msgspec.Raw = msgspec.Raw()
    error: _Error | None = None
    code: int | None = None
    msg: str | None = None
    e: str | None = None
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    event: msgspec.Raw = msgspec.Raw()


class _Event(msgspec.Struct, frozen=True):
    e: str | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_EVENT = msgspec.json.Decoder(_Event)
_STRINGS = msgspec.json.Decoder(list[str])
_ENCODER = msgspec.json.Encoder()


class _Connection:
    """One physical WebSocket connection and what it is subscribed to."""

    def __init__(self, ws: ClientConnection, streams: list[str], rate_per_s: float) -> None:
        self.id = new_correlation_id("conn")
        self.ws = ws
        self.streams: set[str] = set(streams)
        self.pending: dict[int, asyncio.Future[msgspec.Raw]] = {}
        self.limiter = RateLimiter(rate_per_s, burst=1)
        self.first_data = asyncio.Event()
        self.shutdown_notice = asyncio.Event()
        self.opened_at = asyncio.get_running_loop().time()
        self.reader: asyncio.Task[None] | None = None
        self.ended: K2Error | None = None


class _Shard:
    """A slot of up to ``max_streams_per_connection`` streams, kept on one live connection."""

    def __init__(self, index: int, streams: list[str]) -> None:
        self.index = index
        self.streams: dict[str, None] = dict.fromkeys(streams)
        self.conn: _Connection | None = None
        self.task: asyncio.Task[None] | None = None
        self.live = asyncio.Event()
        self.retire = asyncio.Event()


class BinanceStream:
    """Supervised, sharded Binance combined-stream client.

    ``ws_url`` is a base URL (``spec.LIVE_WS_URL``); ``streams`` are Binance stream
    names (``spec.stream_names``). With ``micros`` every exchange time field arrives in
    microseconds (``timeUnit=MICROSECOND``). ``clock_us`` gives receive times in UTC
    microseconds. The remaining arguments are transport knobs: see each default.

    Use as ``async with BinanceStream(...) as s: async for batch in s.batches(): ...``.
    """

    def __init__(
        self,
        ws_url: str,
        streams: Sequence[str],
        *,
        micros: bool = False,
        max_streams_per_connection: int = spec.MAX_STREAMS_PER_CONNECTION,
        control_rate_per_s: float = spec.MAX_CONTROL_MESSAGES_PER_S,
        control_timeout_s: float = 10.0,
        max_connection_age_s: float = 23.5 * 3600,
        handover_timeout_s: float = 30.0,
        backoff: Backoff | None = None,
        attempt_limiter: AttemptLimiter | None = None,
        clock_us: Callable[[], int] | None = None,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 10.0,
        ping_interval_s: float | None = spec.SERVER_PING_INTERVAL_S,
        ping_timeout_s: float | None = 20.0,
        max_frame_bytes: int = 2**20,
        max_buffered_frames: int = 100_000,
        compression: bool = False,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if max_streams_per_connection < 1:
            raise ConfigError("max_streams_per_connection must be >= 1")
        if max_buffered_frames < 1:
            raise ConfigError("max_buffered_frames must be >= 1")
        if max_connection_age_s <= 0:
            raise ConfigError("max_connection_age_s must be > 0")
        self.ws_url = ws_url
        self.micros = micros
        self.max_streams_per_connection = max_streams_per_connection
        self._control_rate = control_rate_per_s
        self._control_timeout_s = control_timeout_s
        self._max_age_s = max_connection_age_s
        self._handover_timeout_s = handover_timeout_s
        self._backoff = backoff if backoff is not None else Backoff()
        self._breaker = breaker
        self._attempts = (
            attempt_limiter
            if attempt_limiter is not None
            else AttemptLimiter(spec.MAX_CONNECTION_ATTEMPTS, spec.CONNECTION_ATTEMPT_WINDOW_S)
        )
        self._clock_us = clock_us if clock_us is not None else utc_now_us
        self._connect_kwargs: dict[str, Any] = {
            "open_timeout": open_timeout_s,
            "close_timeout": close_timeout_s,
            "ping_interval": ping_interval_s,
            "ping_timeout": ping_timeout_s,
            "max_size": max_frame_bytes,
            "max_queue": _WS_QUEUE,
            "compression": "deflate" if compression else None,
        }
        self._max_buffered = max_buffered_frames
        self.stats = StreamStats()

        self._times: list[int] = []
        self._frames: list[bytes] = []
        self._wake = asyncio.Event()
        self._wake_at = 1
        self._space = asyncio.Event()
        self._draining = False

        self._shards: list[_Shard] = []
        self._assigned: dict[str, _Shard] = {}
        self._sub_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._aux: set[asyncio.Task[Any]] = set()
        self._conns: set[_Connection] = set()
        self._started = False
        self._stopping = False
        self._closed = False
        self._stop_event = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._fatal: TerminalError | None = None

        names = list(dict.fromkeys(spec.validate_stream(s) for s in streams))
        for chunk in _chunks(names, max_streams_per_connection):
            self._add_shard(chunk)

    # --- public API ---------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        """Every stream this client keeps subscribed (restored after reconnects)."""
        return [s for shard in self._shards for s in shard.streams]

    @property
    def connections(self) -> int:
        """Connections currently open (one more than usual during a handover)."""
        return len(self._conns)

    @property
    def buffered(self) -> int:
        """Frames waiting in the buffer."""
        return len(self._frames)

    async def __aenter__(self) -> BinanceStream:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start connecting (idempotent; :meth:`batches` calls it too)."""
        if self._started:
            return
        if self._stopping:
            raise ConfigError("a stopped BinanceStream cannot be restarted")
        self._started = True
        for shard in self._shards:
            self._launch(shard)

    async def batches(
        self, max_frames: int = 10_000, max_wait_s: float = 0.05
    ) -> AsyncGenerator[FrameBatch, None]:
        """Yield buffered frames in arrival order until the stream is stopped.

        A batch is yielded as soon as frames are buffered, holding up to ``max_frames``;
        when fewer are buffered it waits up to ``max_wait_s`` for more. After
        :meth:`stop`, the remaining frames are yielded and the iterator ends. A
        :class:`~k2.errors.TerminalError` that stopped the stream (e.g. the exchange
        rejected the handshake) is raised once the remaining frames are yielded.
        """
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        if not self._stopping:
            self.start()
        fill_target = min(max_frames, self._max_buffered)
        while True:
            if not self._frames:
                if self._closed:
                    if self._fatal is not None:
                        raise self._fatal
                    return
                self._wake_at = 1
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._frames) < fill_target and max_wait_s > 0 and not self._closed:
                self._wake_at = fill_target
                self._wake.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(max_wait_s):
                        await self._wake.wait()
            yield self._take(max_frames)

    async def wait_connected(self) -> None:
        """Wait until every connection is open (starting the stream if needed).

        Raises the TerminalError that stopped the stream, if one did.
        """
        self.start()
        for shard in list(self._shards):
            await self._await_live(shard)

    async def subscribe(self, streams: Sequence[str]) -> None:
        """Add ``streams``; they are restored on every reconnect.

        Streams go to connections with room (a ``SUBSCRIBE`` control message, awaiting
        Binance's reply), the rest to new connections (awaiting their handshake). On a
        connection that is down or being replaced, the stream is applied when its
        successor opens. Raises ExchangeError when Binance rejects the request,
        ConfigError for a malformed name. Streams already subscribed are ignored.
        """
        names = [spec.validate_stream(s) for s in dict.fromkeys(streams)]
        new_shards: list[_Shard] = []
        async with self._sub_lock:
            todo = [s for s in names if s not in self._assigned]
            for shard in list(self._shards):
                if not todo:
                    break
                room = self.max_streams_per_connection - len(shard.streams)
                if room <= 0 or shard.retire.is_set():
                    continue
                chunk, todo = todo[:room], todo[room:]
                for s in chunk:
                    shard.streams[s] = None
                    self._assigned[s] = shard
                try:
                    await self._send_change(shard, "SUBSCRIBE", chunk)
                except ExchangeError:
                    for s in chunk:
                        shard.streams.pop(s, None)
                        self._assigned.pop(s, None)
                    raise
            for chunk in _chunks(todo, self.max_streams_per_connection):
                shard = self._add_shard(chunk)
                new_shards.append(shard)
                if self._started:
                    self._launch(shard)
        for shard in new_shards:
            if self._started:
                await self._await_live(shard)

    async def unsubscribe(self, streams: Sequence[str]) -> None:
        """Remove ``streams`` (``UNSUBSCRIBE``, awaiting the reply); unknown ones are ignored.

        A connection left with no streams is closed gracefully. Raises ExchangeError
        when Binance rejects the request.
        """
        async with self._sub_lock:
            by_shard: dict[int, tuple[_Shard, list[str]]] = {}
            for s in dict.fromkeys(streams):
                shard = self._assigned.pop(s, None)
                if shard is None:
                    continue
                shard.streams.pop(s, None)
                by_shard.setdefault(shard.index, (shard, []))[1].append(s)
            for shard, chunk in by_shard.values():
                if not shard.streams:
                    shard.retire.set()
                    self._shards.remove(shard)
                    if shard.task is not None:
                        self._track(shard.task)
                    continue
                await self._send_change(shard, "UNSUBSCRIBE", chunk)

    async def list_subscriptions(self) -> list[str]:
        """The streams Binance reports for each connection (``LIST_SUBSCRIPTIONS``), in order.

        Raises ConnectionLost if a connection is down (there is no server view to
        report), ExchangeError if Binance rejects the request.
        """
        found: list[str] = []
        for shard in list(self._shards):
            conn = shard.conn
            if conn is None:
                raise ConnectionLost(f"connection {shard.index} is down; cannot list its streams")
            raw = await self._control(conn, "LIST_SUBSCRIPTIONS", None)
            try:
                found.extend(_STRINGS.decode(raw))
            except msgspec.DecodeError as exc:
                raise ExchangeError(f"unexpected LIST_SUBSCRIPTIONS reply: {raw!r}") from exc
        return found

    async def stop(self) -> None:
        """Close every connection gracefully and end :meth:`batches` once drained.

        Each connection performs the close handshake; frames received before the
        server's close frame are all delivered. Idempotent.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop())
        await asyncio.shield(self._stop_task)

    # --- internals: buffer -----------------------------------------------------------

    def _take(self, n: int) -> FrameBatch:
        if len(self._frames) <= n:
            times, frames = self._times, self._frames
            self._times, self._frames = [], []
        else:
            times, frames = self._times[:n], self._frames[:n]
            del self._times[:n]
            del self._frames[:n]
        self._space.set()
        return FrameBatch(times, frames)

    async def _read(self, conn: _Connection) -> None:
        """Move frames from the socket to the buffer until the connection closes."""
        recv = conn.ws.recv
        clock = self._clock_us
        stats = self.stats
        log = _log.bind(conn_id=conn.id)
        try:
            while True:
                if len(self._frames) >= self._max_buffered and not self._draining:
                    # Not reading lets the socket fill, so TCP slows the sender down.
                    self._space.clear()
                    if len(self._frames) >= self._max_buffered and not self._draining:
                        await self._space.wait()
                    continue
                frame = await recv(decode=False)
                now = clock()
                stats.bytes_received += len(frame)
                if frame.startswith(_DATA_PREFIX) and not frame.startswith(_BANG_PREFIX):
                    self._append(conn, now, frame)
                else:
                    self._other_frame(conn, now, frame, log)
        except ConnectionClosedOK as exc:
            conn.ended = ConnectionLost(f"closed normally ({_close_text(exc)})")
        except ConnectionClosed as exc:
            conn.ended = ConnectionLost(f"connection lost ({_close_text(exc)})")
        finally:
            self._conns.discard(conn)
            ended = conn.ended if conn.ended is not None else ConnectionLost("reader stopped")
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(ended)
            log.info("connection reader ended", reason=str(ended))

    def _append(self, conn: _Connection, now: int, frame: bytes) -> None:
        self._times.append(now)
        self._frames.append(frame)
        self.stats.frames_received += 1
        if not conn.first_data.is_set():
            conn.first_data.set()
            # Data flowing proves the endpoint healthy: later failures start afresh.
            self._backoff.reset()
        if len(self._frames) >= self._wake_at:
            self._wake.set()

    def _other_frame(self, conn: _Connection, now: int, frame: bytes, log: Any) -> None:
        try:
            env = _ENVELOPE.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Not a control message we know: it is data for the parser to judge.
            self._append(conn, now, frame)
            return
        if _is_shutdown(env):
            self.stats.shutdown_notices += 1
            log.warning("serverShutdown received; handing over to a new connection")
            conn.shutdown_notice.set()
            return
        if env.stream is not None:
            self._append(conn, now, frame)
            return
        err_code, err_msg = None, None
        if env.error is not None:
            err_code, err_msg = env.error.code, env.error.msg
        elif env.code is not None and env.msg is not None:
            err_code, err_msg = env.code, env.msg
        if err_msg is not None or env.error is not None:
            self.stats.control_errors += 1
            fut = conn.pending.get(env.id) if isinstance(env.id, int) else None
            error = ExchangeError(
                f"Binance rejected control request id={env.id}: {err_msg} (code {err_code})",
                code=err_code,
            )
            if fut is not None and not fut.done():
                fut.set_exception(error)
            else:
                log.error("unmatched control error", id=env.id, code=err_code, msg=err_msg)
            return
        if len(env.result) and env.id is not None:
            fut = conn.pending.get(env.id) if isinstance(env.id, int) else None
            if fut is not None and not fut.done():
                fut.set_result(env.result)
            else:
                log.warning("control reply with no pending request", id=env.id)
            return
        self._append(conn, now, frame)

    # --- internals: control ----------------------------------------------------------

    async def _control(
        self, conn: _Connection, method: str, params: list[str] | None
    ) -> msgspec.Raw:
        """Send one control message (rate limited) and return Binance's ``result``."""
        req_id = next(self._ids)
        message: dict[str, Any] = {"method": method, "id": req_id}
        if params is not None:
            message["params"] = params
        fut: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        conn.pending[req_id] = fut
        try:
            await conn.limiter.acquire()
            try:
                await conn.ws.send(_ENCODER.encode(message).decode())
            except ConnectionClosed as exc:
                raise ConnectionLost(f"{method} not sent: {_close_text(exc)}") from exc
            self.stats.control_messages_sent += 1
            try:
                async with asyncio.timeout(self._control_timeout_s):
                    return await fut
            except TimeoutError:
                raise TransientError(
                    f"no reply to {method} id={req_id} within {self._control_timeout_s}s"
                ) from None
        finally:
            conn.pending.pop(req_id, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: an unawaited failure is not an error to log

    async def _send_change(self, shard: _Shard, method: str, chunk: list[str]) -> None:
        conn = shard.conn
        if conn is None:
            return  # the next connection's URL carries the shard's streams
        try:
            await self._control(conn, method, chunk)
        except ExchangeError:
            raise
        except TransientError as exc:
            _log.warning(
                "control change not confirmed; the reconnect will apply it",
                method=method,
                conn_id=conn.id,
                error=str(exc),
            )
            return
        if method == "SUBSCRIBE":
            conn.streams.update(chunk)
        else:
            conn.streams.difference_update(chunk)

    async def _install(self, shard: _Shard, conn: _Connection) -> None:
        """Make ``conn`` the shard's connection, applying changes made while it opened.

        Holding the subscription lock means a concurrent subscribe lands either before
        (and is reconciled here) or after (and is sent to ``conn``) — never lost.
        """
        async with self._sub_lock:
            shard.conn = conn
            shard.live.set()
            missing = [s for s in shard.streams if s not in conn.streams]
            extra = sorted(conn.streams.difference(shard.streams))
            try:
                if missing:
                    await self._control(conn, "SUBSCRIBE", missing)
                    conn.streams.update(missing)
                if extra:
                    await self._control(conn, "UNSUBSCRIBE", extra)
                    conn.streams.difference_update(extra)
            except ExchangeError as exc:
                _log.error("Binance rejected restoring streams", conn_id=conn.id, error=str(exc))
                for s in missing:
                    shard.streams.pop(s, None)
                    self._assigned.pop(s, None)
            except TransientError as exc:
                _log.warning("restoring streams interrupted", conn_id=conn.id, error=str(exc))

    # --- internals: connections ------------------------------------------------------

    def _add_shard(self, streams: list[str]) -> _Shard:
        index = max((s.index for s in self._shards), default=-1) + 1
        shard = _Shard(index, streams)
        self._shards.append(shard)
        for s in streams:
            self._assigned[s] = shard
        return shard

    def _launch(self, shard: _Shard) -> None:
        name = f"binance-shard-{shard.index}"
        shard.task = asyncio.create_task(self._run_shard(shard), name=name)

    async def _await_live(self, shard: _Shard) -> None:
        live = asyncio.ensure_future(shard.live.wait())
        assert shard.task is not None
        try:
            await asyncio.wait({live, shard.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        if not shard.live.is_set() and self._fatal is not None:
            raise self._fatal

    async def _open(self, shard: _Shard) -> _Connection:
        """One connection attempt (within the attempt budget), errors translated."""
        await self._attempts.acquire()
        streams = list(shard.streams)
        url = spec.combined_stream_url(self.ws_url, streams, self.micros)
        try:
            ws = await connect(url, **self._connect_kwargs)
        except InvalidStatus as exc:
            raise _status_error(exc) from exc
        except InvalidURI as exc:
            raise ConfigError(f"invalid WebSocket URL {self.ws_url!r}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectionLost(f"cannot connect to {self.ws_url}: {exc!r}") from exc
        conn = _Connection(ws, streams, self._control_rate)
        self._conns.add(conn)
        conn.reader = asyncio.create_task(self._read(conn), name=f"binance-reader-{conn.id}")
        self.stats.connections_opened += 1
        _log.info(
            "connection opened",
            conn_id=conn.id,
            shard=shard.index,
            streams=len(streams),
            micros=self.micros,
        )
        return conn

    async def _open_supervised(self, shard: _Shard) -> _Connection | None:
        """Open a connection, retrying transient failures forever; None once stopping."""

        def note(attempt: int, exc: TransientError, delay: float) -> None:
            _log.warning(
                "connect failed; will retry",
                shard=shard.index,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=str(exc),
            )

        breaker = self._breaker

        def attempt() -> Awaitable[_Connection]:
            # Through the exchange's circuit breaker, if any: while it is open, an
            # attempt fails at once (CircuitOpen, transient) and retry() backs off.
            return breaker.acall(self._open, shard) if breaker else self._open(shard)

        opening = retry(
            attempt,
            backoff=self._backoff,
            on_retry=note,
            what=f"binance connect shard {shard.index}",
        )
        return await self._unless_stopping(shard, opening)

    async def _unless_stopping(self, shard: _Shard, aw: Awaitable[T]) -> T | None:
        """Await ``aw`` unless the stream stops or the shard retires first."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop_event.wait())
        retire = asyncio.ensure_future(shard.retire.wait())
        try:
            await asyncio.wait({task, stop, retire}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            retire.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            return None
        result = task.result()
        if isinstance(result, _Connection) and (self._stopping or shard.retire.is_set()):
            await self._close(result, "stopping")
            return None
        return result

    async def _run_shard(self, shard: _Shard) -> None:
        log = _log.bind(shard=shard.index)
        try:
            first = True
            while not self._stopping and not shard.retire.is_set():
                if not first:
                    self.stats.reconnects += 1
                first = False
                conn = await self._open_supervised(shard)
                if conn is None:
                    return
                await self._serve(shard, conn)
                if self._stopping or shard.retire.is_set():
                    return
                delay = self._backoff.next_delay()
                log.warning("connection lost; reconnecting", delay_s=round(delay, 3))
                await self._unless_stopping(shard, asyncio.sleep(delay))
        except TerminalError as exc:
            log.error("terminal error; stopping the stream", error=str(exc))
            self._fail(exc)

    async def _serve(self, shard: _Shard, conn: _Connection) -> None:
        """Run ``conn`` (and its successors after handovers) until it is lost or stopped."""
        loop = asyncio.get_running_loop()
        await self._install(shard, conn)
        try:
            while True:
                assert conn.reader is not None
                notice = asyncio.ensure_future(conn.shutdown_notice.wait())
                stop = asyncio.ensure_future(self._stop_event.wait())
                retire = asyncio.ensure_future(shard.retire.wait())
                age_left = conn.opened_at + self._max_age_s - loop.time()
                try:
                    done, _ = await asyncio.wait(
                        {conn.reader, notice, stop, retire},
                        timeout=max(0.0, age_left),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    for fut in (notice, stop, retire):
                        fut.cancel()
                if self._stopping or shard.retire.is_set():
                    await self._close(conn, "stopping")
                    return
                if conn.reader in done:
                    _log.warning(
                        "connection ended",
                        conn_id=conn.id,
                        shard=shard.index,
                        reason=str(conn.ended),
                    )
                    return
                reason = "serverShutdown" if notice in done else "max connection age"
                successor = await self._handover(shard, conn, reason)
                if successor is None:
                    await self._close(conn, "stopping")
                    return
                conn = successor
        finally:
            shard.conn = None
            shard.live.clear()

    async def _handover(self, shard: _Shard, old: _Connection, reason: str) -> _Connection | None:
        """Open a successor for ``old``; close ``old`` once the successor delivers data."""
        _log.info("handover starting", conn_id=old.id, shard=shard.index, reason=reason)
        new = await self._open_supervised(shard)
        if new is None:
            return None
        assert new.reader is not None
        first = asyncio.ensure_future(new.first_data.wait())
        try:
            done, _ = await asyncio.wait(
                {first, new.reader},
                timeout=self._handover_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            first.cancel()
        if not done:
            _log.warning(
                "handover: successor delivered no data in time; closing the old one anyway",
                conn_id=new.id,
                timeout_s=self._handover_timeout_s,
            )
        await self._install(shard, new)
        self._track(asyncio.create_task(self._close(old, f"handover ({reason})")))
        self.stats.handovers += 1
        _log.info("handover complete", old_conn_id=old.id, conn_id=new.id, shard=shard.index)
        return new

    async def _close(self, conn: _Connection, why: str) -> None:
        """Close handshake, then wait for the reader to deliver everything before it."""
        _log.info("closing connection", conn_id=conn.id, why=why)
        try:
            await conn.ws.close()
            if conn.reader is not None:
                await conn.reader
        finally:
            self._conns.discard(conn)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._aux.add(task)
        task.add_done_callback(self._aux.discard)

    def _fail(self, exc: TerminalError) -> None:
        if self._fatal is None:
            self._fatal = exc
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self._draining = True  # let readers run free so close handshakes can complete
        self._space.set()
        self._stop_event.set()
        current = asyncio.current_task()
        tasks = [s.task for s in self._shards if s.task is not None and s.task is not current]
        tasks += list(self._aux)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # Connections orphaned by a failure mid-handover still get a graceful close.
        leftovers = [self._close(conn, "stopping") for conn in list(self._conns)]
        results += await asyncio.gather(*leftovers, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                _log.error("error while stopping", error=repr(result))
        self._closed = True
        self._wake.set()
        _log.info("stream stopped", **_stats_fields(self.stats))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _is_shutdown(env: _Envelope) -> bool:
    if env.e == spec.SERVER_SHUTDOWN_EVENT or env.stream == spec.SERVER_SHUTDOWN_STREAM:
        return True
    for inner in (env.data, env.event):
        if len(inner):
            try:
                if _EVENT.decode(inner).e == spec.SERVER_SHUTDOWN_EVENT:
                    return True
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
    return False


def _close_text(exc: ConnectionClosed) -> str:
    frame = exc.rcvd if exc.rcvd is not None else exc.sent
    if frame is None:
        return "no close frame"
    return f"code {frame.code}" + (f", reason {frame.reason!r}" if frame.reason else "")


def _status_error(exc: InvalidStatus) -> K2Error:
    status = exc.response.status_code
    body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
    retry_after = _retry_after(exc.response.headers.get("Retry-After"))
    if status == 429:
        return RateLimited(f"handshake rate limited (HTTP 429) {body}", retry_after)
    if status == 418:
        return RateLimited(f"IP banned (HTTP 418) {body}", retry_after, banned=True)
    if status >= 500:
        return ConnectionLost(f"handshake failed with HTTP {status} {body}")
    return ExchangeError(
        f"Binance rejected the WebSocket handshake with HTTP {status}: check the URL and "
        f"stream names {body}".rstrip(),
        status=status,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _stats_fields(stats: StreamStats) -> dict[str, int]:
    return {name: getattr(stats, name) for name in StreamStats.__dataclass_fields__}
