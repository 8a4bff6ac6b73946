"""HTTP load for the end-to-end tests: ``pidone rehearse``'s own load generator.

:class:`pidone.rehearse.loadgen.LoadGenerator` keeps one connection per slot (the example
apps answer HTTP/1.0 with ``Connection: close``, so each request opens a new one), sends the
next request as soon as the previous one is answered, and classifies every request from
what happened on the wire: ``ok``, ``refused`` (ECONNREFUSED: nothing listens any more, the
clean way for a stopping app to turn clients away), or a failure (``lost``: reset, timeout,
incomplete answer; ``error_status``: 5xx; ``idle_closed``). A thread drives its selector
loop while the test stops the container.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from pidone.rehearse.loadgen import CLASSES, OK, REFUSED, LoadGenerator, parse_target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Load:
    """One slot per request duration (``GET /?delay=D``), started together, stopped bounded."""

    def __init__(self, port: int, delays: tuple[float, ...] = (0, 0.02, 0.1, 0.3, 0.6)) -> None:
        targets = [parse_target(f"GET http://127.0.0.1:{port}/?delay={d}") for d in delays]
        self.generator = LoadGenerator(targets, concurrency=len(targets))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)

    def _drive(self) -> None:
        gen = self.generator
        gen.start()
        while not self._stop.is_set():
            gen.poll(0.05)
        gen.stop()  # no new request; those in flight end on their own, within a bound
        deadline = time.monotonic() + 15
        while gen.inflight() and time.monotonic() < deadline:
            gen.poll(0.05)
        gen.abandon()  # whatever is still in flight now counts as lost

    def start(self) -> None:
        self._thread.start()

    def _ok(self) -> int:
        return self.generator.records.kind.count(OK)

    def wait_for_answers(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self._ok() < count:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {count} answers in {timeout} s")
            time.sleep(0.05)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the load generator did not stop"

    def check(self, stop_began: float) -> str:
        """Assert no failure, answers after the stop began and refusals only after it."""
        records = self.generator.records
        rows = list(zip(records.start, records.kind, records.status, strict=True))
        failed = [
            (t, CLASSES[k], s)
            for t, k, s in rows
            if k not in (OK, REFUSED) or (k == OK and s != 200)
        ]
        ok = [t for t, k, _ in rows if k == OK]
        refused = [t for t, k, _ in rows if k == REFUSED]
        assert not failed, (
            f"{len(failed)} of {len(rows)} requests failed during shutdown (stop began at "
            f"{stop_began:.3f}), e.g. {sorted(failed)[:8]}"
        )
        served_after_stop = [t for t in ok if t >= stop_began]
        assert served_after_stop, "the pre-stop delay should have kept the app serving"
        assert refused, "the app never stopped listening?"
        assert min(refused) >= stop_began
        return (
            f"{len(ok)} complete answers ({len(served_after_stop)} started after the stop), "
            f"{len(refused)} clean refusals, 0 failures (pidone rehearse's load generator)"
        )


def wait_http_ready(port: int, timeout: float, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the app did not answer {path} on port {port} within {timeout} s")
        time.sleep(0.1)
