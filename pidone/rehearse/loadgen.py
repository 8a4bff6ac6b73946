"""The rehearsal's load generator: keep-alive HTTP/1.1 clients in one selector loop.

Why raw non-blocking sockets and ``selectors`` rather than asyncio streams or
an HTTP library: the verdict hangs on *exactly* what happened to each request
on the wire -- was the connection new or reused, did the server close it
before sending a single byte, was the connect refused or reset -- and every
library hides some of that (urllib3 and aiohttp retry and reconnect on their
own, http.client opens connections lazily, asyncio streams turn a reset into
one of several exceptions depending on timing).  Here each of those moments
is one system call whose result we see.  It is also the fastest of the
choices: one ``epoll`` wait serves every connection, a request costs a
``send``, a ``recv`` and a few slices of bytes, and there is no task or
future per request.  One loop also serves pidone's log pipe (see
:mod:`pidone.rehearse.run`), so nothing here uses a thread.

The model is a load balancer's connection pool (RFC 9112 §9.3.1): ``N``
slots, each holding at most one persistent connection, each sending its next
request as soon as the previous one is answered (or when ``rate`` allows).
Before a keep-alive connection is reused, a zero-cost peek checks that the
server has not closed it; if it has, the slot silently opens a new one, as
every client does.  Once new connections are no longer allowed (the load
balancer has deregistered the instance), a slot whose connection closes is
done.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# The request classes, in the order the report lists them.
OK, ERROR_STATUS, REFUSED, IDLE_CLOSED, LOST = range(5)
CLASSES = ("ok", "error_status", "refused", "idle_closed", "lost")

# Methods a client may safely send again (RFC 9110 §9.2.2): the only ones
# retried after an idle keep-alive close.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# After a refused connect, a slot waits this long before trying again: a real
# pool backs off too, and without it a closed port would be hammered by a
# loop that counts thousands of refusals a second and measures nothing.
REFUSED_PAUSE = 0.05
MAX_HEAD = 65536
_RECV = 65536
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_CLOSED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})


class Target(NamedTuple):
    """One ``--load`` endpoint, with its request bytes built once."""

    method: str
    url: str
    host: str
    port: int
    request: bytes

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT

    def describe(self) -> str:
        return f"{self.method} {self.url}"


def parse_target(text: str) -> Target:
    """``[METHOD ]http://HOST[:PORT]/PATH`` -> Target; ValueError with a readable message."""
    method, _, rest = text.strip().partition(" ")
    if not rest:
        method, rest = "GET", method
    rest = rest.strip()
    if not method.isalpha() or not method.isascii():
        raise ValueError(f"{method!r} is not an HTTP method")
    method = method.upper()
    parts = urlsplit(rest)
    if parts.scheme != "http":
        raise ValueError(f"{rest!r}: only http:// URLs can be rehearsed")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{rest!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{rest!r}: no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    netloc = parts.netloc.rpartition("@")[2]
    body = (
        b"" if method in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE") else b"Content-Length: 0\r\n"
    )
    request = (
        (
            f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: pidone-rehearse\r\n"
            "Accept: */*\r\n"
        ).encode("ascii", "strict")
        + body
        + b"\r\n"
    )
    return Target(method, rest, host, port, request)


def _resolve(host: str, port: int) -> tuple[Any, ...]:
    """One address per endpoint, IPv4 first: ``localhost`` is often ::1 first, and most test
    servers listen on 127.0.0.1 only (a browser would try both; a pool keeps one)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    return tuple(found[0])


class Records:
    """Every request: start, end (monotonic), class, target index, status (0: none).

    Parallel lists rather than an object per request: at thousands of
    requests a second this is what keeps the generator cheap.
    """

    def __init__(self) -> None:
        self.start: list[float] = []
        self.end: list[float] = []
        self.kind: list[int] = []
        self.target: list[int] = []
        self.status: list[int] = []

    def add(self, start: float, end: float, kind: int, target: int, status: int) -> None:
        self.start.append(start)
        self.end.append(end)
        self.kind.append(kind)
        self.target.append(target)
        self.status.append(status)

    def __len__(self) -> int:
        return len(self.kind)


class _Response:
    """An incremental HTTP/1.1 response parser: enough for status, framing and keep-alive."""

    __slots__ = ("body_left", "buf", "chunked", "head_done", "keep_alive", "status", "to_eof")

    def __init__(self) -> None:
        self.buf = b""
        self.head_done = False
        self.status = 0
        self.body_left = 0
        self.chunked = False
        self.to_eof = False
        self.keep_alive = True

    def feed(self, data: bytes, head_only: bool) -> bool | None:
        """True: complete; False: keep reading; None: not HTTP (malformed)."""
        self.buf += data
        while not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return None if len(self.buf) > MAX_HEAD else False
            if not self._head(self.buf[:end], head_only):
                return None
            self.buf = self.buf[end + 4 :]
        if self.to_eof:
            return False
        if self.chunked:
            return self._chunks()
        take = min(self.body_left, len(self.buf))
        self.body_left -= take
        self.buf = self.buf[take:]
        return self.body_left == 0

    def _head(self, head: bytes, head_only: bool) -> bool:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            return False
        status = int(code)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        default = b"keep-alive" if version != b"HTTP/1.0" else b"close"
        connection = headers.get(b"connection", default)
        chunked = headers.get(b"transfer-encoding", b"").endswith(b"chunked")
        length_text = headers.get(b"content-length")
        if length_text is not None and not length_text.isdigit():
            return False
        length = None if length_text is None else int(length_text)
        if 100 <= status < 200:  # interim (100 Continue): the real head follows
            return True
        self.head_done = True
        self.status = status
        self.keep_alive = connection != b"close"
        if head_only or status in (204, 304):
            self.body_left = 0
        elif chunked:
            self.chunked = True
        elif length is not None:
            self.body_left = length
        else:  # delimited by the server closing the connection
            self.to_eof = True
            self.keep_alive = False
        return True

    def _chunks(self) -> bool | None:
        while True:
            if self.body_left > 0:  # inside a chunk (its data plus CRLF)
                take = min(self.body_left, len(self.buf))
                self.body_left -= take
                self.buf = self.buf[take:]
                if self.body_left:
                    return False
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            size_text = self.buf[:end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return None
            if size == 0:  # last chunk: trailers end with an empty line
                trailer_end = self.buf.find(b"\r\n\r\n", end)
                return self.buf[end : end + 4] == b"\r\n\r\n" or trailer_end >= 0
            self.buf = self.buf[end + 2 :]
            self.body_left = size + 2


# Slot states
_IDLE, _CONNECTING, _SENDING, _READING, _WAITING, _DONE = range(6)


class _Slot:
    """One pooled connection and the request it is carrying."""

    __slots__ = (
        "fresh",
        "got_bytes",
        "index",
        "on_event",
        "paced",
        "registered",
        "response",
        "sent",
        "sock",
        "started",
        "state",
        "target",
        "wake_at",
    )

    def __init__(self, index: int, target: int) -> None:
        self.index = index
        self.target = target
        self.sock: socket.socket | None = None
        self.registered = 0  # selector events currently registered
        self.state = _IDLE
        self.fresh = False  # the current request opened its connection
        self.started = 0.0
        self.sent = 0
        self.got_bytes = False
        self.response = _Response()
        self.wake_at = 0.0
        self.paced = False
        self.on_event: Callable[[int], None] = lambda _mask: None


class LoadGenerator:
    """``concurrency`` keep-alive connections sending requests to ``targets`` in turn.

    Connections are shared out among the targets (slot ``i`` serves target
    ``i mod len(targets)``).  Drive it with :meth:`poll` from the owner's
    loop; other file descriptors can share :attr:`selector` as long as their
    key data is a callable taking the event mask.
    """

    def __init__(
        self,
        targets: list[Target],
        concurrency: int,
        rate: float | None = None,
        selector: selectors.BaseSelector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = targets
        self.rate = rate
        self.selector = selector or selectors.DefaultSelector()
        self.clock = clock
        self.records = Records()
        self.slots = [_Slot(i, i % len(targets)) for i in range(concurrency)]
        for slot in self.slots:
            slot.on_event = functools.partial(self._on_event, slot)
        self.running = False  # sending new requests
        self.new_connections = True  # False once the load balancer has deregistered us
        self.reconnects = 0  # keep-alive connections found closed before reuse
        self.retries = 0  # idle_closed requests sent again on a new connection
        self.connections = 0  # connections opened (attempted)
        self._next_send = 0.0
        self._addr = {(t.host, t.port): _resolve(t.host, t.port) for t in targets}

    # -- control ---------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        now = self.clock()
        self._next_send = now
        for slot in self.slots:
            if slot.state == _IDLE:
                self._next(slot, now)

    def stop(self) -> None:
        """No new request from now on; requests in flight go on until they end."""
        self.running = False

    def deregister(self) -> None:
        """The load balancer has taken us out: no new connection from now on."""
        self.new_connections = False

    def inflight(self) -> int:
        return sum(1 for s in self.slots if s.state in (_CONNECTING, _SENDING, _READING))

    def abandon(self) -> None:
        """Give up on every request still in flight: each is lost."""
        now = self.clock()
        self.running = False
        for slot in self.slots:
            if slot.state in (_CONNECTING, _SENDING, _READING):
                self._finish(slot, now, LOST, 0, close=True)
            self._close(slot)
            slot.state = _DONE

    def next_deadline(self) -> float | None:
        waits = [s.wake_at for s in self.slots if s.state == _WAITING]
        return min(waits) if waits else None

    def poll(self, timeout: float | None) -> None:
        """Wait for I/O (at most ``timeout``), then handle it and any due slot."""
        deadline = self.next_deadline()
        if deadline is not None:
            left = max(0.0, deadline - self.clock())
            timeout = left if timeout is None else min(timeout, left)
        for key, mask in self.selector.select(timeout):
            key.data(mask)
        if deadline is not None:
            now = self.clock()
            for slot in self.slots:
                if slot.state == _WAITING and slot.wake_at <= now:
                    slot.state = _IDLE
                    self._next(slot, now, paced=slot.paced)

    # -- one slot's life ---------------------------------------------------------

    def _next(self, slot: _Slot, now: float, *, retry: bool = False, paced: bool = False) -> None:
        """Send the slot's next request, if it may (``paced``: its turn under --rate has come)."""
        if not self.running and not retry:
            return
        if self.rate and not retry and not paced:
            if now < self._next_send:
                slot.state = _WAITING
                slot.paced = True
                slot.wake_at = self._next_send
                self._next_send += 1.0 / self.rate
                return
            self._next_send = max(self._next_send, now - 1.0) + 1.0 / self.rate
        if retry:
            self.retries += 1
        slot.response = _Response()
        slot.got_bytes = False
        slot.sent = 0
        slot.started = now
        if slot.sock is not None and not self._still_open(slot.sock):
            self.reconnects += 1
            self._close(slot)
        if slot.sock is not None:
            slot.fresh = False
            self._send(slot)
            return
        if not self.new_connections:
            slot.state = _DONE  # traffic has moved to other instances
            return
        self._connect(slot, now)

    @staticmethod
    def _still_open(sock: socket.socket) -> bool:
        """The check every pooling client makes before reusing a connection."""
        try:
            data = sock.recv(1, _PEEK)
        except BlockingIOError:
            return True  # nothing to read: still open
        except OSError:
            return False
        # EOF (b""): closed.  Unsolicited bytes on an idle connection (a late
        # 408, say) make it unusable too.
        del data
        return False

    def _connect(self, slot: _Slot, now: float) -> None:
        target = self.targets[slot.target]
        family, kind, proto, _, addr = self._addr[(target.host, target.port)]
        try:
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
        except OSError:
            self._finish(slot, now, LOST, 0, close=False)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        slot.sock = sock
        slot.fresh = True
        code = sock.connect_ex(addr)
        if code == 0:
            self._send(slot)
        elif code == errno.EINPROGRESS:
            slot.state = _CONNECTING
            self._watch(slot, selectors.EVENT_WRITE)
        else:
            self._connect_failed(slot, code)

    def _connect_failed(self, slot: _Slot, code: int) -> None:
        now = self.clock()
        if code == errno.ECONNREFUSED:
            self._finish(slot, now, REFUSED, 0, close=True)
        else:
            self._finish(slot, now, LOST, 0, close=True)

    def _on_event(self, slot: _Slot, mask: int) -> None:
        state = slot.state
        if state == _READING:
            self._read(slot)
        elif state == _CONNECTING:
            assert slot.sock is not None
            code = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._connect_failed(slot, code)
            else:
                self._send(slot)
        elif state == _SENDING:
            self._send(slot)
        elif mask & selectors.EVENT_READ:  # idle: the server closed it (or spoke out of turn)
            self.reconnects += 1
            self._close(slot)

    def _send(self, slot: _Slot) -> None:
        assert slot.sock is not None
        request = self.targets[slot.target].request
        try:
            slot.sent += slot.sock.send(request[slot.sent :], _NOSIGNAL)
        except BlockingIOError:
            pass
        except OSError:
            self._closed_early(slot)
            return
        if slot.sent < len(request):
            slot.state = _SENDING
            self._watch(slot, selectors.EVENT_WRITE)
        else:
            slot.state = _READING
            self._watch(slot, selectors.EVENT_READ)

    def _read(self, slot: _Slot) -> None:
        assert slot.sock is not None
        try:
            data = slot.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS and not slot.got_bytes:
                self._closed_early(slot)
            else:
                self._finish(slot, self.clock(), LOST, 0, close=True)
            return
        if not data:
            response = slot.response
            if response.to_eof and response.head_done:
                self._complete(slot, close=True)
            elif not slot.got_bytes:
                self._closed_early(slot)
            else:
                self._finish(slot, self.clock(), LOST, response.status, close=True)
            return
        slot.got_bytes = True
        done = slot.response.feed(data, self.targets[slot.target].method == "HEAD")
        if done is None:
            self._finish(slot, self.clock(), LOST, 0, close=True)
        elif done:
            self._complete(slot, close=not slot.response.keep_alive)

    def _complete(self, slot: _Slot, *, close: bool) -> None:
        status = slot.response.status
        self._finish(slot, self.clock(), OK if status < 500 else ERROR_STATUS, status, close=close)

    def _closed_early(self, slot: _Slot) -> None:
        """The server closed the connection before a single byte of the response."""
        now = self.clock()
        target = self.targets[slot.target]
        if slot.fresh or not target.idempotent:
            self._finish(slot, now, LOST, 0, close=True)
            return
        # The keep-alive race: a client retries this once on a new connection,
        # as long as this instance is still where the load balancer sends it.
        retry = self.new_connections and self.running
        self._finish(slot, now, IDLE_CLOSED, 0, close=True, retry=retry)

    def _finish(  # noqa: PLR0913 - one call site per outcome; keywords keep them readable
        self, slot: _Slot, now: float, kind: int, status: int, *, close: bool, retry: bool = False
    ) -> None:
        self.records.add(slot.started, now, kind, slot.target, status)
        if close:
            self._close(slot)
        slot.state = _IDLE
        if retry:
            self._next(slot, now, retry=True)
        elif kind == REFUSED and self.running:
            slot.state = _WAITING
            slot.paced = False
            slot.wake_at = now + REFUSED_PAUSE
        else:
            self._next(slot, now)

    # -- selector bookkeeping -----------------------------------------------------

    def _watch(self, slot: _Slot, events: int) -> None:
        if slot.registered == events or slot.sock is None:
            return
        if slot.registered:
            self.selector.modify(slot.sock, events, slot.on_event)
        else:
            self.selector.register(slot.sock, events, slot.on_event)
        slot.registered = events

    def _close(self, slot: _Slot) -> None:
        if slot.sock is None:
            return
        if slot.registered:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(slot.sock)
            slot.registered = 0
        slot.sock.close()
        slot.sock = None
