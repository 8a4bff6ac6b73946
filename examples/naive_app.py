#!/usr/bin/env python3
"""A web app with no graceful shutdown: SIGTERM ends it at once, requests in flight or not.

What ``pidone rehearse`` exists to catch. It keeps connections alive (HTTP/1.1) and has a slow
endpoint, so requests are always in flight when the stop signal comes:

``GET /``            answers at once
``POST /slow``       answers after ``SLOW_S`` seconds (env, default 0.5): an order being placed

It installs no SIGTERM handler, so the default action kills it mid-request: its clients see
their connections reset, and no load balancer can retry a POST for them.

    pidone rehearse --load "POST http://127.0.0.1:8080/slow" -- python examples/naive_app.py
"""

from __future__ import annotations

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = float(os.environ.get("SLOW_S", "0.5"))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 would drop SYNs of a burst of new connections


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(b"hello\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/slow"):
            time.sleep(SLOW_S)
        self._answer(b"order placed\n")


def main() -> int:
    server = Server(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))), Handler
    )
    sys.stderr.write(f"naive_app: listening on port {server.server_port}\n")  # one write
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
