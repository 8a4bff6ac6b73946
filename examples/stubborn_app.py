#!/usr/bin/env python3
"""A web app that ignores SIGTERM: only SIGKILL stops it.

Some apps do this by accident (a shell script as PID 1 of the app's own tree, a library that
installs ``signal.SIG_IGN``, a process stuck in a loop that never checks its flag). pidone sends
the stop signal, waits out the grace, then SIGKILLs it: ``pidone rehearse`` reports reason
``Killed`` and fails.

    pidone rehearse --load http://127.0.0.1:8080/ --grace 2 -- python examples/stubborn_app.py
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 would drop SYNs of a burst of new connections


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        body = b"still here\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = Server(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))), Handler
    )
    sys.stderr.write(f"stubborn_app: listening on port {server.server_port}\n")  # one write
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
