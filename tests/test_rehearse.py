"""``pidone rehearse``: real pidone, real apps, real HTTP load, real verdicts.

The rehearsals run ``python -m pidone rehearse`` as a user would; the load
generator's classification is checked against small raw-socket servers that
misbehave on purpose (close a keep-alive connection mid-request, answer 503,
cut a response short).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import CLEAN_ENV, PY, ROOT, free_port

from pidone.rehearse.loadgen import CLASSES, LoadGenerator, parse_target

EXAMPLES = ROOT / "examples"
pytestmark = pytest.mark.timeout(90)


def rehearse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "pidone", "rehearse", *args],
        env={**CLEAN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )


def rehearse_reported(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """A rehearsal with ``--report``: its outcome, and the report it wrote."""
    report = tmp_path / "report.json"
    done = rehearse("--report", str(report), *args, env=env)
    assert report.exists(), done.stdout + done.stderr
    return done, json.loads(report.read_text())


def dockerfile_pidone_options(port: int) -> list[str]:
    """Dockerfile.example's ENTRYPOINT pidone options, with its port 8080 moved to ``port``."""
    text = (ROOT / "Dockerfile.example").read_text(encoding="utf-8")
    match = re.search(r"^ENTRYPOINT (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "Dockerfile.example has no ENTRYPOINT in exec form"
    entrypoint = json.loads(match.group(1))
    assert entrypoint[0] == "pidone"
    assert entrypoint[-1] == "--"
    return [arg.replace(":8080", f":{port}") for arg in entrypoint[1:-1]]


def test_example_webapp_with_its_dockerfile_settings_passes(mode: str, tmp_path: Path) -> None:
    """The example web app, under load, with Dockerfile.example's pidone settings: pass."""
    port = free_port()
    report, svg = tmp_path / "report.json", tmp_path / "rehearsal.svg"
    done = rehearse(
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.5",
        "--mode",
        mode,
        "--report",
        str(report),
        "--svg",
        str(svg),
        *dockerfile_pidone_options(port),
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port), "HOST": "127.0.0.1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("pidone rehearse: PASS")
    data = json.loads(report.read_text())
    assert data["verdict"] == "pass"
    assert data["failures"] == []
    assert data["mode"] == mode
    assert data["reason"] == "Completed"
    assert data["exit_code"] == 0
    assert data["requests"]["lost"] == 0
    assert data["before_signal"]["ok"] > 0
    # The pre-stop delay (1 s) covers the deregistration delay (1 s): load went on after the
    # signal and was answered.
    assert data["after_signal"]["ok"] > 0
    assert [d["outcome"] for d in data["drains"]] == ["ok"]
    assert 1.0 <= data["stop_s"] < 8.0
    ET.parse(svg)  # well-formed


def test_naive_app_that_exits_at_once_fails_with_lost_requests(tmp_path: Path) -> None:
    """SIGTERM kills the naive app mid-POST: requests are lost and the verdict says so."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"POST http://127.0.0.1:{port}/slow",
        "--warmup",
        "0.8",
        "--",
        PY,
        str(EXAMPLES / "naive_app.py"),
        env={"PORT": str(port), "SLOW_S": "0.3"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert data["verdict"] == "fail"
    assert data["requests"]["lost"] > 0
    assert any("lost" in failure for failure in data["failures"]), data["failures"]
    assert "lost" in done.stdout
    # pidone itself did its job: the app died of the stop signal, a passing exit code.
    assert data["exit_code"] == 143
    assert data["reason"] == "Signaled"


def test_app_ignoring_sigterm_fails_with_reason_killed(tmp_path: Path) -> None:
    """pidone SIGKILLs the app at its grace deadline: reason Killed, exit 137, fail.

    The grace comes from PIDONE_GRACE: the environment means what it means in production.
    """
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.5",
        "--",
        PY,
        str(EXAMPLES / "stubborn_app.py"),
        env={"PORT": str(port), "PIDONE_GRACE": "1"},  # pidone's own variables apply too
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert data["reason"] == "Killed"
    assert data["exit_code"] == 137
    assert data["timed_out"] is False
    assert any("SIGKILL" in failure for failure in data["failures"]), data["failures"]
    assert any("137" in failure for failure in data["failures"]), data["failures"]
    assert [p["phase"] for p in data["phases"]][-1] == "killing"
    assert 1.0 <= data["stop_s"] < 3.0


def test_pidone_outliving_the_runtime_timeout_is_killed_and_fails(
    mode: str, tmp_path: Path
) -> None:
    """A grace longer than --timeout: the rehearsal SIGKILLs pidone as the runtime would.

    Nothing is left running afterwards, in either mode.
    """
    port = free_port()
    report = tmp_path / "report.json"
    marker = f"stubborn-{port}"
    done = rehearse(
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.3",
        "--timeout",
        "1",
        "--mode",
        mode,
        "--report",
        str(report),
        "--grace",
        "20",
        "--",
        PY,
        str(EXAMPLES / "stubborn_app.py"),
        marker,
        env={"PORT": str(port)},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["timed_out"] is True
    assert data["exit_code"] == 137
    assert 1.0 <= data["stop_s"] < 5.0
    assert any("runtime would have SIGKILLed" in f for f in data["failures"]), data["failures"]
    leftovers = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    assert leftovers.returncode == 1, leftovers.stdout


def test_app_never_ready_fails_and_is_still_stopped(tmp_path: Path) -> None:
    """An app that never listens: the rehearsal says so, stops it, and fails."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--ready-timeout",
        "1",
        "--",
        PY,
        "-c",
        "import sys, time; print('starting forever', file=sys.stderr, flush=True); time.sleep(60)",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert data["verdict"] == "fail"
    assert "not ready within 1s" in data["failures"][0]
    assert data["requests"]["total"] == 0
    assert data["exit_code"] == 143  # stopped by the shutdown signal, as a runtime would
    assert "starting forever" in done.stdout  # the app's last words help find out why


def test_app_exiting_during_warmup_fails(tmp_path: Path) -> None:
    """The app dies under load before any shutdown: pidone exited early, fail."""
    port = free_port()
    report = tmp_path / "report.json"
    code = (
        "import http.server, os, threading, time\n"
        "srv = http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])),"
        " http.server.SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
        "time.sleep(0.6)\n"
        "os._exit(3)\n"
    )
    done = rehearse(
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "5",
        "--report",
        str(report),
        "--",
        PY,
        "-c",
        code,
        env={"PORT": str(port)},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["failures"][0].startswith("pidone exited before the shutdown signal")
    assert data["reason"] == "Error"
    assert data["exit_code"] == 3
    assert "exited on its own" in done.stdout


def test_rehearsal_stopped_by_sigterm_leaves_nothing_running(mode: str) -> None:
    """A cancelled CI job: the rehearsal is SIGTERMed mid-warmup and takes pidone with it."""
    port = free_port()
    marker = f"cancelled-{port}"
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "pidone",
            "rehearse",
            "--load",
            f"http://127.0.0.1:{port}/",
            "--warmup",
            "30",
            "--mode",
            mode,
            "--",
            PY,
            str(EXAMPLES / "stubborn_app.py"),
            marker,
        ],
        env={**CLEAN_ENV, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # under load: the app answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the app never listened"
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        proc.send_signal(15)
        assert proc.wait(20) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftovers = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    assert leftovers.returncode == 1, leftovers.stdout


def test_readiness_comes_from_pidone_when_it_has_a_readiness_probe(tmp_path: Path) -> None:
    """With a readiness probe, the rehearsal waits for pidone's /readyz, not the load URL."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.3",
        "--readiness-probe",
        f"http://127.0.0.1:{port}/healthz",
        "--readiness-period",
        "0.1",
        "--pre-stop-delay",
        "1",
        "--drain-http",
        f"POST http://127.0.0.1:{port}/drain",
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert data["settings"]["ready"] == "pidone readiness"


def test_expect_exit_overrides_the_accepted_exit_codes(tmp_path: Path) -> None:
    """--expect-exit 143 makes an exit code 0 a failure, named as such."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.3",
        "--expect-exit",
        "143",
        "--pre-stop-delay",
        "1",
        "--drain-http",
        f"POST http://127.0.0.1:{port}/drain",
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port)},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert data["failures"] == ["pidone exited with code 0, not 143."]


def test_short_pre_stop_delay_fails_on_refused_connections(tmp_path: Path) -> None:
    """The app stops listening before the load balancer has deregistered it: refused, fail."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.3",
        "--deregister-delay",
        "2",
        "--pre-stop-delay",
        "0.2",
        "--drain-http",
        f"POST http://127.0.0.1:{port}/drain",
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port)},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert data["after_signal"]["refused"] > 0
    assert any("refused while the load balancer" in f for f in data["failures"])


def test_report_carries_every_documented_field(tmp_path: Path) -> None:
    """The JSON report's fields, as the README documents them."""
    port = free_port()
    done, data = rehearse_reported(
        tmp_path,
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.3",
        "--deregister-delay",
        "0",
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for key in (
        "verdict",
        "failures",
        "exit_code",
        "reason",
        "stop_s",
        "mode",
        "requests",
        "before_signal",
        "after_signal",
        "phases",
        "drains",
        "markers",
        "timeline",
        "settings",
    ):
        assert key in data, key
    for counts in (data["requests"], data["before_signal"], data["after_signal"]):
        assert set(counts) == {"total", *CLASSES}
        assert counts["total"] == sum(counts[c] for c in CLASSES)
    assert data["requests"]["total"] == (
        data["before_signal"]["total"] + data["after_signal"]["total"]
    )
    assert sum(sum(v) for v in data["timeline"]["counts"].values()) == data["requests"]["total"]
    assert [p["phase"] for p in data["phases"]] == ["stopping"]


def test_svg_is_well_formed_and_marks_the_moments_of_the_shutdown(tmp_path: Path) -> None:
    """The picture: valid XML, bars per class, a marker for each moment of the stop."""
    port = free_port()
    svg = tmp_path / "rehearsal.svg"
    done = rehearse(
        "--load",
        f"http://127.0.0.1:{port}/",
        "--warmup",
        "0.5",
        "--svg",
        str(svg),
        *dockerfile_pidone_options(port),
        "--",
        PY,
        str(EXAMPLES / "webapp.py"),
        env={"PORT": str(port)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    names = {g.get("data-name") for g in root.iter(f"{ns}g") if g.get("class") == "marker"}
    assert {
        "signal",
        "pre_stop_end",
        "deregistered",
        "drain_started",
        "drain_finished",
        "stop_signal",
        "app_exit",
        "pidone_exit",
        "deadline",
        "timeout",
    } <= names
    assert any(r.get("class") == "ok" for r in root.iter(f"{ns}rect"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", "true"], "--load URL is required"),
        (["--load", "http://127.0.0.1:1/", "--concurrency", "0", "--", "true"], "--concurrency"),
        (["--load", "ftp://x/", "--", "true"], "only http://"),
        (["--load", "http://127.0.0.1:1/", "--warmup", "soon", "--", "true"], "not a number"),
        (
            ["--load", "http://127.0.0.1:1/", "--grace", "1", "--warmup", "1", "--", "true"],
            "come before",
        ),
        (["--load", "http://127.0.0.1:1/"], "no COMMAND"),
        (["--load", "http://127.0.0.1:1/", "--signal", "SIGNOPE", "--", "true"], "not a signal"),
        (["--load", "http://127.0.0.1:1/", "--grace", "x", "--", "true"], "--grace"),
        (
            ["--load", "http://127.0.0.1:1/", "--report", "/nonexistent/r.json", "--", "true"],
            "not writable",
        ),
        (["--load", "http://127.0.0.1:1/", "--timeout"], "needs a value"),
        (["--load", "http://no-such-host.invalid/", "--", "true"], "--load"),
        (["--load", "http://127.0.0.1:1/", "--bogus", "--", "true"], "No such option"),
    ],
)
def test_bad_usage_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    """Rehearsal mistakes and pidone's own (through its --check): one line, exit 2, no run."""
    done = rehearse(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_help_documents_the_rehearsal_options() -> None:
    """pidone rehearse --help lists the options and exits 0."""
    done = rehearse("--help")
    assert done.returncode == 0
    for option in ("--load", "--deregister-delay", "--timeout", "--report", "--svg", "--strict"):
        assert option in done.stdout


def test_an_app_named_rehearse_still_runs_after_dashdash(tmp_path: Path) -> None:
    """`pidone -- rehearse` runs the app called rehearse; only a first argument selects the mode."""
    app = tmp_path / "rehearse"
    app.write_text('#!/bin/sh\necho "the app named rehearse ran with $*"\n')
    app.chmod(0o755)
    env = {**CLEAN_ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(
        [PY, "-m", "pidone", "--log-format", "json", "--", "rehearse", "--load", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "the app named rehearse ran with --load x" in done.stdout


def test_running_an_app_does_not_import_the_rehearsal() -> None:
    """The rehearsal costs pidone's start-up nothing: its modules are never imported."""
    done = subprocess.run(
        [PY, "-X", "importtime", "-m", "pidone", "--log-format", "json", "--", "true"],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pidone.main" in done.stderr  # importtime did report
    assert "pidone.rehearse" not in done.stderr


# -- the load generator's classification, against servers that misbehave on purpose -------


class RawServer:
    """A loopback server answering request ``n`` of each connection with ``answer(n)``.

    ``answer`` returns the bytes to send, or None to close the connection without a word.
    """

    def __init__(
        self, answer: Callable[[int, bytes], bytes | None], *, close_after: bool = False
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf, n = b"", 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                reply = self.answer(n, head)
                n += 1
                if reply is None:
                    return
                conn.sendall(reply)
                if self.close_after:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(answer: Callable[[int, bytes], bytes | None], **kw: Any) -> RawServer:
        made.append(RawServer(answer, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def drive(gen: LoadGenerator, until: Callable[[], bool], timeout: float = 10.0) -> dict[str, int]:
    gen.start()
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the load generator did not get there in time"
        gen.poll(0.05)
    gen.stop()
    while gen.inflight() and time.monotonic() < deadline:
        gen.poll(0.05)
    return {name: gen.records.kind.count(i) for i, name in enumerate(CLASSES)}


def test_get_on_a_keepalive_connection_closed_mid_request_is_idle_closed_and_retried(
    server: Any,
) -> None:
    """The keep-alive race: an idempotent request is counted idle_closed and sent again."""
    srv = server(lambda n, _head: OK_REPLY if n == 0 else None)
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{srv.port}/")], 1)
    counts = drive(gen, lambda: len(gen.records) >= 20)
    assert counts["idle_closed"] > 0
    assert counts["lost"] == 0
    assert gen.retries == counts["idle_closed"] or gen.retries == counts["idle_closed"] - 1


def test_post_on_a_keepalive_connection_closed_mid_request_is_lost(server: Any) -> None:
    """The same race for a POST: no client may retry it, so it is lost."""
    srv = server(lambda n, _head: OK_REPLY if n == 0 else None)
    gen = LoadGenerator([parse_target(f"POST http://127.0.0.1:{srv.port}/")], 1)
    counts = drive(gen, lambda: len(gen.records) >= 20)
    assert counts["lost"] > 0
    assert counts["idle_closed"] == 0
    assert gen.retries == 0


def test_5xx_partial_chunked_and_close_delimited_responses(server: Any) -> None:
    """503 is error_status, a cut-short body lost; chunked and read-to-EOF bodies are ok."""
    replies = {
        b"/503": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        b"/cut": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
        b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"/eof": b"HTTP/1.0 200 OK\r\n\r\nall of it",
    }

    def answer(_n: int, head: bytes) -> bytes | None:
        path = head.split(b" ")[1]
        return replies[path]

    keep = server(answer)
    closing = server(answer, close_after=True)  # /eof and /cut end with the connection
    for srv, path, expected in (
        (keep, "/503", "error_status"),
        (keep, "/chunked", "ok"),
        (closing, "/eof", "ok"),
        (closing, "/cut", "lost"),  # closed after 3 of 10 body bytes
    ):
        gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{srv.port}{path}")], 2)
        counts = drive(gen, lambda g=gen: len(g.records) >= 10)
        assert counts[expected] == sum(counts.values()), (path, counts)


def test_connection_closed_while_idle_is_replaced_silently(server: Any) -> None:
    """A keep-alive connection the server closes between requests costs no request."""
    # Keep-alive by its headers, but closed right after the answer; --rate leaves the client
    # idle long enough to see the close before its next request.
    srv = server(lambda _n, _head: OK_REPLY, close_after=True)
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{srv.port}/")], 1, rate=20)
    counts = drive(gen, lambda: len(gen.records) >= 6)
    assert counts == {**dict.fromkeys(CLASSES, 0), "ok": counts["ok"]}
    assert gen.reconnects >= 4


def test_refused_connections_are_counted_and_paced() -> None:
    """Nobody listening: refused, and each slot backs off instead of spinning."""
    port = free_port()
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{port}/")], 2)
    gen.start()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        gen.poll(end - time.monotonic())
    gen.stop()
    refused = gen.records.kind.count(CLASSES.index("refused"))
    assert refused == len(gen.records)
    assert 2 <= refused <= 2 * (0.3 / 0.05 + 2)


def test_rate_spreads_requests_over_time(server: Any) -> None:
    """--rate 50 over 4 connections: about 50 requests a second in total, not more."""
    srv = server(lambda _n, _head: OK_REPLY)
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{srv.port}/")], 4, rate=50)
    started = time.monotonic()
    counts = drive(gen, lambda: len(gen.records) >= 20)
    elapsed = time.monotonic() - started
    assert counts["ok"] == len(gen.records)
    # 20 requests at 50/s take at least 19 intervals of 20 ms.
    assert elapsed >= 19 / 50


def test_no_new_connection_after_deregistration(server: Any) -> None:
    """Deregistered: a slot whose connection closes is done; none is opened again."""
    srv = server(lambda n, _head: OK_REPLY if n < 3 else None)
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{srv.port}/")], 2)
    gen.start()
    deadline = time.monotonic() + 5
    while len(gen.records) < 2:
        gen.poll(0.05)
        assert time.monotonic() < deadline
    gen.deregister()
    opened = gen.connections
    while gen.inflight():
        gen.poll(0.05)
        assert time.monotonic() < deadline
    assert gen.connections == opened
    assert all(slot.sock is None for slot in gen.slots)  # every slot ran out of connection
    assert gen.retries == 0
    assert gen.records.kind.count(CLASSES.index("lost")) == 0


# -- the verdict rules, on made-up outcomes ---------------------------------------------


def outcome(rows: list[tuple[float, float, str]], **fields: Any) -> Any:
    """An Outcome with the signal at t=100 and requests given as (start, end, class) from it."""
    from pidone.rehearse.run import Outcome

    out = Outcome(mode="pid1", signal=15, stop_signal=15, ready_via="url", targets=[])
    out.t0, out.load_started, out.exit_at, out.exit_code = 100.0, 98.0, 101.0, 0
    out.events.append((101.0, {"event": "terminated", "level": "info", "reason": "Completed"}))
    for start, end, cls in [(-1.5, -1.4, "ok"), *rows]:
        out.records.add(100.0 + start, 100.0 + end, CLASSES.index(cls), 0, 200)
    for key, value in fields.items():
        setattr(out, key, value)
    return out


@pytest.mark.parametrize(
    ("rows", "fields", "argv", "expected"),
    [
        ([], {}, [], []),
        ([(-0.5, -0.4, "error_status")], {}, [], []),  # a 5xx before the signal: not judged
        ([(-0.5, 0.1, "error_status")], {}, [], ["1 request(s) got a 5xx response after"]),
        ([(0.2, 0.3, "lost")], {}, [], ["1 request(s) were lost"]),
        ([(0.2, 0.3, "idle_closed")], {}, [], []),
        ([(0.2, 0.3, "idle_closed")], {}, ["--strict"], ["1 request(s) were closed idle"]),
        ([(0.9, 1.9, "refused")], {}, [], ["1 new connection(s) were refused"]),
        ([(1.1, 1.2, "refused")], {}, [], []),  # after the deregistration: elsewhere
        ([], {"exit_code": 143}, [], []),
        ([], {"exit_code": 1}, [], ["pidone exited with code 1, not 0 or 143."]),
        ([], {"exit_code": 1}, ["--expect-exit", "1"], []),
        ([], {"timed_out": True, "exit_code": 137}, [], ["pidone was still running", "code 137"]),
        (
            [],
            {"events": [(101.0, {"event": "terminated", "level": "info", "reason": "Killed"})]},
            [],
            ["pidone had to SIGKILL what was still running"],
        ),
    ],
)
def test_verdict_rules(
    rows: list[tuple[float, float, str]],
    fields: dict[str, Any],
    argv: list[str],
    expected: list[str],
) -> None:
    """Each rule fails the rehearsal with its own sentence, and only when it is broken."""
    from pidone.rehearse import cli, verdict

    opts = cli.parse(["--load", "http://127.0.0.1:1/", *argv, "--", "true"])
    failures = verdict.failures(opts, outcome(rows, **fields))
    assert len(failures) == len(expected), failures
    for failure, start in zip(failures, expected, strict=True):
        assert start in failure


def test_settings_are_read_from_pidone_check() -> None:
    """The rehearsal learns pidone's effective settings from `pidone --check` (flags, env).

    This pins the contract with --check's output: if its settings table changes shape, the
    rehearsal would silently fall back to SIGTERM and the load URL for readiness.
    """
    from pidone.rehearse import run

    env = {**CLEAN_ENV, "PIDONE_STOP_SIGNAL": "QUIT"}
    settings = run.check(
        [
            "--shutdown-signal",
            "INT",
            "--readiness-probe",
            "tcp://127.0.0.1:1",
            "--status-addr",
            "127.0.0.1:9",
            "--",
            "true",
        ],
        env,
    )
    assert settings == run.Settings(
        shutdown_signal=2, stop_signal=3, own_readiness=True, status_addr="127.0.0.1:9"
    )
    assert run.check(["--notify", "--", "true"], CLEAN_ENV).own_readiness
    assert run.check(["--", "true"], CLEAN_ENV) == run.Settings()
