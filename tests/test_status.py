"""The status endpoint, over real sockets, driven by a loop shaped like pidone's.

The server runs on 127.0.0.1 port 0 inside a small selector loop in a
background thread, which does what pidone's loop does: ``key.data(mask)`` for
every ready key, ``on_deadline`` once ``next_deadline()`` has passed, and no
timeout at all while there is no deadline.  Tests look at the server's state
only from inside that thread (``Loop.call``, ``Loop.wait_until``), and wait
for conditions, not for time to pass.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pidone import status
from pidone.status import Snapshot, StatusServer

pytestmark = pytest.mark.timeout(30)


class State:
    def __init__(self) -> None:
        self.live = True
        self.ready = True
        self.status: dict[str, object] = {"phase": "running", "app_pid": 42}
        self.calls = 0
        self.fail = False

    def snapshot(self) -> Snapshot:
        self.calls += 1
        if self.fail:
            raise RuntimeError("snapshot broke")
        return Snapshot(self.live, self.ready, self.status)


class Loop:
    """One selector, like pidone's: the server's callbacks plus a wakeup socket."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.register(self.selector)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self._waiters: list[tuple[Callable[[], bool], threading.Event]] = []
        self._stop = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                deadline = self.server.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, mask in self.selector.select(timeout):
                    key.data(mask)
                deadline = self.server.next_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    self.server.on_deadline(time.monotonic())
                self._check_waiters()
        except BaseException as exc:
            self.error = exc
            raise

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            fn()

    def _check_waiters(self) -> None:
        for entry in list(self._waiters):
            predicate, event = entry
            if predicate():
                self._waiters.remove(entry)
                event.set()

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` in the loop thread, between two selects; return its result."""
        result: list[Any] = []
        done = threading.Event()

        def run() -> None:
            result.append(fn())
            done.set()

        self._calls.put(run)
        self._wake_w.send(b"x")
        assert done.wait(timeout), "the loop did not run the call"
        return result[0]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()``, evaluated in the loop thread after each iteration."""
        event = threading.Event()
        self.call(lambda: self._waiters.append((predicate, event)))
        self._wake_w.send(b"x")  # one more iteration, so it is checked at least once
        assert event.wait(timeout), "condition not reached"

    def stop(self) -> None:
        self.call(self.server.close)

        def halt() -> None:
            self._stop = True

        self.call(halt)
        self.thread.join(5)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        assert self.error is None


Served = tuple[StatusServer, Loop, State]


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    loops: list[Loop] = []

    def start(**kwargs: Any) -> Served:
        state = State()
        server = StatusServer("127.0.0.1", 0, state.snapshot, **kwargs)
        loop = Loop(server)
        loops.append(loop)
        return server, loop, state

    yield start
    for loop in loops:
        loop.stop()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    return serve()


# -- client helpers ------------------------------------------------------------------


class Response:
    def __init__(self, raw: bytes) -> None:
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, f"no end of headers in {raw!r}"
        lines = head.decode("latin-1").split("\r\n")
        version, code, _reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        self.status = int(code)
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()


def connect(server: StatusServer, **opts: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for opt, value in opts.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, opt), value)
    sock.settimeout(5)
    sock.connect(server.address)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(server: StatusServer, raw: bytes) -> Response:
    with connect(server) as sock:
        sock.sendall(raw)
        return Response(read_all(sock))


def get(server: StatusServer, path: str, method: str = "GET") -> Response:
    return exchange(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def open_count(loop: Loop) -> int:
    return int(loop.call(lambda: len(loop.server._conns)))


# -- the endpoints -------------------------------------------------------------------


def test_livez(served: Served):
    server, _, state = served
    r = get(server, "/livez")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"].startswith("text/plain")
    state.live = False
    assert get(server, "/livez").status == 503


def test_readyz(served: Served):
    server, _, state = served
    r = get(server, "/readyz")
    assert (r.status, r.body) == (200, b"ok\n")
    state.ready = False
    r = get(server, "/readyz")
    assert r.status == 503
    assert r.body == b"not ready\n"
    assert get(server, "/livez").status == 200  # live and ready are separate


def test_readiness_flips_the_instant_the_snapshot_does(served: Served):
    server, _, state = served
    for ready in (False, True, False, True):
        state.ready = ready
        assert get(server, "/readyz").status == (200 if ready else 503)


def test_snapshot_is_taken_when_the_request_is_complete_not_at_accept(served: Served):
    server, loop, state = served
    with connect(server) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\n")
        loop.wait_until(lambda: any(c.buf for c in server._conns))
        state.ready = False
        sock.sendall(b"\r\n")
        assert Response(read_all(sock)).status == 503
    assert state.calls == 1


def test_status_is_the_snapshot_as_json(served: Served):
    server, _, state = served
    state.status = {"phase": "stopping", "elapsed_s": 1.5, "pids": [1, 2], "odd": object()}
    r = get(server, "/status")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    doc = json.loads(r.body)
    assert doc["phase"] == "stopping"
    assert doc["pids"] == [1, 2]
    assert doc["odd"].startswith("<object")  # unserialisable values as str, not a 500


def test_every_response_closes_and_says_so(served: Served):
    server, _, _ = served
    for path in ("/livez", "/readyz", "/status", "/nope"):
        r = get(server, path)
        assert r.headers["connection"] == "close"
        assert int(r.headers["content-length"]) == len(r.body)
        assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/status", "/nope"])
def test_head_is_get_without_the_body(served: Served, path: str):
    server, _, _ = served
    full = get(server, path)
    head = get(server, path, "HEAD")
    assert head.status == full.status
    assert head.body == b""
    assert head.headers == full.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405(served: Served, method: str):
    server, _, state = served
    r = get(server, "/readyz", method)
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert state.calls == 0  # refused before anything is asked of the loop


def test_405_arrives_even_with_an_unread_request_body(served: Served):
    server, _, _ = served
    body = b"x" * 200_000
    raw = b"POST /status HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert exchange(server, raw).status == 405


@pytest.mark.parametrize("path", ["/", "/nope", "/livez/", "/LIVEZ", "/status.json"])
def test_unknown_paths_are_404(served: Served, path: str):
    server, _, _ = served
    assert get(server, path).status == 404


def test_query_strings_are_ignored(served: Served):
    server, _, state = served
    assert get(server, "/readyz?verbose=1&x").status == 200
    state.ready = False
    assert get(server, "/readyz?").status == 503
    assert get(server, "/status?pretty").status == 200


def test_absolute_form_targets_are_understood(served: Served):
    server, _, _ = served
    assert get(server, "http://127.0.0.1/livez?x=1").status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /livez\r\n\r\n",
        b"GET  /livez HTTP/1.1\r\n\r\n",
        b"GET /livez HTTP/2.0\r\n\r\n",
        b"GET livez HTTP/1.1\r\n\r\n",
        b"GET /livez HTTP/1.1 extra\r\n\r\n",
        b"G(T /livez HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS hello-ish
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
def test_malformed_request_lines_are_400(served: Served, raw: bytes):
    server, _, _ = served
    assert exchange(server, raw).status == 400


def test_lenient_framing_bare_lf_and_leading_blank_lines(served: Served):
    server, _, _ = served
    assert exchange(server, b"GET /livez HTTP/1.0\n\n").status == 200
    assert exchange(server, b"\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n").status == 200


def test_a_request_split_into_single_bytes(served: Served):
    server, _, _ = served
    with connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n":
            sock.send(bytes([byte]))
        assert Response(read_all(sock)).status == 200


def test_http_client_interoperates(served: Served):
    server, _, state = served
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == state.status
    finally:
        conn.close()


def test_a_failing_snapshot_is_a_500_not_a_crash(served: Served):
    server, _, state = served
    state.fail = True
    assert get(server, "/readyz").status == 500
    state.fail = False
    assert get(server, "/readyz").status == 200


# -- bounds --------------------------------------------------------------------------


def test_headers_up_to_8_kib_are_fine(served: Served):
    server, _, _ = served
    start = b"GET /livez HTTP/1.1\r\nX-Pad: "
    pad = b"a" * (status.MAX_HEADER_BYTES - len(start) - 4)
    raw = start + pad + b"\r\n\r\n"
    assert len(raw) == status.MAX_HEADER_BYTES
    assert exchange(server, raw).status == 200


@pytest.mark.parametrize("size", [status.MAX_HEADER_BYTES + 1, 9000, 200_000])
def test_oversized_headers_are_431(served: Served, size: int):
    server, loop, _ = served
    start = b"GET /livez HTTP/1.1\r\nX-Pad: "
    raw = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
    assert exchange(server, raw).status == 431
    loop.wait_until(lambda: not server._conns)


def test_endless_headers_are_cut_off_with_431(served: Served):
    server, _, _ = served
    with connect(server) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\n")
        try:  # the server answers and closes while we are still sending
            for _ in range(100):
                sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert Response(read_all(sock)).status == 431


def test_silent_clients_do_not_delay_anyone(served: Served):
    server, loop, _ = served
    silent = [connect(server) for _ in range(100)]
    try:
        loop.wait_until(lambda: len(server._conns) == 100)
        started = time.monotonic()
        r = get(server, "/readyz")
        assert r.status == 200
        assert time.monotonic() - started < 0.5
    finally:
        for sock in silent:
            sock.close()


def test_slow_clients_do_not_delay_anyone(served: Served):
    server, loop, _ = served
    slow = [connect(server) for _ in range(100)]
    try:
        for sock in slow:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # never finished
        loop.wait_until(lambda: sum(1 for c in server._conns if c.buf) == 100)
        started = time.monotonic()
        assert get(server, "/readyz").status == 200
        assert time.monotonic() - started < 0.5
    finally:
        for sock in slow:
            sock.close()


def test_connections_beyond_the_cap_are_closed_at_once(serve: Callable[..., Served]):
    server, loop, _ = serve(max_connections=5)
    held = [connect(server) for _ in range(5)]
    try:
        loop.wait_until(lambda: len(server._conns) == 5)
        with connect(server) as extra:
            started = time.monotonic()
            assert closed_by_server(extra)
            assert time.monotonic() - started < 2
        assert open_count(loop) == 5
        held.pop().close()
        loop.wait_until(lambda: len(server._conns) == 4)
        assert get(server, "/readyz").status == 200  # a freed slot serves again
    finally:
        for sock in held:
            sock.close()


def test_a_silent_connection_is_closed_at_its_deadline(serve: Callable[..., Served]):
    server, loop, _ = serve(request_timeout=0.3)
    with connect(server) as sock:
        started = time.monotonic()
        loop.wait_until(lambda: len(server._conns) == 1)
        assert loop.call(server.next_deadline) is not None
        assert closed_by_server(sock)
        waited = time.monotonic() - started
    assert 0.25 <= waited < 2
    assert loop.call(server.next_deadline) is None


def test_an_unfinished_request_is_closed_at_its_deadline(serve: Callable[..., Served]):
    server, _, _ = serve(request_timeout=0.3)
    with connect(server) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\n")
        assert closed_by_server(sock)


def test_no_deadline_while_no_connection_is_open(served: Served):
    server, loop, _ = served
    assert loop.call(server.next_deadline) is None
    assert get(server, "/livez").status == 200
    loop.wait_until(lambda: server.next_deadline() is None)


def test_deadlines_come_in_order(serve: Callable[..., Served]):
    server, loop, _ = serve(request_timeout=3.0)
    first = connect(server)
    loop.wait_until(lambda: len(server._conns) == 1)
    earliest = loop.call(server.next_deadline)
    with connect(server):
        loop.wait_until(lambda: len(server._conns) == 2)
        assert loop.call(server.next_deadline) == earliest
        first.close()
        loop.wait_until(lambda: len(server._conns) == 1)
        assert loop.call(server.next_deadline) > earliest


# -- sending -------------------------------------------------------------------------


def test_a_response_bigger_than_the_socket_buffers_is_sent_in_parts(served: Served):
    server, loop, state = served
    state.status = {"blob": "x" * 4_000_000}
    with connect(server, SO_RCVBUF=4096) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n\r\n")
        # The client reads nothing yet: the server must be waiting to write.
        loop.wait_until(lambda: any(c.state == status._WRITING for c in server._conns))
        r = Response(read_all(sock))
    assert r.status == 200
    assert json.loads(r.body) == state.status


def test_a_client_that_stops_reading_is_closed_at_the_deadline(serve: Callable[..., Served]):
    server, loop, state = serve(request_timeout=0.5)
    state.status = {"blob": "x" * 4_000_000}
    with connect(server, SO_RCVBUF=4096) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n\r\n")
        loop.wait_until(lambda: any(c.state == status._WRITING for c in server._conns))
        loop.wait_until(lambda: not server._conns)
    assert loop.call(server.next_deadline) is None


def test_a_client_that_vanishes_mid_response_is_dropped(served: Served):
    server, loop, state = served
    state.status = {"blob": "x" * 4_000_000}
    sock = connect(server, SO_RCVBUF=4096)
    sock.sendall(b"GET /status HTTP/1.1\r\n\r\n")
    loop.wait_until(lambda: any(c.state == status._WRITING for c in server._conns))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST
    loop.wait_until(lambda: not server._conns)
    assert get(server, "/livez").status == 200


# -- binding and lifetime ------------------------------------------------------------


def test_port_0_picks_a_port(served: Served):
    server, _, _ = served
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0


def test_a_port_in_use_is_an_oserror():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            StatusServer("127.0.0.1", taken.getsockname()[1], State().snapshot)


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_a_port_out_of_range_is_an_oserror(port: int):
    with pytest.raises(OSError):
        StatusServer("127.0.0.1", port, State().snapshot)


def test_ipv6_literal(serve: Callable[..., Served]):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    state = State()
    try:
        server = StatusServer("[::1]", 0, state.snapshot)
    except OSError:
        pytest.skip("no IPv6 loopback")
    loop = Loop(server)
    try:
        host, port = server.address
        assert host == "::1"
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
            assert Response(read_all(sock)).status == 200
    finally:
        loop.stop()


def test_close_releases_the_port_and_every_connection():
    state = State()
    server = StatusServer("127.0.0.1", 0, state.snapshot)
    loop = Loop(server)
    address = server.address
    idle = connect(server)
    loop.wait_until(lambda: len(server._conns) == 1)
    loop.stop()
    assert closed_by_server(idle)
    idle.close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=5):
        pass
    # Reusable at once (SO_REUSEADDR), even with connections just closed.
    again = StatusServer(*address, state.snapshot)
    again.close()
