"""Load for the "pidone + probes" variant: probes, a status port and an idle crowd.

pidone runs with a liveness probe (``exec:true``) and a readiness probe (HTTP
GET to ``helpers/httpok.c`` on loopback), both every PROBE_PERIOD_S, and its
status endpoint on a loopback port, to which the benchmark holds CROWD_SIZE
idle TCP connections (connected, never sending a request) while it measures.
Both ports are picked per sample.  unshare --pid does not create a network
namespace, so the host and the namespace share loopback.

The load is bounded: two probe runs per period (40 a second), one fork per
liveness run, one short thread per readiness run, and 100 connections, well
below the endpoint's cap of 128.  pidone drops a connection 5 s after accepting
it, so the crowd is opened just before each measurement and checked just
after: a sample whose crowd was not held throughout is a failed sample.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from .container import LineReader
from .errors import BenchError

if TYPE_CHECKING:
    from collections.abc import Iterator

PROBE_PERIOD_S = 0.05
CROWD_SIZE = 100
KINDS = ("liveness", "readiness")
# Lazy imports (threading, http.client, subprocess machinery) happen on the
# first probe runs; measuring starts once each probe has run this often.
WARM_RUNS = 3
SETTLE_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 2.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def probe_rig(httpok: str) -> Iterator[ProbeRig]:
    """A started ProbeRig whose server and sockets are closed whatever happens."""
    rig = ProbeRig(httpok)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()


class ProbeRig:
    """The readiness target, the status port and the crowd for one sample."""

    def __init__(self, httpok: str) -> None:
        self._httpok = httpok
        self._server: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.status_port = free_port()
        self.crowd: list[socket.socket] = []

    def start(self) -> None:
        self._server = subprocess.Popen(
            [self._httpok], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert self._server.stdout is not None
        self.http_port = LineReader(self._server.stdout.fileno()).expect("port", 5.0)

    def close(self) -> None:
        self.close_crowd()
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            if self._server.stdout is not None:
                self._server.stdout.close()
            self._server = None

    def options(self) -> list[str]:
        period = f"{PROBE_PERIOD_S:g}"
        return [
            *("--liveness-probe", "exec:true", "--liveness-period", period),
            *("--readiness-probe", f"http://127.0.0.1:{self.http_port}/"),
            *("--readiness-period", period),
            *("--status-addr", f"127.0.0.1:{self.status_port}"),
        ]

    # -- the status endpoint ------------------------------------------------------

    def status(self) -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.request("GET", "/status")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise BenchError(f"GET /status answered {response.status}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise BenchError("GET /status did not return an object")
        return data

    def probe_runs(self) -> int:
        """Liveness + readiness runs started so far (from /status)."""
        probes = self.status().get("probes")
        if not isinstance(probes, dict):
            raise BenchError("GET /status has no probes")
        return sum(int(probes[kind]["runs"]) for kind in KINDS)

    def wait_warm(self) -> None:
        """Until each probe has run WARM_RUNS times and the app is ready."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (OSError, http.client.HTTPException, BenchError, ValueError) as exc:
                last = str(exc)  # the endpoint may not be listening yet
            else:
                probes = status.get("probes")
                if isinstance(probes, dict) and status.get("ready") is True:
                    runs = [int(probes.get(kind, {}).get("runs", 0)) for kind in KINDS]
                    if min(runs) >= WARM_RUNS:
                        return
                last = f"status: {json.dumps(status)[:300]}"
            time.sleep(PROBE_PERIOD_S)
        raise BenchError(f"probes not warm after {SETTLE_TIMEOUT_S:g}s ({last})")

    # -- the crowd ----------------------------------------------------------------

    def open_crowd(self) -> None:
        """CROWD_SIZE idle connections; returns once pidone has accepted them all.

        The accept queue is FIFO, so a /status answer on one more connection
        means every connection opened before it has been accepted.
        """
        for _ in range(CROWD_SIZE):
            sock = socket.create_connection(("127.0.0.1", self.status_port), HTTP_TIMEOUT_S)
            sock.setblocking(False)  # so that crowd_held() can peek without waiting
            self.crowd.append(sock)
        self.status()

    def crowd_held(self) -> int:
        """How many crowd connections pidone still holds open (no FIN/RST yet)."""
        held = 0
        for sock in self.crowd:
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                held += 1  # open, nothing to read: still held
                continue
            except OSError:
                continue
            held += 0 if data == b"" else 1
        return held

    def check_crowd(self) -> None:
        held = self.crowd_held()
        if held != CROWD_SIZE:
            raise BenchError(f"only {held} of {CROWD_SIZE} idle connections held open")

    def close_crowd(self) -> None:
        for sock in self.crowd:
            with contextlib.suppress(OSError):
                sock.close()
        self.crowd = []
