"""The simulator's HTTP server: Binance's WebSocket and REST endpoints on one port.

WebSocket paths, as on ``stream.binance.com``: ``/ws`` and ``/ws/<stream>[/<stream>...]``
(raw payloads), ``/stream?streams=<a>/<b>`` (combined ``{"stream","data"}`` frames);
``timeUnit=MICROSECOND`` (any case) switches time fields to microseconds. A URL naming
an invalid stream, more than ``max_streams`` streams or an unknown ``timeUnit`` is
refused with HTTP 400 before the upgrade. REST lives under ``/api/v3`` (see
:mod:`k2.simulator.rest`).

One endpoint is K2's own, not Binance's, for chaos experiments (``k2 chaos
disconnect-exchange``): ``POST /k2/chaos/disconnect?seconds=N`` drops every WebSocket
connection at once (the TCP connection is cut without a close frame, as a network
outage would) and answers new WebSocket upgrades with HTTP 503 for ``N`` seconds, so
clients must back off and reconnect; REST keeps answering, so gaps can be repaired.
A new call replaces the outage in progress (``seconds=0`` ends it). It returns
``{"closed": <connections dropped>, "until": <unix seconds>}``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import WSCloseCode, web

from k2.errors import ConfigError
from k2.ops.log import get_logger
from k2.simulator.clock import Clock, SystemClock
from k2.simulator.config import SimulatorConfig
from k2.simulator.connection import Connection, Hub
from k2.simulator.faults import RestFaults
from k2.simulator.market import SyntheticMarket, run_synthetic
from k2.simulator.replay import Recording, load_recording, run_replay
from k2.simulator.rest import RestApi, symbols_from_recording, symbols_from_specs
from k2.simulator.stats import SimulatorStats
from k2.simulator.streams import is_valid_stream
from k2.simulator.tape import Tape, TradeHistory

__all__ = ["SimulatorServer", "run_simulator"]

_log = get_logger(__name__)

_TIME_UNITS = {"MILLISECOND": False, "MICROSECOND": True}
#: Longest outage the chaos endpoint accepts, in seconds.
_MAX_OUTAGE_S = 3600.0


class SimulatorServer:
    """A local exchange speaking Binance spot's public market-data protocol.

    ``start`` binds ``config.host:config.port`` (0 picks a free port) and starts the
    market (synthetic) or loads the capture (replay; it plays from the first
    subscription). ``stop`` closes every connection (1001) and the listener. Usable as
    ``async with SimulatorServer(config) as server: ...``.
    """

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None):
        self.config = config if config is not None else SimulatorConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.stats = SimulatorStats()
        self.tape = Tape(self.config.tape_capacity)
        self.trades = TradeHistory(self.config.effective_trade_retention)
        self.replay_done = asyncio.Event()
        self._hub = Hub(self.config, self.clock, self.stats, self.tape)
        self._rest = RestApi(
            symbols_from_specs(self.config.symbols) if self.config.mode == "synthetic" else {},
            self.trades,
            self.clock,
            self.stats,
            RestFaults(self.config.faults),
        )
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._port: int | None = None
        self._refuse_until = -math.inf  # on clock.monotonic(): WebSocket upgrades get 503
        self.recording: Recording | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the market, bind the port and start serving.

        Raises ConfigError if the replay capture cannot be loaded or the port cannot be
        bound.
        """
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        config = self.config
        if config.mode == "replay":
            assert config.replay_path is not None
            try:
                self.recording = await asyncio.to_thread(load_recording, config.replay_path)
            except Exception as exc:
                raise ConfigError(f"cannot replay {config.replay_path}: {exc}") from exc
            self._rest.set_symbols(symbols_from_recording(self.recording))
        app = web.Application(middlewares=[self._rest.middleware])
        app.add_routes(self._rest.routes())
        app.add_routes(
            [
                web.get("/ws", self._websocket),
                web.get("/ws/{streams:.*}", self._websocket),
                web.get("/stream", self._websocket),
                web.post("/k2/chaos/disconnect", self._chaos_disconnect),
            ]
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
        self._runner = runner
        self._port = self._bound_port(runner)
        self._start_market()
        _log.info("simulator listening", url=self.ws_url, mode=config.mode)

    async def stop(self) -> None:
        """Close all connections and the listener, and stop the market. Idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        connections = list(self._hub.connections)
        await asyncio.gather(
            *(c.close(WSCloseCode.GOING_AWAY, b"simulator stopping") for c in connections),
            return_exceptions=True,
        )
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            _log.info("simulator stopped", stats=self.stats.snapshot())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def ws_url(self) -> str:
        """Base WebSocket URL, e.g. ``ws://127.0.0.1:8765`` (append ``/ws`` or ``/stream``)."""
        return f"ws://{self._url_host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """Base REST URL, e.g. ``http://127.0.0.1:8765`` (append ``/api/v3/...``)."""
        return f"http://{self._url_host}:{self.port}"

    @property
    def connections(self) -> int:
        """WebSocket connections currently open."""
        return len(self._hub.connections)

    @property
    def _url_host(self) -> str:
        host = self.config.host
        return f"[{host}]" if ":" in host else host

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int:
        for address in runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        raise RuntimeError("the simulator is not listening on a TCP address")

    # -- market -------------------------------------------------------------------------

    def _start_market(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        if config.mode == "synthetic":
            market = SyntheticMarket(
                config, self.tape, self.trades, self.stats, self.clock.time_us()
            )
            self._tasks.append(
                loop.create_task(run_synthetic(market, self.clock, config.tick_interval_s))
            )
        else:
            assert self.recording is not None
            self._tasks.append(loop.create_task(self._replay(self.recording)))

    async def _replay(self, recording: Recording) -> None:
        hub = self._hub
        await run_replay(
            recording,
            self.tape,
            self.trades,
            self.stats,
            self.clock,
            self.config.speed,
            hub.first_subscription,
            hub.wait_for_readers,
        )
        # Everyone subscribed now must have been written the whole tape, and have it
        # out of the transport's buffer, before the replay counts as done.
        await hub.wait_for_readers(self.tape.head)
        await asyncio.gather(*(c.flush() for c in hub.readers()))
        self.replay_done.set()
        _log.info("replay delivered", stats=self.stats.snapshot())

    # -- chaos (K2's own endpoint, not Binance's) -----------------------------------------

    def disconnect_all(self, seconds: float) -> int:
        """Drop every WebSocket connection now (no close frame: clients see 1006) and
        refuse WebSocket upgrades with HTTP 503 for the next ``seconds`` (replacing any
        outage in progress; 0 ends it); REST is unaffected. Returns how many
        connections were dropped."""
        self._refuse_until = self.clock.monotonic() + seconds
        connections = list(self._hub.connections)
        for connection in connections:
            connection.abort()
        self.stats.disconnects_forced += len(connections)
        _log.warning("chaos: dropped every connection", closed=len(connections), seconds=seconds)
        return len(connections)

    def _refusing_for(self) -> float:
        """Seconds WebSocket upgrades are still refused (0 when they are accepted)."""
        return max(0.0, self._refuse_until - self.clock.monotonic())

    async def _chaos_disconnect(self, request: web.Request) -> web.Response:
        raw = request.query.get("seconds", "")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= _MAX_OUTAGE_S:  # also false for NaN
            return web.json_response(
                {"msg": f"seconds must be a number from 0 to {_MAX_OUTAGE_S:.0f}, got {raw!r}"},
                status=400,
            )
        closed = self.disconnect_all(seconds)
        until = self.clock.time_us() / 1e6 + seconds
        return web.json_response({"closed": closed, "until": until})

    def _refused(self, remaining: float) -> web.Response:
        response = web.json_response(
            {"msg": f"K2 simulator: exchange outage (chaos), back in {remaining:.1f} s"},
            status=503,
        )
        response.headers["Retry-After"] = str(math.ceil(remaining))
        return response

    # -- WebSocket ----------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        remaining = self._refusing_for()
        if remaining > 0:
            return self._refused(remaining)
        combined = request.path.startswith("/stream")
        if combined:
            raw_streams = request.query.get("streams", "")
        else:
            raw_streams = request.match_info.get("streams", "")
        streams = list(dict.fromkeys(s for s in raw_streams.split("/") if s))
        unit = request.query.get("timeUnit", "MILLISECOND").upper()
        invalid = [s for s in streams if not is_valid_stream(s)]
        if unit not in _TIME_UNITS:
            return web.json_response(
                {"code": -1100, "msg": f"Invalid timeUnit {unit!r}."}, status=400
            )
        if invalid:
            return web.json_response(
                {"code": -1100, "msg": f"Invalid stream name {invalid[0]!r}."}, status=400
            )
        if len(streams) > self.config.max_streams:
            return web.json_response(
                {"code": -1100, "msg": f"Too many streams; at most {self.config.max_streams}."},
                status=400,
            )
        ws = web.WebSocketResponse(
            autoping=False, compress=False, timeout=2.0, max_msg_size=1 << 16
        )
        writer = await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        if self._refusing_for() > 0:  # an outage began during the handshake
            transport.abort()
            return ws
        connection = Connection(
            self._hub,
            ws,
            writer,
            transport,
            combined=combined,
            micros=_TIME_UNITS[unit],
            streams=streams,
        )
        await connection.run()
        return ws


async def run_simulator(
    config: SimulatorConfig,
    *,
    ready: Callable[[SimulatorServer], None] | None = None,
    clock: Clock | None = None,
) -> None:
    """Run a simulator until cancelled; ``ready(server)`` is called once it listens."""
    async with SimulatorServer(config, clock=clock) as server:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
