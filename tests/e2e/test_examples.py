"""The examples users copy first, run the way a user would: examples/k8s-deployment.yaml with
``podman kube play`` and examples/compose.yaml with podman-compose.

Both publish fixed host ports (8080 and 8081, as written in the files), so the two tests hold
a machine-wide lock while they run: several test sessions on one machine take turns.

podman's settings for this machine (cgroupfs, runc, ulimits) come from a ``containers.conf``
named by ``CONTAINERS_CONF``: ``kube play`` has no ``--ulimit`` and podman-compose passes no
global flags, and this is how a user would configure them too.

Three things about podman 4.3 found while writing these tests (see README, "Local testing"):

* ``podman kube down`` stops pods with a timeout of 0 s (it passes an empty
  ``PodStopOptions``): SIGTERM and SIGKILL at once, exit code 137, nothing drained.
* ``podman pod stop`` does use the container's stop timeout (which ``kube play`` takes from
  terminationGracePeriodSeconds), but stops the pod's infra container at the same instant,
  and with it the pod's network: requests in flight during the drain time out.
* ``kube play`` provides no file at terminationMessagePath (the kubelet bind-mounts a writable
  one): pidone, as uid 10001, cannot create /dev/termination-log and says so in one line.

The kubelet's termination is SIGTERM to the container, then at most
terminationGracePeriodSeconds, with the pod sandbox (its network) up until the container has
exited: on podman that is ``podman stop CONTAINER``, so the test stops the container that
way and only then runs ``kube down``.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import e2e_images
import pytest
from http_load import Load, wait_http_ready
from pidone_log import SHUTDOWN_SEQUENCE, assert_in_order, final_record, json_records

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import Podman

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PORTS = (8080, 8081)  # as published by both example files
PODMAN_COMPOSE = "podman-compose==1.6.0"  # honours stop_grace_period (Debian's 1.0.3 does not)
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


@pytest.fixture
def example_ports() -> Iterator[None]:
    """The examples' fixed host ports, held for one test at a time across sessions."""
    e2e_images.CACHE.mkdir(parents=True, exist_ok=True)
    with (e2e_images.CACHE / "example-ports.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for port in PORTS:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("0.0.0.0", port))  # what podman will publish on
                except OSError as exc:
                    pytest.fail(f"port {port}, published by the examples, is in use: {exc}")
        yield


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's podman commands: CONTAINERS_CONF for this machine."""
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def run(
    argv: list[str], env: dict[str, str], timeout: float = 60, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(argv)}` did not finish within {timeout} s: {exc!r}")
    if check and proc.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _status(port: int, path: str) -> int | None:
    """HTTP status of GET *path*, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# -- Kubernetes: podman kube play -------------------------------------------------------------


def test_k8s_deployment_plays_and_terminates_like_a_pod(
    podman: Podman,
    example_image: str,
    example_ports: None,
    user_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """examples/k8s-deployment.yaml (image and replicas swapped in, nothing else) under
    `podman kube play`: ready on /readyz, then a pod termination under load -- /readyz 503 at
    once, the 3 s pre-stop delay, the drain, SIGTERM, exit 0 -- with no failed request, well
    inside terminationGracePeriodSeconds."""
    del podman, example_ports
    text = (EXAMPLES / "k8s-deployment.yaml").read_text()
    original_image = "registry.example.com/pidone-webapp:0.1.0"
    assert text.count(original_image) == 1
    assert text.count("replicas: 2") == 1
    manifest = tmp_path / "k8s-deployment.yaml"
    manifest.write_text(
        text.replace(original_image, example_image).replace("replicas: 2", "replicas: 1")
    )
    pod, container = "pidone-webapp-pod-0", "pidone-webapp-pod-0-webapp"

    run(["podman", "kube", "play", str(manifest)], user_env)
    try:
        deadline = time.monotonic() + 30
        while _status(8081, "/readyz") != 200:  # pidone's readiness probe of /healthz passed
            assert time.monotonic() < deadline, "pidone's /readyz never answered 200"
            time.sleep(0.1)
        wait_http_ready(8080, timeout=10)
        inspect = ["podman", "inspect", "--format", "{{.Config.StopTimeout}}", container]
        assert run(inspect, user_env).stdout.strip() == "10"  # terminationGracePeriodSeconds

        took, readyz_503_after, summary = _stop_under_load(container, user_env)
        logged = run(["podman", "logs", container], user_env)
        logs = logged.stdout + logged.stderr
        exit_code = run(
            ["podman", "inspect", "--format", "{{.State.ExitCode}}", container], user_env
        ).stdout.strip()
    finally:
        down = run(["podman", "kube", "down", str(manifest)], user_env, check=False)
    assert run(["podman", "pod", "exists", pod], user_env, check=False).returncode == 1, down

    print(
        f"\n[e2e] k8s-deployment.yaml: /readyz 503 after {readyz_503_after:.2f} s, "
        f"podman stop took {took:.2f} s; {summary}"
    )
    print("[e2e] pidone's log:\n" + "\n".join(line for line in logs.splitlines() if "{" in line))
    assert exit_code == "0", logs
    assert 3 <= took < 10 - 2, took  # pre-stop delay + drain + exit, inside the grace period
    records = json_records(logs)
    assert_in_order(records, SHUTDOWN_SEQUENCE)
    final = final_record(logs)
    assert final.get("reason") == "Completed", final
    assert final.get("exit_code") == 0, final
    started = next(r for r in records if r.get("event") == "shutdown_started")
    assert started.get("pre_stop_delay_s") == 3.0, started
    # pidone wrote (or, under podman, tried to write) where the manifest says.
    termination = [r for r in records if str(r.get("event", "")).startswith("termination_log")]
    assert termination, "pidone never wrote its termination message"
    assert all(r.get("path") == "/dev/termination-log" for r in termination), termination


def _stop_under_load(container: str, env: dict[str, str]) -> tuple[float, float, str]:
    """`podman stop` under load: (its duration, when /readyz said 503, load summary)."""
    load = Load(8080)
    load.start()
    took: list[float] = []
    try:
        load.wait_for_answers(3)
        stop_began = time.monotonic()
        # The kubelet's termination: SIGTERM, then at most terminationGracePeriodSeconds (the
        # container's stop timeout), while the pod's network stays up.
        stopper = threading.Thread(
            target=lambda: took.append(_timed(["podman", "stop", container], env)), daemon=True
        )
        stopper.start()
        # From the instant SIGTERM arrives, /readyz says "not ready" while the app serves.
        readyz_503_after = _wait_for_status(8081, "/readyz", 503, stop_began, timeout=2)
        stopper.join(timeout=30)
    finally:
        load.finish()
    assert took, "podman stop did not return"
    return took[0], readyz_503_after, load.check(stop_began)


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    run(argv, env)
    return time.monotonic() - started


def _wait_for_status(port: int, path: str, status: int, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while _status(port, path) != status:
        assert time.monotonic() < deadline, f"{path} never answered {status}"
        time.sleep(0.02)
    return time.monotonic() - since


# -- Compose: podman-compose --------------------------------------------------------------------


@pytest.fixture(scope="session")
def podman_compose() -> str:
    """podman-compose from PyPI in a cached virtualenv of its own; its path."""
    venv = e2e_images.CACHE / ("venv-" + PODMAN_COMPOSE.replace("==", "-"))
    script = venv / "bin" / "podman-compose"
    if not script.is_file():
        with e2e_images.BuildLock():  # the same machine-wide lock
            if not script.is_file():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
                pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
                done = subprocess.run(
                    [*pip, PODMAN_COMPOSE], capture_output=True, text=True, check=False
                )
                if done.returncode != 0:
                    pytest.fail(f"pip install {PODMAN_COMPOSE} failed:\n{done.stderr}")
    return str(script)


def test_compose_file_builds_runs_and_stops_each_service_cleanly(
    podman: Podman,
    example_image: str,
    example_ports: None,
    user_env: dict[str, str],
    podman_compose: str,
) -> None:
    """examples/compose.yaml with podman-compose: built from Dockerfile.example (the cached
    base passed as BASE_IMAGE), up, stopped. web drains and exits 0 within stop_grace_period
    10s; workers (--signal-to group, stop_grace_period 15s above --grace 13) has its whole
    process group stopped: every worker finishes its clean-up and the script exits 0."""
    del podman, example_ports, example_image  # built first, so this build is all cache hits
    compose = [podman_compose, "-f", str(EXAMPLES / "compose.yaml")]
    build_args = "--format docker"
    if e2e_images.HOST_CA_BUNDLE.is_file():
        ca = e2e_images.HOST_CA_BUNDLE
        build_args += f" -v {ca}:{ca}:ro"
    base = e2e_images.base_image("python")
    run(
        [*compose, f"--podman-build-args={build_args}", "build", f"--build-arg=BASE_IMAGE={base}"],
        user_env,
        timeout=600,
    )
    web, workers = "pidone-example_web_1", "pidone-example_workers_1"
    try:
        run([*compose, "up", "-d", "--no-build"], user_env)
        wait_http_ready(8080, timeout=20)
        deadline = time.monotonic() + 20
        while "started 3 workers" not in run(["podman", "logs", workers], user_env).stdout:
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.1)

        started = time.monotonic()
        stop = run([*compose, "--verbose", "stop"], user_env)
        took = time.monotonic() - started
        outcome = {}
        for name in (web, workers):
            logs = run(["podman", "logs", name], user_env)
            code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name], user_env)
            outcome[name] = (code.stdout.strip(), logs.stdout, logs.stderr)
    finally:
        with contextlib.suppress(Exception):
            run([*compose, "down"], user_env, check=False)

    print(f"\n[e2e] compose.yaml: podman-compose stop took {took:.2f} s")
    commands = stop.stdout + stop.stderr
    # stop_grace_period reaches podman as `podman stop -t` (the runtime's deadline, 2 s
    # above pidone's --grace in each service).
    assert f"-t 10 {web}" in commands, commands
    assert f"-t 15 {workers}" in commands, commands

    code, out, err = outcome[web]
    assert code == "0", out + err
    web_final = final_record(err)
    assert web_final.get("reason") == "Completed", web_final
    assert "drained: no request in flight" in err, err

    code, out, err = outcome[workers]
    assert code == "0", out + err
    records = json_records(err)
    sent = next(r for r in records if r.get("event") == "stop_signal_sent")
    assert sent.get("to") == "group", sent
    for n in (1, 2, 3):
        assert f"group-app[worker-{n}]: done" in out, out
    assert "group-app[main]: all workers done, bye" in out, out
    workers_final = final_record(err)
    assert workers_final.get("reason") == "Completed", workers_final
    assert workers_final.get("exit_code") == 0, workers_final
    # CLEANUP_SECONDS=2: the workers' clean-up, not pidone's --grace 13 deadline, ended it.
    assert float(str(workers_final.get("duration_s"))) < 13, workers_final
    assert not [r for r in records if r.get("event") == "process_killed"], records
