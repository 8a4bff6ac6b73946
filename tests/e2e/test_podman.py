"""pidone in a real container runtime: podman + runc, with pidone as PID 1.

Each test starts a container with ``podman run -d``, drives it with ``podman stop`` /
``podman kill`` and checks what the runtime reports (``podman inspect``) and what pidone logged
(``podman logs``). See conftest.py for how containers are made without an image;
test_images.py builds and runs the real example images.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from http_load import Load, free_port, wait_http_ready

if TYPE_CHECKING:
    from tests.e2e.conftest import Podman

pytestmark = pytest.mark.e2e

# Same values as in conftest.py (not imported: conftest modules are not meant to be imported).
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PYTHON = sys.executable
PIDONE = [PYTHON, "-m", "pidone"]  # PYTHONPATH=REPO inside the containers: the working copy

# -- tiny apps, run with `python -c` (no files needed inside the container) ---------------------

# Does nothing about signals. As PID 1 the kernel drops every signal it has no handler for, so
# SIGTERM from `podman stop` simply vanishes: this is the problem pidone exists to solve.
OBLIVIOUS_APP = """
import time
print("ready", flush=True)
time.sleep(3600)
"""

# Stops promptly and cleanly on SIGTERM.
GRACEFUL_APP = """
import signal, sys
def on_term(signum, frame):
    print("app: got SIGTERM, exiting", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    signal.pause()
"""

# Ignores SIGTERM on purpose: only SIGKILL gets rid of it.
STUBBORN_APP = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""

# Reports every signal it gets on stdout; on SIGTERM also whether the drain marker file (argv[1])
# already exists, i.e. whether pidone ran the drains before sending the stop signal.
SIGNAL_RECORDER_APP = """
import os, signal, sys
marker = sys.argv[1]
def on_signal(signum, frame):
    name = signal.Signals(signum).name
    if signum == signal.SIGTERM:
        print(f"app: got {name} drained-before-term={os.path.exists(marker)}", flush=True)
        sys.exit(0)
    print(f"app: got {name}", flush=True)
for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
    signal.signal(sig, on_signal)
print("ready", flush=True)
while True:
    signal.pause()
"""


def json_records(text: str) -> list[dict[str, object]]:
    """The JSON objects among the lines of *text* (pidone's log lines), in order."""
    records = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def terminated_record(stderr: str) -> dict[str, object]:
    """pidone's final log line: event "terminated", asserted to be the last JSON line."""
    records = json_records(stderr)
    assert records, f"no JSON log lines from pidone in stderr:\n{stderr}"
    last = records[-1]
    assert last.get("event") == "terminated", (
        f"last JSON log line is not the 'terminated' event: {last}\nstderr:\n{stderr}"
    )
    return last


def _py(code: str, *args: str) -> list[str]:
    return [PYTHON, "-c", code, *args]


def _assert_terminated(podman: Podman, name: str, reason: str, exit_code: int) -> dict[str, object]:
    """ExitCode from `podman inspect` and pidone's final "terminated" log line agree."""
    assert podman.status(name) == "exited"
    out, err = podman.logs(name)
    assert podman.exit_code(name) == exit_code, f"stdout:\n{out}\nstderr:\n{err}"
    record = terminated_record(err)
    assert record.get("reason") == reason, record
    assert record.get("exit_code") == exit_code, record
    return record


# -- 1. why pidone exists -----------------------------------------------------------------------


def test_baseline_without_pidone_stop_waits_for_the_timeout(podman: Podman, container: str) -> None:
    podman.start(container, _py(OBLIVIOUS_APP))
    podman.wait_for_log(container, "ready")

    took = podman.stop(container, timeout=2)

    print(f"\n[e2e] podman stop -t 2 without pidone took {took:.2f} s")
    # SIGTERM is dropped by the kernel (PID 1 without a handler); the runtime waits out the
    # whole timeout and then SIGKILLs.
    assert 1.9 <= took < 6, took
    assert podman.exit_code(container) == 137


# -- 2. graceful app ----------------------------------------------------------------------------


def test_graceful_app_stops_quickly_with_exit_code_0(podman: Podman, container: str) -> None:
    podman.start(container, [*PIDONE, "--grace", "8", "--", *_py(GRACEFUL_APP)])
    podman.wait_for_log(container, "ready")

    took = podman.stop(container, timeout=10)

    print(f"\n[e2e] podman stop -t 10 with pidone, graceful app, took {took:.2f} s")
    assert took < 3, took
    _assert_terminated(podman, container, "Completed", 0)
    out, _ = podman.logs(container)
    assert "app: got SIGTERM, exiting" in out


# -- 3. pidone enforces its own deadline ----------------------------------------------------------


def test_app_ignoring_sigterm_is_killed_by_pidone_at_its_grace(
    podman: Podman, container: str
) -> None:
    podman.start(container, [*PIDONE, "--grace", "3", "--", *_py(STUBBORN_APP)])
    podman.wait_for_log(container, "ready")

    took = podman.stop(container, timeout=10)

    print(
        f"\n[e2e] podman stop -t 10 with pidone --grace 3, app ignoring SIGTERM, took {took:.2f} s"
    )
    # pidone's deadline (3 s), not the runtime's (10 s), ends it.
    assert 2.5 <= took <= 6, took
    _assert_terminated(podman, container, "Killed", 137)


# -- 4. signals are forwarded, drains run before the stop signal ---------------------------------


def test_signals_reach_the_app_and_drains_run_before_stop(
    podman: Podman, container: str, request: pytest.FixtureRequest
) -> None:
    token = uuid.uuid4().hex[:12]
    marker = f"/tmp/pidone-e2e-drained-{token}"  # as the container sees it
    seen_from_host = podman.host_path(marker)
    request.addfinalizer(lambda: seen_from_host.unlink(missing_ok=True))
    drain = f"sh -c {shlex.quote(f'echo DRAIN-MARKER-{token}; touch {marker}')}"
    podman.start(
        container,
        [*PIDONE, "--grace", "8", "--drain", drain, "--", *_py(SIGNAL_RECORDER_APP, marker)],
    )
    podman.wait_for_log(container, "ready")

    podman.kill(container, "USR1")
    podman.wait_for_log(container, "app: got SIGUSR1", timeout=5)
    podman.kill(container, "USR2")
    podman.wait_for_log(container, "app: got SIGUSR2", timeout=5)
    assert not seen_from_host.exists(), "drains must only run on shutdown"

    took = podman.stop(container, timeout=10)

    print(f"\n[e2e] podman stop -t 10 with a drain command took {took:.2f} s")
    assert took < 5, took
    out, err = podman.logs(container)
    assert f"DRAIN-MARKER-{token}" in out + err, f"stdout:\n{out}\nstderr:\n{err}"
    assert seen_from_host.exists()
    assert "app: got SIGTERM drained-before-term=True" in out, out
    _assert_terminated(podman, container, "Completed", 0)


# -- 5. zero dropped requests ---------------------------------------------------------------------


def test_no_request_is_dropped_during_shutdown(podman: Podman, container: str) -> None:
    port = free_port()
    podman.start(
        container,
        [
            *PIDONE,
            "--grace",
            "8",
            "--pre-stop-delay",
            "1",
            "--drain-http",
            f"POST http://127.0.0.1:{port}/drain",
            "--",
            PYTHON,
            str(EXAMPLES / "webapp.py"),
            "--port",
            str(port),
        ],
        network="host",
    )
    wait_http_ready(port, timeout=15)

    load = Load(port)
    load.start()
    try:
        load.wait_for_answers(1)
        stop_began = time.monotonic()
        took = podman.stop(container, timeout=15)
        print(f"\n[e2e] podman stop -t 15 of the webapp under load took {took:.2f} s")
    finally:
        load.finish()

    print(f"[e2e] {load.check(stop_began)}")
    assert took < 8, took
    _assert_terminated(podman, container, "Completed", 0)
    _, err = podman.logs(container)
    assert "drained: no request in flight" in err, err
