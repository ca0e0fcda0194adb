"""The HTTP endpoint: /metrics (prometheus_client), /healthz, /readyz.

A threaded WSGI server in a daemon thread: each scrape gets its own thread and
only reads the collectors' last built families, so a slow or stuck client
never holds up collection.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Readiness = Callable[[], tuple[bool, str]]


class ExportError(Exception):
    """The endpoint cannot be served (e.g. the port is taken); str() names the address."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


INDEX = b"""<html><head><title>bpfnfs</title></head><body><h1>bpfnfs</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a> &middot;
<a href="/readyz">/readyz</a></p></body></html>
"""


def make_app(registry: CollectorRegistry, ready: Readiness) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", text)
            return [b"ok\n"]
        if path == "/readyz":
            ok, why = ready()
            start_response("200 OK" if ok else "503 Service Unavailable", text)
            return [(why + "\n").encode()]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [INDEX]
        start_response("404 Not Found", text)
        return [b"not found\n"]

    return app


class MetricsServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Readiness) -> None:
        self.host, self.port = host, port
        cls = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(
                host, port, make_app(registry, ready), server_class=cls, handler_class=_QuietHandler
            )
        except OSError as e:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if e.errno == errno.EADDRINUSE:
                raise ExportError(f"--listen {where}: address already in use (another bpfnfs?)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ExportError(f"--listen {where}: no such local address") from None
            if e.errno == errno.EACCES:
                raise ExportError(f"--listen {where}: permission denied for this port") from None
            raise ExportError(f"--listen {where}: {e.strerror}") from None
        self.port = self._httpd.server_address[1]  # the real one when port 0 was asked for
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="bpfnfs-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
