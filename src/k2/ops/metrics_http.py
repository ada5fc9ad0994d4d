"""A small ``/metrics`` HTTP endpoint for processes without the API (``k2 ingest``,
``k2 sink``).

:func:`serve_metrics` answers ``GET /metrics`` with the registry's text exposition from
a background thread, like ``prometheus_client.start_http_server``, but it reports the
port it really bound (port 0 picks a free one, which tests need) and
:meth:`MetricsServer.close` stops the thread and releases the socket before returning.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from k2.errors import ConfigError
from k2.ops.log import get_logger

log = get_logger(__name__)

#: Paths answered with the exposition (Prometheus scrapes ``/metrics`` by default).
METRICS_PATHS = frozenset({"/metrics", "/"})


class MetricsServer:
    """A running endpoint: ``host`` and ``port`` as bound. Close it once done (or use
    ``with``); closing twice is harmless."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False
        address: tuple[Any, ...] = server.server_address  # (host, port[, flow, scope])
        self.host: str = str(address[0])
        self.port: int = int(address[1])

    @property
    def url(self) -> str:
        """Where the exposition is served (``http://host:port/metrics``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, wait for the thread, release the socket."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (port 0: any free port; read ``.port``).

    Raises :class:`~k2.errors.ConfigError` when the address cannot be bound (in use,
    not local, no permission).
    """
    handler = _handler_for(registry)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family})
        server: ThreadingHTTPServer = server_class((host, port), handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose a free "
            "port on a local address (0 picks any free port)"
        ) from exc
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="k2-metrics", daemon=True
    )
    thread.start()
    endpoint = MetricsServer(server, thread)
    log.info("metrics_listening", url=endpoint.url)
    return endpoint


def _handler_for(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in METRICS_PATHS:
                self._reply(404, b"not found: metrics are at /metrics\n", "text/plain")
                return
            try:
                body = generate_latest(registry)
            except Exception as exc:  # a broken collector: answer, log, keep serving
                log.error("metrics_render_failed", error=repr(exc))
                self._reply(500, b"metrics could not be rendered; see the log\n", "text/plain")
                return
            self._reply(200, body, CONTENT_TYPE_LATEST)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape is noise; failures are logged above

    return Handler
