"""Behaviours the lifecycle machine decides for one run: a stopped app, a moot drain."""

from __future__ import annotations

import signal
import time

import psutil
import pytest
from harness import app, wait_until

pytestmark = pytest.mark.timeout(40)


def _app_process(p) -> psutil.Process:
    wait_until(p.descendants)
    return next(d for d in p.descendants() if "recorder.py" in " ".join(d.cmdline()))


def test_stopped_app_is_continued_after_the_stop_signal_and_stops_gracefully(run):
    """SIGCONT follows the stop signal: a SIGSTOPped app acts on it instead of being killed."""
    p = run(["--grace", "10"], app("recorder", "--cleanup", "0.1"))
    p.ready()
    proc = _app_process(p)
    proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: proc.status() == psutil.STATUS_STOPPED)
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert time.monotonic() - sent < 5  # the deadline is 10 s away
    assert p.final()["reason"] == "Completed"


def test_drain_cancelled_because_the_app_exited_has_its_own_outcome(run):
    """A drain the app's exit made moot is `cancelled`, not `timed_out`."""
    p = run(["--grace", "20", "--drain", "sleep 30"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    p.err.wait_for('"drain_started"')
    _app_process(p).kill()  # the app dies while its drain still runs
    assert p.wait() == 137
    drains = p.final()["drains"]
    assert [d["outcome"] for d in drains] == ["cancelled"]
    assert drains[0]["detail"] == "cancelled: the app exited"
