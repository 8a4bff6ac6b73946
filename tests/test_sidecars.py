"""Sidecars: ordered, gated start; restarts while the app runs; reverse-ordered stop in one grace.

Order is read from the timestamps the processes record themselves (a shared
monotonic clock), not from pidone's log alone.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from pathlib import Path

import pytest
from harness import app, free_port, http_get, pidone_cli, wait_until

pytestmark = pytest.mark.timeout(40)
TOL = 0.6


def sidecar(name: str, record: Path, *extra: str) -> str:
    return f"{name}={shlex.join(app('sidecar', name, str(record), *extra))}"


def ready_check(name: str, record: Path) -> str:
    return f"{name}=exec:test -f {record}.{name}.ready"


def gated(name: str, record: Path, *extra: str) -> list[str]:
    """A sidecar ready once its signal handling is in place (no race with an early signal)."""
    return [
        "--sidecar", sidecar(name, record, "--ready-after", "0", *extra),
        "--sidecar-ready", ready_check(name, record),
    ]  # fmt: skip


def events(record: Path) -> list[tuple[str, str, float]]:
    if not record.exists():
        return []
    rows = [line.split() for line in record.read_text().splitlines()]
    return [(name, what, float(t)) for name, what, t in rows]


def when(record: Path, name: str, what: str, nth: int = 0) -> float:
    return [t for n, w, t in events(record) if (n, w) == (name, what)][nth]


def app_cmd(record: Path, *extra: str) -> list[str]:
    return app("sidecar", "app", str(record), *extra)


def test_sidecars_start_in_order_each_gated_on_its_readiness_and_the_app_last(run, tmp_path):
    rec = tmp_path / "rec"
    opts = [
        "--sidecar", sidecar("a", rec, "--ready-after", "0.3"),
        "--sidecar", sidecar("b", rec, "--ready-after", "0.2"),
        "--sidecar-ready", ready_check("a", rec),
        "--sidecar-ready", ready_check("b", rec),
    ]  # fmt: skip
    p = run(opts, app_cmd(rec))
    p.err.wait_for('"app_started"')
    wait_until(lambda: any(n == "app" for n, _, _ in events(rec)))
    assert when(rec, "a", "start") < when(rec, "a", "ready") < when(rec, "b", "start")
    assert when(rec, "b", "start") < when(rec, "b", "ready") < when(rec, "app", "start")
    assert [e["name"] for e in p.events() if e["event"] == "sidecar_ready"] == ["a", "b"]
    p.kill(signal.SIGTERM)
    assert p.wait() == 0


def test_sidecars_stop_after_the_app_in_reverse_order_each_after_the_previous_exited(run, tmp_path):
    rec = tmp_path / "rec"
    opts = [
        "--grace", "10",
        *gated("a", rec, "--stop-time", "0.2"),
        *gated("b", rec, "--stop-time", "0.2"),
    ]  # fmt: skip
    p = run(opts, app_cmd(rec, "--stop-time", "0.2"))
    p.err.wait_for('"app_started"')
    wait_until(lambda: any(n == "app" for n, _, _ in events(rec)))
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert when(rec, "app", "exit") < when(rec, "b", "term")
    assert when(rec, "b", "exit") < when(rec, "a", "term")
    final = p.final()
    assert final["reason"] == "Completed"
    assert [s["name"] for s in final["sidecars"]] == ["a", "b"]
    assert all(s["exit_code"] == 0 and s["stop_s"] >= 0.2 for s in final["sidecars"])


def test_app_exiting_on_its_own_stops_the_sidecars_and_its_code_comes_out(run, tmp_path):
    rec = tmp_path / "rec"
    # Ready once its handlers are in place: only then is its "term" line certain.
    opts = [
        "--sidecar",
        sidecar("a", rec, "--ready-after", "0"),
        "--sidecar-ready",
        ready_check("a", rec),
    ]
    p = run(opts, ["sh", "-c", "exit 5"])
    assert p.wait() == 5
    assert [w for n, w, _ in events(rec) if n == "a"] == ["start", "ready", "term", "exit"]
    assert p.final()["sidecars"][0]["exit_code"] == 0


def test_crashing_sidecar_is_restarted_with_backoff_while_the_app_runs_undisturbed(run, tmp_path):
    rec = tmp_path / "rec"
    opts = [
        "--restart-delay", "0.1",
        "--sidecar", sidecar("a", rec, "--crash-after", "0.1"),
    ]  # fmt: skip
    p = run(opts, app("recorder"))
    p.ready()
    wait_until(lambda: sum(1 for n, w, _ in events(rec) if (n, w) == ("a", "start")) >= 3)
    starts = [t for n, w, t in events(rec) if (n, w) == ("a", "start")]
    crashes = [t for n, w, t in events(rec) if (n, w) == ("a", "crash")]
    # CrashLoop backoff: 0.1 s, then 0.2 s (doubling) between a crash and the next start.
    assert starts[1] - crashes[0] >= 0.1
    assert starts[2] - crashes[1] >= 0.2
    assert not [line for line in p.out.lines if line.startswith("signal")]  # app undisturbed
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    final = p.final()
    assert final["reason"] == "Completed"
    assert final["sidecars"][0]["restarts"] >= 2
    assert any(e["event"] == "sidecar_restart_scheduled" for e in p.events())


def test_sidecar_ignoring_its_stop_signal_is_killed_at_the_deadline(run, tmp_path):
    rec = tmp_path / "rec"
    opts = ["--grace", "1.5", *gated("a", rec, "--ignore-term")]
    p = run(opts, app_cmd(rec))
    p.err.wait_for('"app_started"')
    wait_until(lambda: any(n == "app" for n, _, _ in events(rec)))
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 0  # the app's code
    assert abs(time.monotonic() - sent - 1.5) <= TOL
    final = p.final()
    assert final["reason"] == "Killed"
    assert final["sidecars"][0]["signal"] == "SIGKILL"


def test_sidecar_that_never_gets_ready_fails_the_start_and_the_app_never_starts(run, tmp_path):
    rec = tmp_path / "rec"
    opts = [
        "--sidecar-ready-timeout", "1.5",
        "--sidecar", sidecar("a", rec),
        "--sidecar-ready", "a=exec:false",
    ]  # fmt: skip
    p = run(opts, app_cmd(rec))
    wait_until(lambda: events(rec))  # it runs (and takes TERM) well before the bound
    assert p.wait() == 1
    final = p.final()
    assert (final["reason"], final["failed_sidecar"]) == ("SidecarFailed", "a")
    said = next(e for e in p.events() if e["event"] == "sidecar_not_ready")
    assert (said["name"], said["check"], said["timeout_s"]) == ("a", "false", 1.5)
    assert not any(e["event"] == "app_started" for e in p.events())
    assert [w for n, w, _ in events(rec)] == ["start", "term", "exit"]


def test_sidecar_whose_command_does_not_exist_fails_the_start_and_earlier_ones_stop(run, tmp_path):
    rec = tmp_path / "rec"
    opts = [
        "--sidecar", sidecar("a", rec, "--ready-after", "0"),
        "--sidecar-ready", ready_check("a", rec),
        "--sidecar", "b=/nonexistent/proxy",
    ]  # fmt: skip
    p = run(opts, app_cmd(rec))
    assert p.wait() == 127
    assert (p.final()["reason"], p.final()["failed_sidecar"]) == ("SidecarFailed", "b")
    assert [w for n, w, _ in events(rec)] == ["start", "ready", "term", "exit"]


@pytest.mark.parametrize(
    ("args", "quoted"),
    [
        (["--sidecar", "Proxy=nginx"], "Proxy"),
        (["--sidecar", "a=x", "--sidecar", "a=y"], "'a'"),
        (["--sidecar", "a=x", "--sidecar-ready", "b=tcp://127.0.0.1:1"], "'b'"),
        (["--sidecar", "a="], "a="),
        (["--sidecar", "app=nginx"], "'app'"),
        (["--sidecar", "init-0=nginx"], "'init-0'"),
    ],
)
def test_bad_sidecar_settings_are_one_line_and_exit_2(args, quoted):
    result = pidone_cli(*args, "--", "true")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert quoted in result.stderr


def test_readyz_needs_every_sidecar_running_and_ready_and_status_lists_them(run, tmp_path):
    rec = tmp_path / "rec"
    port = free_port()
    opts = [
        "--status-addr", f"127.0.0.1:{port}",
        "--restart-delay", "30",
        "--sidecar", sidecar("a", rec, "--ready-after", "0", "--crash-after", "3"),
        "--sidecar-ready", ready_check("a", rec),
    ]  # fmt: skip
    p = run(opts, app("recorder"))
    p.ready()
    assert http_get(port, "/readyz")[0] == 200  # a is ready for its first seconds
    p.err.wait_for('"sidecar_restart_scheduled"')
    assert http_get(port, "/readyz")[0] == 503
    assert http_get(port, "/livez")[0] == 200  # a sidecar down is not the app down
    status = json.loads(http_get(port, "/status")[1])
    [side] = status["sidecars"]
    assert (side["name"], side["state"], side["ready"]) == ("a", "exited", False)
    assert side["last_exit"]["exit_code"] == 3
    p.kill(signal.SIGTERM)
    assert p.wait() == 0


def test_sidecar_ready_over_sd_notify_gates_the_app(run, tmp_path):
    """``--sidecar-ready NAME=notify``: its own NOTIFY_SOCKET; READY=1 lets the app start."""
    rec = tmp_path / "rec"
    opts = ["--sidecar", sidecar("a", rec, "--notify-after", "0.5"), "--sidecar-ready", "a=notify"]
    p = run(opts, app_cmd(rec))
    p.err.wait_for('"app_started"')
    wait_until(lambda: any(n == "app" for n, _, _ in events(rec)))
    assert when(rec, "a", "notify") < when(rec, "app", "start")
    assert p.event("sidecar_ready")["check"] == "notify"
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
