"""BinanceStream against a real local WebSocket server standing in for Binance."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from k2.errors import ConfigError, ExchangeError, TerminalError
from k2.sources.binance import spec
from k2.sources.binance.ws import BinanceStream, FrameBatch
from k2.sources.supervisor import AttemptLimiter, Backoff

TIMEOUT = 10.0


def frame(n: int, stream: str = "btcusdt@trade") -> str:
    """A compact combined-stream frame carrying sequence number ``n``."""
    return json.dumps({"stream": stream, "data": {"e": "trade", "t": n}}, separators=(",", ":"))


def seq(raw: bytes) -> int:
    n: int = json.loads(raw)["data"]["t"]
    return n


@dataclass
class ServerConn:
    """One client connection as the fake exchange sees it."""

    ws: ServerConnection
    path: str
    query: dict[str, list[str]]
    streams: list[str]
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None


class FakeBinance:
    """Speaks Binance's combined-stream control protocol on 127.0.0.1:<free port>.

    Streams containing ``bogus`` are rejected at the handshake (HTTP 400); a
    SUBSCRIBE naming a stream containing ``bad`` gets an error reply.
    """

    def __init__(self) -> None:
        self.conns: list[ServerConn] = []
        self.refuse: list[int] = []  # HTTP statuses for the next handshakes
        self.changed = asyncio.Condition()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeBinance:
        self.server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._check, compression=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if "bogus" in request.path:
            return Response(400, "Bad Request", Headers(), b'{"code":-1100,"msg":"bad"}')
        if self.refuse:
            status = self.refuse.pop(0)
            return Response(status, "Refused", Headers({"Retry-After": "0"}), b"")
        return None

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT), self.changed:
            await self.changed.wait_for(predicate)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        query = parse_qs(parts.query)
        streams = query.get("streams", [""])[0].split("/")
        conn = ServerConn(ws, parts.path, query, [s for s in streams if s])
        self.conns.append(conn)
        await self._notify()
        try:
            async for raw in ws:
                msg = json.loads(raw)
                conn.received.append((time.monotonic(), msg))
                await ws.send(json.dumps(self._reply(conn, msg)))
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()
            await self._notify()

    def _reply(self, conn: ServerConn, msg: dict[str, Any]) -> dict[str, Any]:
        method, params = msg["method"], msg.get("params", [])
        if method == "SUBSCRIBE":
            if any("bad" in p for p in params):
                return {"error": {"code": 2, "msg": "Invalid request: bad stream"}, "id": msg["id"]}
            conn.streams.extend(p for p in params if p not in conn.streams)
            return {"result": None, "id": msg["id"]}
        if method == "UNSUBSCRIBE":
            conn.streams = [s for s in conn.streams if s not in params]
            return {"result": None, "id": msg["id"]}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.streams), "id": msg["id"]}
        return {"error": {"code": 2, "msg": f"unknown method {method}"}, "id": msg["id"]}

    def open_conns(self) -> list[ServerConn]:
        return [c for c in self.conns if not c.closed.is_set()]


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.01, max_s=0.05)


async def collect(
    stream: BinanceStream,
    done: Callable[[list[bytes]], bool],
    *,
    max_frames: int = 10_000,
    on_batch: Callable[[FrameBatch], None] | None = None,
) -> list[bytes]:
    """Frames from ``stream.batches()`` until ``done(frames)`` (or the stream ends)."""
    got: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        async with aclosing(stream.batches(max_frames=max_frames, max_wait_s=0.01)) as it:
            async for batch in it:
                if on_batch is not None:
                    on_batch(batch)
                got.extend(batch.frames)
                if done(got):
                    break
    return got


async def test_combined_url_frames_and_receive_times() -> None:
    ticks = itertools.count(1_700_000_000_000_000)
    async with FakeBinance() as fake:
        stream = BinanceStream(
            fake.url,
            ["btcusdt@trade", "ethusdt@bookTicker"],
            micros=True,
            clock_us=lambda: next(ticks),
            backoff=fast_backoff(),
        )
        async with stream:
            await stream.wait_connected()
            server = fake.conns[0]
            assert server.path == "/stream"
            assert server.streams == ["btcusdt@trade", "ethusdt@bookTicker"]
            assert server.query["timeUnit"] == ["MICROSECOND"]
            # A spaced-out (non-compact) frame takes the slow path but is still data.
            spaced = json.dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "t": 3}})
            for text in (frame(1), frame(2), spaced):
                await server.ws.send(text)
            got: list[FrameBatch] = []

            def keep(batch: FrameBatch) -> None:
                got.append(batch)

            frames = await collect(stream, lambda f: len(f) >= 3, on_batch=keep)
        assert [seq(f) for f in frames] == [1, 2, 3]
        assert all(isinstance(f, bytes) for f in frames)
        times = [t for b in got for t in b.received_us]
        assert times == sorted(times)
        assert times[0] >= 1_700_000_000_000_000
        assert stream.stats.frames_received == 3
        assert stream.stats.connections_opened == 1


async def test_control_replies_are_matched_not_delivered() -> None:
    async with FakeBinance() as fake, BinanceStream(fake.url, ["btcusdt@trade"]) as stream:
        await stream.wait_connected()
        server = fake.conns[0]
        await stream.subscribe(["ethusdt@trade"])
        sent = server.received[-1][1]
        assert sent["method"] == "SUBSCRIBE"
        assert sent["params"] == ["ethusdt@trade"]
        assert isinstance(sent["id"], int)
        assert await stream.list_subscriptions() == ["btcusdt@trade", "ethusdt@trade"]
        with pytest.raises(ExchangeError, match="bad stream") as info:
            await stream.subscribe(["badcoin@trade"])
        assert info.value.code == 2
        assert "badcoin@trade" not in stream.streams
        await stream.unsubscribe(["ethusdt@trade"])
        assert server.streams == ["btcusdt@trade"]
        # Only the data frame reaches consumers; the four replies above did not.
        await server.ws.send(frame(7))
        frames = await collect(stream, lambda f: len(f) >= 1)
        assert [seq(f) for f in frames] == [7]
        assert stream.stats.control_messages_sent == 4
        assert stream.stats.control_errors == 1


async def test_control_messages_respect_the_rate_limit() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["btcusdt@trade"], control_rate_per_s=5)
        async with stream:
            await stream.wait_connected()
            await asyncio.gather(*(stream.subscribe([f"coin{i}usdt@trade"]) for i in range(12)))
        stamps = [t for t, _ in fake.conns[0].received]
        assert len(stamps) == 12
        # Evenly spaced at 1/5 s: 11 gaps of 0.2 s (a little slack for timer granularity).
        assert stamps[-1] - stamps[0] >= 2.0
        window_max = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
        assert window_max <= 6


async def test_streams_are_sharded_and_new_streams_find_room() -> None:
    names = [f"s{i}usdt@trade" for i in range(5)]
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, names, max_streams_per_connection=2)
        async with stream:
            await stream.wait_connected()
            assert sorted(len(c.streams) for c in fake.conns) == [1, 2, 2]
            assert sorted(s for c in fake.conns for s in c.streams) == sorted(names)
            # One stream fits on the connection with room: a SUBSCRIBE, no new connection.
            await stream.subscribe(["x1usdt@trade"])
            assert len(fake.conns) == 3
            assert sorted(len(c.streams) for c in fake.conns) == [2, 2, 2]
            # No room left: a fourth connection carries the next two in its URL.
            await stream.subscribe(["x2usdt@trade", "x3usdt@trade"])
            await fake.wait_for(lambda: len(fake.conns) == 4)
            assert fake.conns[3].streams == ["x2usdt@trade", "x3usdt@trade"]
            assert fake.conns[3].received == []
            assert stream.connections == 4
            # Emptying a connection closes it.
            await stream.unsubscribe(["x2usdt@trade", "x3usdt@trade"])
            await fake.wait_for(lambda: fake.conns[3].closed.is_set())
            assert fake.conns[3].close_code == 1000


async def test_abrupt_close_reconnects_and_resumes() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["btcusdt@trade"], backoff=fast_backoff())
        async with stream:
            await stream.wait_connected()
            first = fake.conns[0]
            for n in range(5):
                await first.ws.send(frame(n))
            frames = await collect(stream, lambda f: len(f) >= 5)
            assert first.ws.transport is not None
            first.ws.transport.abort()  # no close frame: a network failure
            await fake.wait_for(lambda: len(fake.conns) == 2)
            second = fake.conns[1]
            assert second.streams == ["btcusdt@trade"]
            for n in range(5, 10):
                await second.ws.send(frame(n))
            frames += await collect(stream, lambda f: len(f) >= 5)
        assert [seq(f) for f in frames] == list(range(10))
        assert stream.stats.reconnects == 1
        assert stream.stats.connections_opened == 2


async def test_subscriptions_survive_a_reconnect() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["btcusdt@trade"], backoff=fast_backoff())
        async with stream:
            await stream.wait_connected()
            await stream.subscribe(["ethusdt@trade"])
            assert fake.conns[0].ws.transport is not None
            fake.conns[0].ws.transport.abort()
            await fake.wait_for(lambda: len(fake.conns) == 2)
            assert fake.conns[1].streams == ["btcusdt@trade", "ethusdt@trade"]


class Market:
    """Publishes numbered events to every open connection, as Binance does."""

    def __init__(self, fake: FakeBinance) -> None:
        self.fake = fake
        self.published = 0

    async def publish(self, count: int) -> None:
        for _ in range(count):
            text = frame(self.published)
            for conn in self.fake.open_conns():
                # A connection the client has closed: the other one carries the event.
                with suppress(ConnectionClosed):
                    await conn.ws.send(text)
            self.published += 1
            await asyncio.sleep(0.001)  # pacing the producer, not synchronisation


@pytest.mark.parametrize(
    "notice",
    [
        '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}',
        '{"e":"serverShutdown","E":1770123456789}',
    ],
    ids=["combined", "raw"],
)
async def test_server_shutdown_hands_over_without_losing_a_frame(notice: str) -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["btcusdt@trade"], backoff=fast_backoff())
        market = Market(fake)
        async with stream:
            await stream.wait_connected()
            old = fake.conns[0]
            await market.publish(50)
            await old.ws.send(notice)

            async def run_market() -> None:
                while stream.stats.handovers == 0:
                    await market.publish(10)
                await market.publish(50)

            collector = asyncio.create_task(collect(stream, lambda f: False))
            await run_market()
            await stream.stop()  # graceful: ends batches() once everything is delivered
            frames = await collector
        assert {seq(f) for f in frames} == set(range(market.published))
        assert stream.stats.handovers == 1
        assert stream.stats.shutdown_notices == 1
        assert stream.stats.reconnects == 0
        assert old.closed.is_set() and old.close_code == 1000
        assert fake.conns[1].streams == ["btcusdt@trade"]


async def test_max_connection_age_triggers_a_handover() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(
            fake.url, ["btcusdt@trade"], max_connection_age_s=0.3, backoff=fast_backoff()
        )
        market = Market(fake)
        async with stream:
            await stream.wait_connected()

            async def run_market() -> None:
                while stream.stats.handovers == 0:
                    await market.publish(10)
                await market.publish(20)

            collector = asyncio.create_task(collect(stream, lambda f: False))
            await run_market()
            await stream.stop()  # graceful: ends batches() once everything is delivered
            frames = await collector
        assert {seq(f) for f in frames} == set(range(market.published))
        assert stream.stats.handovers >= 1
        assert fake.conns[0].close_code == 1000


async def test_graceful_stop_delivers_everything_sent_before_close() -> None:
    async with FakeBinance() as fake:
        # A small buffer keeps frames queued in the socket when stop() is called.
        stream = BinanceStream(fake.url, ["btcusdt@trade"], max_buffered_frames=50)
        stream.start()
        await stream.wait_connected()
        server = fake.conns[0]
        sent_ok = 0
        enough = asyncio.Event()

        async def flood() -> None:
            nonlocal sent_ok
            try:
                for n in range(20_000):
                    await server.ws.send(frame(n))
                    sent_ok += 1
                    if sent_ok == 2_000:
                        enough.set()
            except ConnectionClosed:
                pass

        producer = asyncio.create_task(flood())
        async with asyncio.timeout(TIMEOUT):
            await enough.wait()
        # At most 50 frames are in our buffer; the rest of the 2,000 are still in transit.
        assert stream.buffered <= 50
        stopper = asyncio.create_task(stream.stop())
        frames = await collect(stream, lambda f: False)  # ends when stop() has drained
        await stopper
        await producer
    numbers = [seq(f) for f in frames]
    assert numbers == list(range(len(numbers)))  # in order, no gap
    assert len(numbers) >= sent_ok  # every frame written before the close frame
    assert server.close_code == 1000


async def test_handshake_rejection_is_terminal() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["bogus@trade"], backoff=fast_backoff())
        with pytest.raises(TerminalError, match="HTTP 400") as info:
            async with stream:
                await collect(stream, lambda f: False)
        assert isinstance(info.value, ExchangeError)
        assert info.value.status == 400
        assert stream.stats.connections_opened == 0


async def test_backpressure_bounds_the_buffer_and_drops_nothing() -> None:
    async with FakeBinance() as fake:
        stream = BinanceStream(fake.url, ["btcusdt@trade"], max_buffered_frames=10)
        sizes: list[int] = []
        async with stream:
            await stream.wait_connected()
            server = fake.conns[0]

            async def flood() -> None:
                for n in range(2_000):
                    await server.ws.send(frame(n))

            producer = asyncio.create_task(flood())
            frames = await collect(
                stream,
                lambda f: len(f) >= 2_000,
                max_frames=1_000,
                on_batch=lambda b: sizes.append(len(b)),
            )
            await producer
        assert [seq(f) for f in frames] == list(range(2_000))
        assert max(sizes) <= 10


async def test_refused_handshakes_are_retried_within_the_attempt_budget() -> None:
    async with FakeBinance() as fake:
        fake.refuse = [429, 503]
        limiter = AttemptLimiter(300, 300.0)
        stream = BinanceStream(
            fake.url, ["btcusdt@trade"], backoff=fast_backoff(), attempt_limiter=limiter
        )
        async with stream:
            await stream.wait_connected()
            assert limiter.in_window() == 3  # every attempt, refused or not, is counted
            assert stream.stats.connections_opened == 1


def test_stream_names_and_combined_url() -> None:
    names = spec.stream_names(["BTCUSDT", "ETHUSDT"], ["trade", "quote"])
    assert names == [
        "btcusdt@trade",
        "btcusdt@bookTicker",
        "ethusdt@trade",
        "ethusdt@bookTicker",
    ]
    url = spec.combined_stream_url(spec.LIVE_WS_URL, names[:2], micros=True)
    assert url == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@bookTicker"
        "&timeUnit=MICROSECOND"
    )
    assert spec.combined_stream_url("ws://h/", ["!miniTicker@arr"]) == (
        "ws://h/stream?streams=!miniTicker@arr"
    )
    with pytest.raises(ConfigError, match="data type"):
        spec.stream_name("BTCUSDT", "depth")
    with pytest.raises(ConfigError, match="stream name"):
        BinanceStream(spec.LIVE_WS_URL, ["btcusdt@trade/ethusdt@trade"])
