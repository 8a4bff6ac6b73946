"""The health endpoint (``--status-addr HOST:PORT``), served inside pidone's one event loop.

pidone is PID 1: a thread blocked in ``accept`` or ``recv`` could not be
interrupted cleanly at shutdown, would race the loop for the state it
reports, and would change how signals are delivered (they must reach the
main thread's wakeup pipe).  So the server is a handful of non-blocking
sockets registered on the loop's selector, with callbacks as their key data,
and one deadline per connection that the loop folds into its select timeout.
No call here ever blocks; a client that stalls only ever costs its own slot.

Every resource a client can claim is bounded:

* request size: the headers must end within 8 KiB, else 431 and close;
* time: a connection is closed once its deadline (5 s after accept) passes,
  whether it is still sending its request or not reading its response;
* connections: at most 128 at once; beyond that the newest is accepted and
  closed at once.  Leaving it in the backlog instead would keep the listener
  readable, and a level-triggered loop would spin on it.
* descriptors: never more connections than half of pidone's descriptor limit
  (``ulimit -n 64``: 32), so that clients cannot take the descriptors that
  probes, hooks and drains need.

The server is read-only and speaks just enough HTTP/1.x for probes: one
request per connection, ``Connection: close``, no request body is read.
``snapshot()`` is called per request, as the response is built, so a probe
sees the loop's state as it is at that instant.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import re
import selectors
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

MAX_HEADER_BYTES = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 128

_BACKLOG = 128
_RECV_SIZE = 4096
# A flood of connects must not hold the loop in the accept handler: the rest
# are picked up on the next select (the listener stays readable).
_ACCEPT_BATCH = 32
# Out of file descriptors, accept fails at once and the listener stays
# readable: stop watching it for a while rather than spin.
_ACCEPT_PAUSE = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# pidone handles SIGPIPE (to forward it to the app), so a send to a client
# that has gone away must not raise one: it would be taken for the app's.
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)

# RFC 9112 allows bare LF line ends; probes and hand-typed requests use them.
_HEADERS_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/1\.[0-9]")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"

_READING, _WRITING, _LINGERING = 0, 1, 2


class Snapshot(NamedTuple):
    live: bool
    ready: bool
    status: dict[str, object]  # rendered as JSON for /status


class _Conn:
    __slots__ = ("buf", "closed", "data", "deadline", "events", "out", "scanned", "sock", "state")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.scanned = 0
        self.out = memoryview(b"")
        self.state = _READING
        self.events = selectors.EVENT_READ
        self.closed = False
        self.data: Callable[[int], None] = lambda _mask: None


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not request_timeout > 0:
            raise ValueError("request_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.snapshot = snapshot  # replaceable: pidone binds before its loop exists
        self._timeout = request_timeout
        self._max = min(max_connections, _descriptor_room())
        self._selector: selectors.BaseSelector | None = None
        # Every deadline is accept time + the same timeout, so insertion order
        # is deadline order: the first entry is always the earliest deadline.
        self._conns: dict[_Conn, None] = {}
        self._paused_until: float | None = None
        self._listener: socket.socket | None = _listen(host, port)
        self._address = _address(self._listener)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def register(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        if self._listener is not None:
            selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def next_deadline(self) -> float | None:
        first = next(iter(self._conns)).deadline if self._conns else None
        if self._paused_until is None:
            return first
        return self._paused_until if first is None else min(first, self._paused_until)

    def on_deadline(self, now: float) -> None:
        while self._conns:
            conn = next(iter(self._conns))
            if conn.deadline > now:
                break
            self._drop(conn)
        if self._paused_until is not None and now >= self._paused_until:
            self._resume_accepting()

    def close(self) -> None:
        for conn in list(self._conns):
            self._drop(conn)
        self._paused_until = None
        if self._listener is not None:
            self._unregister(self._listener)
            self._listener.close()
            self._listener = None

    # -- accepting -------------------------------------------------------------

    def _on_accept(self, _mask: int) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting()
                    return
                # Linux reports a connection's own network errors (ECONNABORTED,
                # EPROTO, ...) from accept: that one is gone, the next may be fine.
                continue
            if len(self._conns) >= self._max:
                sock.close()
                continue
            self._add(sock)

    def _add(self, sock: socket.socket) -> None:
        # accept() does not pass O_NONBLOCK on to the new socket on Linux.
        sock.setblocking(False)
        conn = _Conn(sock, time.monotonic() + self._timeout)
        conn.data = functools.partial(self._on_conn, conn)
        if self._selector is not None:
            try:
                self._selector.register(sock, conn.events, conn.data)
            except OSError:
                sock.close()
                return
        self._conns[conn] = None

    def _pause_accepting(self) -> None:
        if self._listener is not None and self._paused_until is None:
            self._unregister(self._listener)
            self._paused_until = time.monotonic() + _ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        self._paused_until = None
        if self._listener is not None and self._selector is not None:
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    # -- one connection ----------------------------------------------------------

    def _on_conn(self, conn: _Conn, _mask: int) -> None:
        # A key from the same select() batch may belong to a connection that
        # was closed (and its fd number reused) since: its callback is stale.
        if conn.closed:
            return
        try:
            if conn.state == _READING:
                self._read(conn)
            elif conn.state == _WRITING:
                self._send(conn)
            else:
                self._linger(conn)
        except BlockingIOError:
            pass  # a spurious wakeup; the selector will call again
        except OSError:
            self._drop(conn)

    def _read(self, conn: _Conn) -> None:
        chunk = conn.sock.recv(_RECV_SIZE)
        if not chunk:
            self._drop(conn)
            return
        conn.buf += chunk
        if conn.scanned == 0:
            # RFC 9112 2.2: ignore empty lines before the request line.
            del conn.buf[: len(conn.buf) - len(conn.buf.lstrip(b"\r\n"))]
        end = _HEADERS_END.search(conn.buf, max(0, conn.scanned - 3))
        conn.scanned = len(conn.buf)
        if end is None:
            if len(conn.buf) > MAX_HEADER_BYTES:
                self._respond(conn, _response(431, b"request headers too large\n"))
            return
        if end.end() > MAX_HEADER_BYTES:
            self._respond(conn, _response(431, b"request headers too large\n"))
            return
        head = bytes(conn.buf[: end.start()])
        conn.buf = bytearray()
        self._respond(conn, self._handle(head))

    def _respond(self, conn: _Conn, response: bytes) -> None:
        conn.state = _WRITING
        conn.out = memoryview(response)
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out, _NOSIGNAL)
            except BlockingIOError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            conn.out = conn.out[sent:]
        # Closing now while the client may still be sending (a body, the rest
        # of oversized headers) would answer with a RST that can destroy the
        # response before the client reads it.  Send FIN and read to its EOF.
        conn.sock.shutdown(socket.SHUT_WR)
        conn.state = _LINGERING
        self._watch(conn, selectors.EVENT_READ)

    def _linger(self, conn: _Conn) -> None:
        if not conn.sock.recv(_RECV_SIZE):
            self._drop(conn)

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events != events and self._selector is not None:
            self._selector.modify(conn.sock, events, conn.data)
            conn.events = events

    def _drop(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        del self._conns[conn]
        self._unregister(conn.sock)
        conn.sock.close()
        if self._paused_until is not None:
            self._resume_accepting()  # a descriptor was just freed

    def _unregister(self, sock: socket.socket) -> None:
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)

    # -- HTTP ----------------------------------------------------------------

    def _handle(self, head: bytes) -> bytes:
        line = head.split(b"\n", 1)[0].rstrip(b"\r")
        match = _REQUEST_LINE.fullmatch(line)
        path = _path(match.group(2)) if match else None
        if match is None or path is None:
            return _response(400, b"bad request\n")
        method = match.group(1)
        head_only = method == b"HEAD"
        if path not in (b"/livez", b"/readyz", b"/status"):
            return _response(404, b"not found\n", head_only=head_only)
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"method not allowed\n", extra=("Allow: GET, HEAD",))
        try:
            return _render(path, self.snapshot(), head_only=head_only)
        except Exception:
            # Whatever the snapshot or its rendering does wrong, the health
            # endpoint must never take PID 1 down with it.
            return _response(500, b"internal error\n", head_only=head_only)


def _render(path: bytes, snap: Snapshot, *, head_only: bool) -> bytes:
    if path == b"/livez":
        return _probe(snap.live, b"not live\n", head_only=head_only)
    if path == b"/readyz":
        return _probe(snap.ready, b"not ready\n", head_only=head_only)
    import json

    body = json.dumps(snap.status, default=str).encode() + b"\n"
    return _response(200, body, content_type=_JSON, head_only=head_only)


def _probe(ok: bool, failure: bytes, *, head_only: bool) -> bytes:
    if ok:
        return _response(200, b"ok\n", head_only=head_only)
    return _response(503, failure, head_only=head_only)


def _path(target: bytes) -> bytes | None:
    """The path of a request target, without query or fragment; ``None`` if unusable."""
    if not target.startswith(b"/"):
        scheme, sep, rest = target.partition(b"://")
        if not sep or not scheme.isalpha():
            return None  # '*' (OPTIONS) or garbage
        target = b"/" + rest.partition(b"/")[2]  # absolute form, as sent to proxies
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = _TEXT,
    head_only: bool = False,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        # A cached probe answer would be a lie about the state right now.
        "Cache-Control: no-store",
        "Connection: close",
        *extra,
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def _descriptor_room() -> int:
    """Connections pidone's descriptor limit leaves room for: half of it."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, soft // 2)


def _listen(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        # getaddrinfo would silently wrap it modulo 65536.
        raise OSError(errno.EINVAL, f"port {port} out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # The one possibly blocking call (a DNS lookup for a name), made once,
    # before the loop runs.
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    error: OSError = OSError(errno.EADDRNOTAVAIL, f"no address for {host!r}")
    for family, kind, proto, _name, addr in infos:
        # Python sockets are close-on-exec: the app and the drains never
        # inherit the port.
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error


def _address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])
