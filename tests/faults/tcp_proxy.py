"""A TCP proxy that can cut a dependency off: the storage outages of the fault suite.

K2 is pointed at the proxy instead of the real server (a moto S3 server, PostgreSQL).
While the proxy is *up* it forwards every connection both ways. :meth:`TcpProxy.cut`
takes the dependency away the way a failed server or network does — every live
connection is reset at once, and new ones are either refused (``"refuse"``: nothing
listens on the port any more, as when the server is down) or accepted and left
unanswered (``"blackhole"``: a partition where packets vanish). :meth:`TcpProxy.restore`
brings it back on the same port; connections held in the black hole are then reset,
so a client waiting on one gets an error rather than a half-open socket.

The proxy runs an asyncio loop in a daemon thread; ``cut`` and ``restore`` return once
the change is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal

CutMode = Literal["refuse", "blackhole"]


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` until cut."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)  # fmt: skip
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._mode: CutMode | None = None
        self.port = 0
        #: Connections forwarded, reset by a cut, and turned away while cut.
        self.forwarded = 0
        self.reset = 0
        self.turned_away = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, where clients connect."""
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    def start(self) -> TcpProxy:
        """Listen on a free port and start forwarding."""
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self, mode: CutMode = "refuse") -> None:
        """Reset every live connection and refuse (or black-hole) new ones."""
        self._call(self._cut(mode))

    def restore(self) -> None:
        """Forward again on the same port (black-holed connections are reset)."""
        self._call(self._restore())

    def close(self) -> None:
        """Stop the proxy and reset whatever it still holds."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside the proxy's loop -------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _cut(self, mode: CutMode) -> None:
        self._mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._live):
            _reset(writer)
            self.reset += 1
        self._live.clear()

    async def _restore(self) -> None:
        self._mode = None
        for writer in list(self._held):
            _reset(writer)
        self._held.clear()
        if self._server is None:
            await self._listen()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in [*self._live, *self._held]:
            _reset(writer)
        self._live.clear()
        self._held.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode is not None:  # black hole: accepted, never answered
            self.turned_away += 1
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        self.forwarded += 1
        self._live.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._live.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or a cut link looks."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
