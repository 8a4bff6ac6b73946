#!/usr/bin/env python3
"""A small, standard-library-only web app that shuts down without dropping requests.

It is the app that ``Dockerfile.example`` packages and that the end-to-end tests run under
pidone. Endpoints:

``GET /[?delay=SECONDS]``
    Answers ``hello from webapp`` after an optional delay (at most 30 s), so tests can keep
    requests in flight while the container stops.
``GET /healthz``
    ``200 ok`` while serving, ``503 draining`` once a drain has started.
``POST /drain`` (``GET`` works too)
    Stops accepting new connections (the listening socket is closed, so new clients get a
    clean *connection refused*), lets every in-flight request finish, then answers ``200``.
    This is what ``pidone --drain-http "POST http://127.0.0.1:8080/drain"`` calls before it
    sends the stop signal.

On SIGTERM (or SIGINT) the app does the same drain, waits for in-flight requests and exits 0.

Configuration: ``--host`` (env ``HOST``, default ``127.0.0.1``) and ``--port`` (env ``PORT``,
default ``8080``). ``--access-log`` prints one line per request to stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_DELAY = 30.0
# How long to wait, after new handshakes are blocked, for handshakes already under way to land
# in the accept queue. A loopback handshake takes microseconds; a LAN one well under this.
HANDSHAKE_SETTLE = 0.05


def log(message: str) -> None:
    # One write per line: print() writes the text and its newline apart, and unbuffered
    # (PYTHONUNBUFFERED) another writer's line on the same stream can land in between.
    sys.stderr.write(f"webapp[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def _refuse_new_handshakes(sock: socket.socket) -> object | None:
    """Make the kernel drop incoming SYNs on a listening socket (Linux, best effort).

    Closing a listening socket resets every connection that the kernel has already accepted
    on our behalf but that ``accept()`` has not picked up yet: a client that connected a
    microsecond before ``close()`` would see "connection reset", not "connection refused".
    To close without that race we first attach a classic BPF filter that drops bare SYNs
    (new connection attempts), give handshakes already under way a moment to finish, accept
    everything still queued and only then close. A client whose SYN was dropped retransmits
    it about a second later, finds no listener and gets a clean ECONNREFUSED.

    Returns an object that must stay alive while the filter is attached, or None.
    """
    so_attach_filter = getattr(socket, "SO_ATTACH_FILTER", 26)

    class SockFilter(ctypes.Structure):
        _fields_ = (
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        )

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter)))

    # The filter sees the TCP header at offset 0; byte 13 holds the flags.
    #   ldb [13]; and #0x12 (SYN|ACK); jeq #0x02 (SYN without ACK) -> drop; else accept
    program = (SockFilter * 5)(
        SockFilter(0x30, 0, 0, 13),  # BPF_LD | BPF_B | BPF_ABS
        SockFilter(0x54, 0, 0, 0x12),  # BPF_ALU | BPF_AND | BPF_K
        SockFilter(0x15, 0, 1, 0x02),  # BPF_JMP | BPF_JEQ | BPF_K
        SockFilter(0x06, 0, 0, 0),  # BPF_RET | BPF_K: drop
        SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: accept whole packet
    )
    fprog = SockFprog(len(program), program)
    try:
        sock.setsockopt(socket.SOL_SOCKET, so_attach_filter, bytes(fprog))
    except OSError as exc:
        log(f"could not block new handshakes before closing ({exc}); closing anyway")
        return None
    return (program, fprog)


class DrainableHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that can stop listening while in-flight requests finish."""

    daemon_threads = False  # request threads are joined in server_close()
    block_on_close = True
    # socketserver's default backlog is 5: a burst of new connections overflows it, the kernel
    # drops their SYNs, and a client that retransmits after the listener closed is refused
    # (``pidone rehearse`` with 8 connections found this).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections = 0  # accepted connections not yet fully handled
        self._drainers = 0  # of those, /drain requests waiting for the others
        self._listening_closed = threading.Event()
        self._drain_started = threading.Event()
        self.serving = threading.Event()

    # -- bookkeeping ----------------------------------------------------------------------
    # Connections are counted as soon as they are accepted (before their thread runs), so a
    # drain can never overlook a request that was accepted but has not been parsed yet.

    @property
    def draining(self) -> bool:
        return self._drain_started.is_set()

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        with self._lock:
            self._connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_done()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done()

    def _connection_done(self) -> None:
        with self._lock:
            self._connections -= 1
            self._changed.notify_all()

    def inflight(self) -> int:
        """Requests in flight, not counting /drain calls."""
        with self._lock:
            return self._connections - self._drainers

    def wait_idle(self, timeout: float | None, *, from_drain_request: bool) -> bool:
        """Wait until no request other than /drain calls is in flight."""
        with self._lock:
            if from_drain_request:
                self._drainers += 1
                self._changed.notify_all()
            try:
                return self._changed.wait_for(
                    lambda: self._connections - self._drainers <= 0, timeout
                )
            finally:
                if from_drain_request:
                    self._drainers -= 1

    # -- serving and draining ---------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        self.serving.set()
        super().serve_forever(poll_interval)

    def stop_listening(self) -> None:
        """Stop accepting connections; idempotent and safe to call from any non-serving thread."""
        with self._lock:
            if self._drain_started.is_set():
                first = False
            else:
                self._drain_started.set()
                first = True
        if not first:
            self._listening_closed.wait()
            return
        log("draining: no longer accepting new connections")
        keepalive = _refuse_new_handshakes(self.socket)
        if self.serving.is_set():
            self.shutdown()  # stop the accept loop (returns once serve_forever has returned)
        time.sleep(HANDSHAKE_SETTLE)
        # Serve every connection the kernel already completed for us, then close.
        self.socket.setblocking(False)
        while True:
            try:
                request, client_address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                break
            request.setblocking(True)
            self.process_request(request, client_address)
        self.socket.close()
        del keepalive
        self._listening_closed.set()
        log("listening socket closed")

    def drain(self, timeout: float | None = None, *, from_drain_request: bool = False) -> bool:
        self.stop_listening()
        idle = self.wait_idle(timeout, from_drain_request=from_drain_request)
        log("drained: no request in flight" if idle else "drain timed out with requests in flight")
        return idle


class Handler(BaseHTTPRequestHandler):
    server: DrainableHTTPServer
    server_version = "pidone-webapp/1.0"
    access_log = False

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.access_log:
            super().log_message(format, *args)

    def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/drain":
            try:
                timeout = float(query.get("timeout", ["60"])[0])
            except ValueError:
                timeout = 60.0
            drained = self.server.drain(timeout, from_drain_request=True)
            payload = {"drained": drained}
            self._send(200 if drained else 503, json.dumps(payload) + "\n", "application/json")
            return
        if url.path == "/healthz" and self.command == "GET":
            if self.server.draining:
                self._send(503, "draining\n")
            else:
                self._send(200, "ok\n")
        elif url.path == "/" and self.command == "GET":
            try:
                delay = float(query.get("delay", ["0"])[0])
            except ValueError:
                self._send(400, "delay must be a number\n")
                return
            time.sleep(min(max(delay, 0.0), MAX_DELAY))
            self._send(200, "hello from webapp\n")
        else:
            self._send(404, "not found\n")

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Handler.access_log = args.access_log
    server = DrainableHTTPServer((args.host, args.port), Handler)
    # The stop signals are blocked before any thread exists (threads inherit the mask) and
    # taken with sigwait() by the main thread. A Python handler would be run by the main thread
    # only once it wakes up, and the kernel may deliver the signal to a request thread instead,
    # which does not wake it: a main thread parked in Event.wait() slept through SIGTERM until
    # pidone's grace ran out (``pidone rehearse`` caught it, about one stop in six).
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    serving = threading.Thread(target=server.serve_forever, name="serve", daemon=True)
    serving.start()
    server.serving.wait()
    log(f"listening on http://{args.host}:{server.server_port}")

    signum = signal.sigwait(stop_signals)
    log(f"received {signal.Signals(signum).name}, shutting down gracefully")
    server.drain(timeout=None)
    server.server_close()  # joins any request thread still around
    serving.join(timeout=5)
    log("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
