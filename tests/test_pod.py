"""Pod lifecycle in one container: init commands, post-start hooks, probes, status endpoint."""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import socket
import threading
import time
import uuid

import pytest
from harness import PY, app, free_port, http_get, processes_with, wait_until, wakeups_while_idle

pytestmark = pytest.mark.timeout(40)
TOL = 0.5


@pytest.fixture
def mode() -> str:
    """These behaviours do not depend on being PID 1: run them once, as PID 1."""
    return "pid1"


def status_code(port: int, path: str) -> int | None:
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


class Health:
    """A test HTTP server whose /health answers 200 or 500 as the test says."""

    def __init__(self) -> None:
        self.healthy = True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if outer.healthy else 500)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def health():
    h = Health()
    yield h
    h.server.shutdown()


# -- init commands -------------------------------------------------------------


def test_init_commands_run_in_order_before_the_app(run, tmp_path):
    log = tmp_path / "log"
    p = run(
        ["--init", f"sh -c 'echo init-1 >> {log}'", "--init", f"sh -c 'echo init-2 >> {log}'"],
        ["sh", "-c", f"echo app >> {log}"],
    )
    assert p.wait() == 0
    assert log.read_text().splitlines() == ["init-1", "init-2", "app"]
    assert p.final()["reason"] == "Completed"


def test_failing_init_ends_pidone_with_its_code_and_the_app_never_starts(run, tmp_path):
    marker = tmp_path / "app-started"
    p = run(
        ["--init", "sh -c 'exit 3'", "--init", f"touch {tmp_path / 'second'}"],
        ["touch", str(marker)],
    )
    assert p.wait() == 3
    final = p.final()
    assert final["reason"] == "InitFailed"
    assert final["init"] == "sh -c 'exit 3'"
    assert not marker.exists()
    assert not (tmp_path / "second").exists()


def test_missing_init_command_is_init_failed_127(run, tmp_path):
    p = run(["--init", "no-such-init-cmd"], ["touch", str(tmp_path / "x")])
    assert p.wait() == 127
    assert p.final()["reason"] == "InitFailed"


def test_shutdown_signal_during_init_stops_it_and_the_app_never_starts(run, tmp_path):
    marker = tmp_path / "app-started"
    p = run(["--init", f"{PY} {app('recorder')[1]}"], ["touch", str(marker)])
    p.out.wait_for("ready")
    sent = p.kill(signal.SIGTERM)
    p.wait()
    assert time.monotonic() - sent < 2.0
    assert "signal SIGTERM" in p.out.lines  # the init command got the stop signal
    assert not marker.exists()


# -- post-start hooks ----------------------------------------------------------


def test_post_start_hook_runs_beside_the_app(run, tmp_path):
    log = tmp_path / "log"
    p = run(["--post-start", f"sh -c 'echo hook >> {log}'"], app("recorder"))
    p.ready()
    p.err.wait_for('"post_start_finished"')
    assert log.read_text() == "hook\n"
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert p.final()["reason"] == "Completed"


def test_failing_post_start_hook_stops_the_app_and_never_exits_0(run, tmp_path):
    # The hook fails once the test says so: after the app is ready for its TERM.
    go = tmp_path / "go"
    hook = f"sh -c 'while [ ! -e {go} ]; do sleep 0.02; done; exit 5'"
    p = run(["--post-start", hook], app("recorder"))
    p.ready()
    go.touch()
    assert p.wait() == 1  # the app exits 0 on TERM; pidone still reports the failure
    assert "signal SIGTERM" in p.out.lines
    final = p.final()
    assert final["reason"] == "PostStartHookFailed"
    assert final["failure"]["detail"] == "exit code 5"
    assert p.event("FailedPostStartHook")["hook"] == hook


def test_post_start_hook_past_its_timeout_is_killed_and_stops_the_app(run):
    tag = uuid.uuid4().hex[:8]
    p = run(
        ["--hook-timeout", "1", "--post-start", f"sh -c 'sleep 30; echo {tag}'"], app("recorder")
    )
    p.ready()
    started = time.monotonic()
    assert p.wait() == 1
    assert time.monotonic() - started < 1 + 1.5
    assert p.final()["reason"] == "PostStartHookFailed"
    assert "timed out" in p.final()["failure"]["detail"]
    assert processes_with(tag) == []


# -- probes ----------------------------------------------------------------------


def test_liveness_http_probe_failing_past_its_threshold_stops_the_app(run, health):
    p = run(
        [
            f"--liveness-probe=http://127.0.0.1:{health.port}/health",
            "--liveness-period",
            "0.2",
            "--liveness-failure-threshold",
            "2",
        ],
        app("recorder"),
    )
    p.ready()
    p.err.wait_for('"probe_succeeded"')
    time.sleep(0.6)  # three healthy periods: the app must still be running
    assert p.proc.poll() is None
    flipped = time.monotonic()
    health.healthy = False
    assert p.wait() == 1
    took = time.monotonic() - flipped
    assert took <= 2 * 0.2 + 0.2 + 1.0  # two failed periods, then the stop
    final = p.final()
    assert final["reason"] == "LivenessProbeFailed"
    assert final["failure"]["detail"] == "HTTP 500"
    assert p.event("Unhealthy")["probe"] == "liveness"


def test_startup_probe_gates_liveness_and_its_failure_is_reported(run, tmp_path):
    ready_file = tmp_path / "started"
    p = run(
        [
            f"--startup-probe=exec:test -f {ready_file}",
            "--startup-period",
            "0.1",
            "--startup-failure-threshold",
            "100",
            "--liveness-probe=exec:false",
            "--liveness-period",
            "0.1",
            "--liveness-failure-threshold",
            "1",
        ],
        app("recorder"),
    )
    p.ready()
    time.sleep(0.8)  # liveness would have failed eight times were it not gated
    assert p.proc.poll() is None
    ready_file.touch()
    assert p.wait() == 1
    assert p.final()["reason"] == "LivenessProbeFailed"


def test_startup_probe_that_never_succeeds_stops_the_app(run):
    p = run(
        [
            "--startup-probe=tcp://127.0.0.1:9",
            "--startup-period",
            "0.1",
            "--startup-failure-threshold",
            "8",  # ~0.7 s: the app is ready for its TERM by then
        ],
        app("recorder"),
    )
    assert p.wait() == 1
    final = p.final()
    assert final["reason"] == "StartupProbeFailed"
    assert "Refused" in final["failure"]["detail"]


def test_hung_exec_probe_is_killed_at_its_timeout(run):
    tag = "7301.5"
    p = run(
        [
            f"--liveness-probe=exec:sh -c 'sleep {tag} & sleep {tag}'",
            "--liveness-timeout",
            "0.3",
            "--liveness-period",
            "1",
            "--liveness-failure-threshold",
            "1",
            "--liveness-initial-delay",
            "0.5",
        ],
        app("recorder"),
    )
    p.ready()
    assert p.wait() == 1
    event = p.event("Unhealthy")
    assert event["detail"] == "timed out after 0.3s"
    assert processes_with(f"sleep {tag}") == []


def test_exec_probe_output_is_reported_when_unhealthy(run, tmp_path):
    go = tmp_path / "go"
    p = run(
        [
            f"--liveness-probe=exec:sh -c 'test -e {go} || exit 0; echo disk full; exit 1'",
            "--liveness-period",
            "0.2",
            "--liveness-failure-threshold",
            "1",
        ],
        app("recorder"),
    )
    p.ready()
    go.touch()
    assert p.wait() == 1
    assert "disk full" in p.event("Unhealthy")["output"]
    assert "disk full" in p.final()["failure"]["output"]


# -- the status endpoint ---------------------------------------------------------------


def test_readyz_follows_readiness_probe_and_status_reports_it(run):
    port, target = free_port(), free_port()
    listener = socket.socket()
    p = run(
        [
            "--status-addr",
            f"127.0.0.1:{port}",
            f"--readiness-probe=tcp://127.0.0.1:{target}",
            "--readiness-period",
            "0.1",
            "--readiness-failure-threshold",
            "1",
        ],
        app("recorder"),
    )
    p.ready()
    wait_until(lambda: status_code(port, "/livez") == 200)
    assert status_code(port, "/readyz") == 503  # nothing listens yet
    listener.bind(("127.0.0.1", target))
    listener.listen()
    wait_until(lambda: status_code(port, "/readyz") == 200, timeout=5)
    status = json.loads(http_get(port, "/status")[1])
    assert status["ready"] is True
    assert status["probes"]["readiness"]["healthy"] is True
    assert status["app_pid"] is not None
    listener.close()
    wait_until(lambda: status_code(port, "/readyz") == 503, timeout=5)
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert p.final()["reason"] == "Completed"  # readiness never stops anything


def test_readyz_turns_503_within_100ms_of_the_shutdown_signal(run):
    port = free_port()
    p = run(["--status-addr", f"127.0.0.1:{port}", "--pre-stop-delay", "2"], app("recorder"))
    p.ready()
    wait_until(lambda: status_code(port, "/readyz") == 200)
    sent = p.kill(signal.SIGTERM)
    wait_until(lambda: status_code(port, "/readyz") == 503, timeout=1, interval=0.005)
    assert time.monotonic() - sent < 0.1
    assert "signal SIGTERM" not in p.out.lines  # still within the pre-stop delay
    assert p.wait() == 0


def test_a_crowd_of_idle_status_clients_does_not_delay_signals(run):
    port = free_port()
    p = run(["--status-addr", f"127.0.0.1:{port}"], app("recorder"))
    p.ready()
    wait_until(lambda: status_code(port, "/livez") == 200)
    crowd = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        sent = p.kill(signal.SIGUSR1)
        p.out.wait_for("signal SIGUSR1", timeout=2)
        assert time.monotonic() - sent < 0.5
        assert status_code(port, "/readyz") == 200
    finally:
        for conn in crowd:
            conn.close()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0


def test_bound_status_port_in_use_is_refused_before_the_app_starts(run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run(["--status-addr", f"127.0.0.1:{port}"], ["touch", str(tmp_path / "x")])
        assert p.wait() == 2
    assert not (tmp_path / "x").exists()
    assert "--status-addr" in p.err.lines[-1]


def test_idle_pidone_with_a_status_port_does_not_wake_up(run):
    port = free_port()
    p = run(["--status-addr", f"127.0.0.1:{port}"], app("recorder"))
    p.ready()
    wait_until(lambda: status_code(port, "/livez") == 200)
    assert wakeups_while_idle(p.pid) == 0
    p.kill(signal.SIGTERM)
    p.wait()


def test_leftovers_of_an_init_command_do_not_outlive_a_failed_start(run):
    tag = "301.77"
    p = run(["--grace", "1", "--init", f"sh -c 'sleep {tag} & exit 0'"], ["/nonexistent/app"])
    assert p.wait() == 127
    assert p.final()["reason"] == "StartError"
    assert processes_with(f"sleep {tag}") == []
