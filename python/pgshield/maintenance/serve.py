"""A Prometheus scrape target: ``GET /metrics`` answers ``pgshield.metrics()``.

Bound to 127.0.0.1 by default (put a proxy or the Prometheus agent next to it); one short
database call per scrape, through the same client as everything else.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgshield.errors import ShieldError
from pgshield.maintenance.ops import metrics_op

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_server(shield: Any, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server (not started: call ``serve_forever``) whose ``/metrics`` reads ``shield``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] not in ("/", "/metrics"):
                self._answer(404, "not found: scrape /metrics\n")
                return
            try:
                body = shield.call(metrics_op())
            except ShieldError as exc:
                self._answer(503, f"pgshield.metrics() failed: {exc}\n")
                return
            self._answer(200, body)

        def _answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would flood the terminal

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
