"""sd_notify readiness and watchdog with real clients; restarts with CrashLoop backoff."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import time
from datetime import datetime

import psutil
import pytest
from harness import PY, app, free_port, http_get, wait_until

pytestmark = pytest.mark.timeout(40)

# A recorder-like app that sends READY=1 (and a STATUS) over sd_notify when told
# to with SIGUSR1, using the sdnotify package as a real client.
NOTIFY_APP = """
import signal, sys, sdnotify
n = sdnotify.SystemdNotifier()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
print("ready", flush=True)
n.notify("STATUS=warming up")
while True:
    sig = signal.sigwait({signal.SIGUSR1, signal.SIGTERM})
    if sig == signal.SIGTERM:
        n.notify("STOPPING=1")
        sys.exit(0)
    n.notify("READY=1\\nSTATUS=serving\\nX-UNKNOWN=ignored")
    print("notified", flush=True)
"""


@pytest.fixture
def mode() -> str:
    return "pid1"


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def test_readiness_is_held_back_until_the_app_sends_ready(run):
    port = free_port()
    p = run(["--notify", "--status-addr", f"127.0.0.1:{port}"], [PY, "-c", NOTIFY_APP])
    p.ready()
    p.err.wait_for('"app_status"')
    assert http_get(port, "/readyz")[0] == 503
    assert json.loads(http_get(port, "/status")[1])["notify_status"] == "warming up"
    p.kill(signal.SIGUSR1)
    p.out.wait_for("notified")
    wait_until(lambda: http_get(port, "/readyz")[0] == 200)
    assert json.loads(http_get(port, "/status")[1])["notify_status"] == "serving"
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    p.event("app_notified_stopping")


@pytest.mark.skipif(not shutil.which("systemd-notify"), reason="needs systemd-notify")
def test_systemd_notify_from_debian_works_unchanged(run):
    script = 'systemd-notify --ready --status="up from sh" && echo ready && exec sleep 30'
    p = run(["--notify"], ["sh", "-c", script])
    p.ready()
    p.err.wait_for('"app_notified_ready"')
    assert p.event("app_status")["status"] == "up from sh"
    p.kill(signal.SIGTERM)
    p.wait()


def test_app_that_stops_pinging_the_watchdog_is_stopped(run):
    # Three pings, 0.2 s apart, then silence: the 0.6 s watchdog must fire.
    script = (
        'test "$WATCHDOG_USEC" = 600000 || exit 9; echo ready; '
        "for i in 1 2 3; do systemd-notify WATCHDOG=1; sleep 0.2; done; exec sleep 30"
    )
    if not shutil.which("systemd-notify"):
        pytest.skip("needs systemd-notify")
    p = run(["--notify", "--watchdog", "0.6"], ["sh", "-c", script])
    p.ready()
    started = time.monotonic()
    code = p.wait()
    took = time.monotonic() - started
    assert code == 128 + signal.SIGTERM
    final = p.final()
    assert final["reason"] == "WatchdogTimeout"
    assert 0.6 + 0.4 <= took <= 0.6 + 0.6 + 1.0  # pinged for ~0.6 s, then 0.6 s of silence


def test_a_flood_of_notify_messages_does_not_disturb_pidone(run):
    flood = (
        "import os, socket, sys\n"
        "addr = '\\0' + os.environ['NOTIFY_SOCKET'][1:]\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "for i in range(20000):\n"
        "    try:\n"
        "        s.sendto(b'STATUS=' + str(i).encode() * 50, addr)\n"
        "    except BlockingIOError:\n"
        "        pass\n"
        "print('flooded', flush=True)\n"
    )
    p = run(["--notify"], ["sh", "-c", f'{PY} -c "$0" && exec {PY} {app("recorder")[1]}', flood])
    p.out.wait_for("flooded", timeout=20)
    p.out.wait_for("ready")
    p.err.wait_for('"app_started"')
    rss = psutil.Process(p.pid).memory_info().rss
    assert rss < 60 * 2**20
    p.kill(signal.SIGUSR1)
    p.out.wait_for("signal SIGUSR1", timeout=2)
    p.kill(signal.SIGTERM)
    assert p.wait() == 0


def test_restart_delays_double_up_to_the_cap(run):
    p = run(
        ["--restart", "on-failure", "--restart-delay", "0.2", "--restart-delay-max", "0.5"],
        ["sh", "-c", "exit 3"],
    )
    p.err.wait_for('"restart_scheduled"', count=4, timeout=10)
    p.kill(signal.SIGTERM)
    assert p.wait() == 3  # a shutdown during the backoff ends at once, with the last code
    scheduled = [e for e in p.events() if e["event"] == "restart_scheduled"]
    assert [e["delay_s"] for e in scheduled[:4]] == [0.2, 0.4, 0.5, 0.5]
    starts = [ts(e) for e in p.events() if e["event"] == "app_started"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap, expected in zip(gaps, [0.2, 0.4, 0.5], strict=False):
        assert expected - 0.05 <= gap <= expected + 0.5
    assert p.final()["restarts"] >= 4


def test_a_run_longer_than_restart_reset_resets_the_delay(run):
    p = run(
        ["--restart", "always", "--restart-delay", "0.1", "--restart-reset", "0.3"],
        ["sh", "-c", "sleep 0.4; exit 1"],
    )
    p.err.wait_for('"restart_scheduled"', count=3, timeout=10)
    p.kill(signal.SIGTERM)
    p.wait()
    delays = [e["delay_s"] for e in p.events() if e["event"] == "restart_scheduled"]
    assert delays[:3] == [0.1, 0.1, 0.1]


def test_shutdown_during_backoff_exits_at_once(run):
    p = run(["--restart", "on-failure", "--restart-delay", "30"], ["sh", "-c", "exit 4"])
    p.err.wait_for('"restart_scheduled"')
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 4
    assert time.monotonic() - sent < 1.0
    assert p.event("shutdown_during_backoff")


def test_liveness_failure_restarts_hooks_rerun_inits_do_not(run, tmp_path):
    log = tmp_path / "log"
    port = free_port()
    p = run(
        [
            "--restart",
            "on-failure",
            "--restart-delay",
            "0.1",
            "--status-addr",
            f"127.0.0.1:{port}",
            "--init",
            f"sh -c 'echo init >> {log}'",
            "--post-start",
            f"sh -c 'echo hook >> {log}'",
            "--liveness-probe=exec:false",
            "--liveness-period",
            "0.1",
            "--liveness-failure-threshold",
            "1",
            "--liveness-initial-delay",
            "0.5",
        ],
        app("recorder", "--log", str(log)),
    )
    p.err.wait_for('"restart_scheduled"', count=2, timeout=15)
    wait_until(lambda: json.loads(http_get(port, "/status")[1])["restarts"] >= 2)
    status = json.loads(http_get(port, "/status")[1])
    assert status["last_exit"]["reason"] == "LivenessProbeFailed"
    started = [e for e in p.events() if e["event"] == "app_started"]
    assert started[1]["restart"] == 1
    assert started[1]["last_reason"] == "LivenessProbeFailed"
    p.kill(signal.SIGTERM)
    p.wait()
    lines = log.read_text().splitlines()
    assert lines.count("init") == 1
    assert lines.count("hook") >= 2
    assert sum(line.startswith("ready") for line in lines) >= 2


def test_default_policy_never_restarts(run):
    p = run([], ["sh", "-c", "exit 5"])
    assert p.wait() == 5
    assert not [e for e in p.events() if e["event"] == "restart_scheduled"]


def test_config_file_sets_the_notify_flag_and_the_restart_policy(tmp_path):
    from pidone import cli
    from pidone.settings import fast_parse

    path = tmp_path / "pidone.toml"
    path.write_text('notify = true\nwatchdog = 5\nrestart = "on-failure"\nrestart-delay = 0.5\n')
    config = fast_parse(["--config", str(path), "app"], {})
    assert config is not None
    assert config.notify is True
    assert config.watchdog == 5.0
    assert (config.restart, config.restart_delay) == ("on-failure", 0.5)
    assert cli.parse(["--config", str(path), "app"]) == config


def test_watchdog_without_notify_is_refused_before_anything_starts(tmp_path):
    import subprocess
    import sys

    from harness import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "pidone", "--watchdog", "5", "touch", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--watchdog needs --notify" in done.stderr
    assert not (tmp_path / "x").exists()


def test_shutdown_signal_during_a_stop_pidone_began_is_never_undone_by_a_restart(run, tmp_path):
    go = tmp_path / "go"
    p = run(
        [
            "--restart",
            "always",
            "--restart-delay",
            "0.1",
            "--grace",
            "2",
            f"--liveness-probe=exec:test ! -e {go}",
            "--liveness-period",
            "0.2",
            "--liveness-failure-threshold",
            "1",
        ],
        app("tree", "--ignore-term"),
    )
    p.out.wait_for("ready")  # TERM is ignored from here on
    go.touch()
    p.err.wait_for('"stopping_app"')
    p.kill(signal.SIGTERM)  # docker stop, while pidone stops the app for its own reason
    assert p.wait() == 137
    assert p.event("shutdown_joined")["cause"] == "liveness_probe_failed"
    assert not [e for e in p.events() if e["event"] == "restart_scheduled"]
    assert sum(e["event"] == "app_started" for e in p.events()) == 1


def test_a_probe_slower_than_its_period_does_not_make_pidone_spin(run):
    p = run(
        ["--liveness-probe=exec:sleep 1.5", "--liveness-period", "0.2", "--liveness-timeout", "5"],
        app("recorder"),
    )
    p.ready()
    proc = psutil.Process(p.pid)

    def probe_running() -> bool:
        for child in p.descendants():
            with contextlib.suppress(psutil.Error):
                if "sleep" in child.cmdline():
                    return True
        return False

    wait_until(probe_running)  # the first run has started and is still going
    before = proc.cpu_times()
    time.sleep(1.0)  # measuring CPU use over a window, not synchronising
    after = proc.cpu_times()
    assert (after.user + after.system) - (before.user + before.system) < 0.1
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
