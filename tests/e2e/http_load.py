"""A small HTTP load generator for the end-to-end tests: real clients, every failure counted.

Each client thread sends requests one after another, each on a new connection (the example
apps answer HTTP/1.0 with ``Connection: close``), until the app has refused it a few times.
A *refusal* (``ECONNREFUSED``: nothing listens any more) is the clean way for a stopping app to
turn clients away; a reset, a timeout, an incomplete answer or a wrong status is a failure.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

EXPECTED_BODY = b"hello from webapp\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LoadResult:
    ok: list[float] = field(default_factory=list)  # start times of complete answers
    refused: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(
    port: int, delay: float, result: LoadResult, stop: threading.Event, until: float
) -> None:
    """Send requests one after another until the app has refused a few or *stop* is set."""
    refusals = 0
    while not stop.is_set() and refusals < 3 and time.monotonic() < until:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", f"/?delay={delay}")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and body == EXPECTED_BODY:
                with result.lock:
                    result.ok.append(started)
            else:
                with result.lock:
                    result.errors.append((started, f"HTTP {response.status}: {body!r}"))
        except ConnectionRefusedError:
            refusals += 1
            with result.lock:
                result.refused.append(started)
            time.sleep(0.05)
        except Exception as exc:  # reset, incomplete read, timeout...: all failures
            with result.lock:
                result.errors.append((started, repr(exc)))
        finally:
            conn.close()


class Load:
    """Clients with different request durations, started together, joined with a bound."""

    def __init__(self, port: int, delays: tuple[float, ...] = (0, 0.02, 0.1, 0.3, 0.6)) -> None:
        self.result = LoadResult()
        self._stop = threading.Event()
        until = time.monotonic() + 25
        self._threads = [
            threading.Thread(
                target=client, args=(port, delay, self.result, self._stop, until), daemon=True
            )
            for delay in delays
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_for_answers(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.result.ok) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {count} answers in {timeout} s: {self.result.errors}")
            time.sleep(0.05)

    def finish(self) -> None:
        # Clients refused 3 times stop on their own; give them a bounded time to get there
        # (a connection attempt made while the app was closing its socket may wait for a SYN
        # retransmission, about 1 s, before it is refused).
        join_deadline = time.monotonic() + 10
        for thread in self._threads:
            thread.join(timeout=max(0.0, join_deadline - time.monotonic()))
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def check(self, stop_began: float) -> str:
        """Assert no failure, answers after the stop began and refusals only after it."""
        result = self.result
        assert not result.errors, (
            f"{len(result.errors)} requests failed during shutdown (stop began at "
            f"{stop_began:.3f}; last answer started at {max(result.ok, default=0):.3f}), "
            f"e.g. {sorted(result.errors)[:8]}"
        )
        served_after_stop = [t for t in result.ok if t >= stop_began]
        assert served_after_stop, "the pre-stop delay should have kept the app serving"
        assert result.refused, "the app never stopped listening?"
        assert min(result.refused) >= stop_began
        return (
            f"{len(result.ok)} complete answers ({len(served_after_stop)} started after the "
            f"stop), {len(result.refused)} clean refusals, 0 errors"
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
