"""pidone in a real container runtime: podman + runc, with pidone as PID 1.

Each test starts a container with ``podman run -d``, drives it with ``podman stop`` /
``podman kill`` and checks what the runtime reports (``podman inspect``) and what pidone logged
(``podman logs``). See conftest.py for how containers are made without an image.
"""

from __future__ import annotations

import http.client
import json
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LoadResult:
    ok: list[float] = field(default_factory=list)  # start times of complete answers
    refused: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(port: int, delay: float, result: LoadResult, stop: threading.Event, until: float) -> None:
    """Send requests one after another until the app has refused a few or *stop* is set."""
    refusals = 0
    while not stop.is_set() and refusals < 3 and time.monotonic() < until:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", f"/?delay={delay}")
            response = conn.getresponse()
            body = response.read()
            if response.status == 200 and body == b"hello from webapp\n":
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


def _wait_http_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"webapp did not answer /healthz on port {port} within {timeout} s")
        time.sleep(0.1)


def test_no_request_is_dropped_during_shutdown(podman: Podman, container: str) -> None:
    port = _free_port()
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
    _wait_http_ready(port, timeout=15)

    result = LoadResult()
    stop = threading.Event()
    until = time.monotonic() + 25
    clients = [
        threading.Thread(target=_load, args=(port, delay, result, stop, until), daemon=True)
        for delay in (0, 0.02, 0.1, 0.3, 0.6)
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        assert result.ok, f"no successful request before the stop: {result.errors}"
        stop_began = time.monotonic()
        took = podman.stop(container, timeout=15)
        print(f"\n[e2e] podman stop -t 15 of the webapp under load took {took:.2f} s")
    finally:
        # Clients refused 3 times stop on their own; give them a bounded time to get there
        # (a connection attempt made while the app was closing its socket may wait for a SYN
        # retransmission, about 1 s, before it is refused).
        join_deadline = time.monotonic() + 10
        for client in clients:
            client.join(timeout=max(0.0, join_deadline - time.monotonic()))
        stop.set()
        for client in clients:
            client.join(timeout=15)

    assert not result.errors, (
        f"{len(result.errors)} requests failed during shutdown, e.g. {sorted(result.errors)[:8]}"
    )
    served_after_stop = [t for t in result.ok if t >= stop_began]
    print(
        f"[e2e] {len(result.ok)} complete answers ({len(served_after_stop)} started after "
        f"`podman stop`), {len(result.refused)} clean refusals, 0 errors"
    )
    assert served_after_stop, "the pre-stop delay should have kept the app serving"
    assert result.refused, "the app never stopped listening?"
    assert min(result.refused) >= stop_began
    assert took < 8, took
    _assert_terminated(podman, container, "Completed", 0)
    _, err = podman.logs(container)
    assert "drained: no request in flight" in err, err


# -- 6. Dockerfile.example cannot rot -------------------------------------------------------------


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _exec_form(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    """The last *keyword* instruction, which must be in JSON exec form."""
    values = [rest for kw, rest in instructions if kw == keyword]
    assert values, f"Dockerfile.example has no {keyword}"
    argv = json.loads(values[-1])
    assert isinstance(argv, list), f"{keyword} must be in JSON exec form"
    assert all(isinstance(arg, str) for arg in argv)
    return argv


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for kw, rest in instructions:
        if kw == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"use ENV KEY=VALUE in Dockerfile.example: {rest}"
                env[key] = value
    return env


def _installed_pidone() -> list[str]:
    beside_python = Path(PYTHON).parent / "pidone"
    if beside_python.is_file():
        return [str(beside_python)]
    found = shutil.which("pidone")
    if found and "/shims/" not in found:
        return [found]
    return PIDONE


def _map_image_path(arg: str) -> str:
    """Map the image's layout onto this machine: /app/X is examples/X, python is ours."""
    if arg in {"python", "python3"}:
        return PYTHON
    if arg == "pidone":
        raise AssertionError("map pidone with _installed_pidone()")
    if arg.startswith("/app/"):
        return str(EXAMPLES / arg.removeprefix("/app/"))
    return arg


def test_dockerfile_example_entrypoint_and_cmd_work(podman: Podman, container: str) -> None:
    instructions = _dockerfile_instructions(REPO / "Dockerfile.example")
    entrypoint = _exec_form(instructions, "ENTRYPOINT")
    cmd = _exec_form(instructions, "CMD")
    env = _env(instructions)
    assert entrypoint[0] == "pidone", entrypoint
    assert ("STOPSIGNAL", "SIGTERM") in instructions

    # --grace must leave a margin below `docker stop`'s default timeout of 10 s.
    grace = float(entrypoint[entrypoint.index("--grace") + 1])
    assert grace <= 10 - 2, f"--grace {grace} leaves no margin below docker stop's 10 s"

    argv = [*_installed_pidone(), *[_map_image_path(arg) for arg in entrypoint[1:] + cmd]]
    podman.start(container, argv, env=env)
    podman.wait_for_log(container, "listening on")

    # The image's HEALTHCHECK command works against the running app.
    healthcheck = next(rest for kw, rest in instructions if kw == "HEALTHCHECK")
    probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :].strip())
    podman("exec", container, *[_map_image_path(arg) for arg in probe], timeout=20)

    took = podman.stop(container, timeout=10)  # docker stop's default timeout

    print(f"\n[e2e] Dockerfile.example argv: podman stop -t 10 took {took:.2f} s")
    assert took < grace, took
    _assert_terminated(podman, container, "Completed", 0)
