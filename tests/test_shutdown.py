"""Graceful shutdown: drains, one grace budget, escalation, and the report.

Timing assertions allow about +-0.5 s: a noisy 2-core machine, not a lab.
"""

from __future__ import annotations

import http.server
import signal
import threading
import time
import uuid

import pytest
from harness import app, free_port, processes_with

pytestmark = pytest.mark.timeout(40)
TOL = 0.5


def phase_start(p, phase: str) -> float:
    return next(x["start_s"] for x in p.final()["phases"] if x["phase"] == phase)


def test_graceful_app_exits_well_before_the_deadline(run):
    p = run(["--grace", "8"], app("recorder", "--cleanup", "0.2"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert time.monotonic() - sent < 0.2 + 1.5
    final = p.final()
    assert final["reason"] == "Completed"
    assert final["duration_s"] < 1.5
    assert "signal SIGTERM" in p.out.lines


def test_app_ignoring_term_is_killed_at_the_deadline_with_137(run):
    p = run(["--grace", "1.5"], app("tree", "--ignore-term"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 137
    took = time.monotonic() - sent
    assert 1.5 - 0.1 <= took <= 1.5 + TOL
    final = p.final()
    assert final["reason"] == "Killed"
    assert final["exit_code"] == 137
    assert final["killed_count"] >= 1
    assert p.event("process_killed")["cmdline"].endswith("--ignore-term")


def test_drains_run_in_order_before_the_stop_signal(run, tmp_path):
    log = tmp_path / "log"
    p = run(
        [
            "--drain",
            f"sh -c 'echo drain-1 >> {log}'",
            "--drain",
            f"sh -c 'echo \"drain 2\" >> {log}'",
        ],
        app("recorder", "--log", str(log)),
    )
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    lines = log.read_text().splitlines()
    assert lines[1:] == ["drain-1", "drain 2", "signal SIGTERM", "exiting"]
    assert [d["outcome"] for d in p.final()["drains"]] == ["ok", "ok"]


def test_hung_drain_is_killed_at_its_share_and_the_app_keeps_its_reserve(run, tmp_path):
    marker = "4242.125"  # unique sleep lengths find the drain's processes afterwards
    p = run(
        ["--grace", "4", "--drain", f"sh -c 'sleep {marker} & sleep {marker}'"],
        app("tree", "--ignore-term"),
    )
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 137
    final = p.final()
    drain = final["drains"][0]
    assert drain["outcome"] == "timed_out"
    # grace 4 -> the app's reserve is 1 s: the drain may use 3 s, no more.
    assert abs(drain["duration_s"] - 3.0) <= TOL
    stop = p.event("stop_signal_sent")
    assert stop is not None
    assert abs(phase_start(p, "stopping") - 3.0) <= TOL
    assert abs(final["duration_s"] - 4.0) <= TOL
    assert processes_with(f"sleep {marker}") == []


def test_failing_and_missing_drains_are_logged_and_shutdown_goes_on(run):
    p = run(["--drain", "sh -c 'exit 4'", "--drain", "no-such-drain-cmd"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    drains = p.final()["drains"]
    assert [d["outcome"] for d in drains] == ["failed", "failed"]
    assert "exit code 4" in drains[0]["detail"]
    assert "no-such-drain-cmd" in drains[1]["detail"]
    assert p.final()["reason"] == "Completed"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(204 if self.path != "/bad" else 500)
        self.end_headers()

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()


def test_http_drains_call_the_server_and_survive_a_dead_port(run, http_server):
    port, seen = http_server
    dead = free_port()
    p = run(
        [
            "--drain-http",
            f"POST http://127.0.0.1:{port}/drain?now=1",
            "--drain-http",
            f"http://127.0.0.1:{port}/bad",
            "--drain-http",
            f"http://127.0.0.1:{dead}/",
        ],
        app("recorder"),
    )
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert seen == ["POST /drain?now=1", "GET /bad"]
    drains = p.final()["drains"]
    assert [d["outcome"] for d in drains] == ["ok", "failed", "failed"]
    assert drains[1]["detail"] == "HTTP 500"
    assert "Refused" in drains[2]["detail"]


def test_pre_stop_delay_holds_the_stop_signal(run):
    p = run(["--pre-stop-delay", "1"], app("recorder"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    p.out.wait_for("signal SIGTERM")
    assert 1.0 - 0.05 <= time.monotonic() - sent <= 1.0 + TOL
    assert p.wait() == 0
    assert abs(phase_start(p, "stopping") - 1.0) <= TOL


def test_custom_stop_signal_is_sent_instead_of_term(run):
    p = run(["--stop-signal", "USR2"], app("recorder", "--exit-on", "USR2"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert "signal SIGUSR2" in p.out.lines
    assert "signal SIGTERM" not in p.out.lines


def test_grandchild_needing_time_to_clean_up_is_waited_for(run, tmp_path):
    marker = tmp_path / "cleaned"
    p = run(
        ["--grace", "5"],
        app("tree", "--worker", "cleanup", "--cleanup", "1", "--marker", str(marker)),
    )
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM  # the app itself died of TERM at once
    took = time.monotonic() - sent
    assert marker.read_text() == "cleaned up\n"
    assert 1.0 <= took <= 1.0 + 1.0  # waited for it, and not for the whole grace
    assert p.final()["reason"] == "Signaled"


@pytest.mark.parametrize("worker", ["stubborn", "daemon"])
def test_leftover_ignoring_term_is_killed_at_the_deadline(run, worker):
    tag = uuid.uuid4().hex
    p = run(["--grace", "1.5"], app("tree", "--worker", worker, "--tag", tag))
    line = p.out.wait_for("ready")
    p.err.wait_for("app_started")
    worker_pid = int(line.split()[-1])
    sent = p.kill(signal.SIGTERM)
    p.wait()
    assert 1.5 - 0.1 <= time.monotonic() - sent <= 1.5 + TOL
    final = p.final()
    assert final["reason"] == "Killed"
    assert worker_pid in [k["pid"] for k in final["killed"]] or p.mode == "pid1"
    assert processes_with(tag) == []


def test_leftovers_of_an_app_that_exits_on_its_own_get_the_grace_then_sigkill(run):
    tag = uuid.uuid4().hex
    p = run(["--grace", "1"], app("tree", "--worker", "stubborn", "--exit-now", "3", "--tag", tag))
    p.out.wait_for("ready")
    assert p.wait() == 3
    final = p.final()
    assert final["cause"] == "app_exit"
    assert final["reason"] == "Killed"
    assert abs(final["duration_s"] - 1.0) <= TOL
    assert processes_with(tag) == []


def test_second_shutdown_signal_forces_the_end(run):
    p = run(["--grace", "20"], app("tree", "--ignore-term"))
    p.ready()
    p.kill(signal.SIGTERM)
    p.err.wait_for('"stop_signal_sent"')
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 137
    assert time.monotonic() - sent < 1.5
    final = p.final()
    assert final["forced"] is True
    assert final["reason"] == "Killed"


def test_grace_zero_kills_at_once_without_drains(run, tmp_path):
    marker = tmp_path / "drained"
    p = run(["--grace", "0", "--drain", f"touch {marker}"], app("recorder"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 137
    assert time.monotonic() - sent < 1.0
    assert not marker.exists()
    assert "signal SIGTERM" not in p.out.lines


def test_termination_log_says_reason_code_and_timings(run, tmp_path):
    path = tmp_path / "termination-log"
    p = run(["--grace", "1", "--termination-log", str(path)], app("tree", "--ignore-term"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 137
    text = path.read_text()
    assert text.startswith("Killed: exit code 137")
    assert "stopping" in text
    assert "killing" in text
    assert len(text.encode()) <= 4096


def test_console_format_ends_with_a_shutdown_timeline(run):
    p = run(["--log-format", "console", "--drain", "true"], app("recorder"))
    p.out.wait_for("ready")
    p.err.wait_for("app_started")
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    text = "\n".join(p.err.lines)
    assert "shutdown timeline" in text
    assert "drain" in text
    assert "ok: true" in text
    assert "terminated" in p.err.lines[-1]


def test_phase_transitions_are_logged_with_stable_keys(run):
    p = run(["--drain", "true"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    p.wait()
    phases = [e for e in p.events() if e["event"] == "phase_entered"]
    assert [e["phase"] for e in phases] == ["draining", "stopping"]
    for e in phases:
        assert {"phase", "elapsed_s", "deadline_s"} <= e.keys()
