"""Drain steps: commands and HTTP requests run before the app is stopped.

Command drains are ordinary children of pidone, started through
:mod:`pidone.spawn` in a process group of their own so that a drain that
runs out of time can be killed together with everything it started.  Their
output goes straight to pidone's stdout/stderr (inherited descriptors),
never through pidone's memory.

HTTP drains need no curl in the image: one short-lived thread per request
(the standard library has no non-blocking HTTPS client), bounded by a socket
timeout equal to the drain's share of the budget.  The thread reports back
through a pipe that the event loop watches, so the loop still blocks in one
place.  A thread that outlives its share is simply forgotten: it holds no
process and ends with pidone.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from dataclasses import dataclass

from pidone.config import HttpDrain


@dataclass(frozen=True)
class DrainOutcome:
    index: int
    step: str
    outcome: str  # "ok" | "failed" | "timed_out" | "skipped"
    detail: str
    start_s: float
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "outcome": self.outcome,
            "detail": self.detail,
            "start_s": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
        }


def http_request(step: HttpDrain, timeout: float) -> tuple[bool, str]:
    """Send the request; success is a 2xx or 3xx status.  Never raises."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(step.url)
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    try:
        conn = conn_type(url.hostname or "", url.port, timeout=max(timeout, 0.001))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        conn.request(step.method, path, headers={"User-Agent": "pidone-drain"})
        status = conn.getresponse().status
    # Not just OSError and HTTPException: a non-ASCII path raises
    # UnicodeEncodeError, a huge timeout OverflowError. Whatever it is, the
    # drain failed; a dying thread would only print a traceback and leave
    # the loop waiting for the drain's whole share.
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return 200 <= status < 400, f"HTTP {status}"


class HttpResults:
    """Results of HTTP drain threads, handed to the loop through a pipe."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._done: deque[tuple[int, bool, str]] = deque()

    def start(self, index: int, step: HttpDrain, timeout: float) -> None:
        import threading

        def run() -> None:
            ok, detail = http_request(step, timeout)
            self._done.append((index, ok, detail))
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"!")

        threading.Thread(target=run, name=f"drain-{index}", daemon=True).start()

    def collect(self) -> list[tuple[int, bool, str]]:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        finished = []
        while self._done:
            finished.append(self._done.popleft())
        return finished
