"""The example images, built for real and run under podman.

``Dockerfile.example`` (pidone installed with pip in a Python image) and
``Dockerfile.standalone.example`` (the standalone pidone from scripts/build-standalone in an
image with no Python) are built with ``podman build --format docker`` on Debian bookworm bases
bootstrapped with mmdebstrap (e2e_images.py: built once, then cached in podman's image store
under tags that hash their inputs). The containers run the images' own ENTRYPOINT, CMD, USER
and HEALTHCHECK, with the app's port published on 127.0.0.1 through podman's bridge network.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest
from http_load import Load, free_port, wait_http_ready
from pidone_log import SHUTDOWN_SEQUENCE, assert_in_order, final_record, json_records

if TYPE_CHECKING:
    from tests.e2e.conftest import Podman

# The first test of a session may bootstrap the bases and build the images (about 75 s cold,
# see README "Quick start"); pytest-timeout counts that fixture set-up.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def _final(podman: Podman, name: str, reason: str, exit_code: int) -> list[dict[str, object]]:
    """Runtime exit code and pidone's last line agree; all of pidone's records."""
    out, err = podman.logs(name)
    assert podman.status(name) == "exited"
    assert podman.exit_code(name) == exit_code, f"stdout:\n{out}\nstderr:\n{err}"
    last = final_record(err)
    assert last.get("reason") == reason, last
    assert last.get("exit_code") == exit_code, last
    return json_records(err)


def _stop_under_load(podman: Podman, name: str, port: int, timeout: int) -> tuple[float, str]:
    """`podman stop` while clients keep sending requests; (seconds taken, load summary)."""
    load = Load(port)
    load.start()
    try:
        load.wait_for_answers(3)
        stop_began = time.monotonic()
        took = podman.stop(name, timeout=timeout)
    finally:
        load.finish()
    return took, load.check(stop_began)


# -- Dockerfile.example ---------------------------------------------------------------------------


def test_example_image_runs_as_its_user_and_passes_its_healthcheck(
    podman: Podman, container: str, example_image: str
) -> None:
    """USER 10001 reaches pidone (PID 1) and the app; the HEALTHCHECK survives the build."""
    port = free_port()
    podman.start_image(container, example_image, publish={port: 8080})
    wait_http_ready(port, timeout=20)

    _, err = podman.logs(container)
    app_pid = next(r["pid"] for r in json_records(err) if r.get("event") == "app_started")
    for pid in (1, app_pid):
        status = podman("exec", container, "cat", f"/proc/{pid}/status").stdout
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["10001"] * 4, (pid, uid_line)

    # --format docker keeps HEALTHCHECK (the OCI format has none); the check passes.
    config = json.loads(
        podman("inspect", "--format", "{{json .Config.Healthcheck}}", container).stdout
    )
    assert config, "the image has no HEALTHCHECK"
    assert config["Test"][0] == "CMD", config
    check = podman("healthcheck", "run", container, check=False)
    assert check.returncode == 0, f"healthcheck failed: {check.stdout} {check.stderr}"


def test_example_image_drains_under_load_and_stops_with_0(
    podman: Podman, container: str, example_image: str
) -> None:
    """`podman stop` (-t 10, docker's default) of the built image under load: no failed request,
    the whole documented sequence in the logs, exit code 0."""
    entrypoint = json.loads(
        podman("image", "inspect", "--format", "{{json .Config.Entrypoint}}", example_image).stdout
    )
    grace = float(entrypoint[entrypoint.index("--grace") + 1])
    assert grace <= 10 - 2, f"--grace {grace} leaves no margin below docker stop's 10 s"

    port = free_port()
    podman.start_image(container, example_image, publish={port: 8080})
    wait_http_ready(port, timeout=20)

    took, summary = _stop_under_load(podman, container, port, timeout=10)

    print(f"\n[e2e] Dockerfile.example under load: podman stop took {took:.2f} s; {summary}")
    assert took < grace, took
    records = _final(podman, container, "Completed", 0)
    assert_in_order(records, SHUTDOWN_SEQUENCE)
    drain = next(r for r in records if r.get("event") == "drain_finished")
    assert drain.get("outcome") == "ok", drain
    _, err = podman.logs(container)
    assert "drained: no request in flight" in err, err


# -- the standalone pidone in an image with no Python ---------------------------------------------


def test_standalone_image_has_no_python(podman: Podman, standalone_image: str) -> None:
    """The runtime image holds no Python interpreter: pidone needs none."""
    probe = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--entrypoint",
        "/bin/sh",
        standalone_image,
        "-c",
        "command -v python3 python; ls /usr/bin/python* /usr/local/bin/python* 2>/dev/null; "
        "/opt/pidone/pidone --version",
    )
    assert probe.stdout.strip().splitlines() == ["pidone 0.1.0"], probe.stdout


def test_standalone_pidone_drains_and_stops_an_app_dying_of_sigterm_with_143(
    podman: Podman, container: str, standalone_image: str
) -> None:
    """Graceful stop with an HTTP drain under load; the Perl app dies of SIGTERM: 143."""
    port = free_port()
    podman.start_image(container, standalone_image, publish={port: 8080})
    wait_http_ready(port, timeout=20)
    assert podman("exec", container, "cat", "/proc/1/cmdline").stdout.startswith(
        "/opt/pidone/pidone\0"
    )

    took, summary = _stop_under_load(podman, container, port, timeout=10)

    print(f"\n[e2e] standalone pidone under load: podman stop took {took:.2f} s; {summary}")
    assert took < 8, took
    records = _final(podman, container, "Signaled", 143)
    assert_in_order(records, SHUTDOWN_SEQUENCE)
    _, err = podman.logs(container)
    assert "drained: no request in flight" in err, err


def test_standalone_pidone_kills_a_tree_ignoring_sigterm_at_its_grace(
    podman: Podman, container: str, standalone_image: str
) -> None:
    """A shell and two children ignoring SIGTERM: SIGKILL at --grace, 137, each one named."""
    podman.start_image(
        container,
        standalone_image,
        "sh",
        "-c",
        "trap '' TERM; sleep 1001 & sleep 1002 & echo ready; wait",
        extra=["--entrypoint", json.dumps(["/opt/pidone/pidone", "--grace", "2", "--"])],
    )
    podman.wait_for_log(container, "ready")

    took = podman.stop(container, timeout=10)

    print(f"\n[e2e] standalone pidone, tree ignoring SIGTERM: podman stop took {took:.2f} s")
    assert 1.5 <= took < 6, took
    records = _final(podman, container, "Killed", 137)
    killed = [str(r.get("cmdline")) for r in records if r.get("event") == "process_killed"]
    assert any("sleep 1001" in cmd for cmd in killed), killed
    assert any("sleep 1002" in cmd for cmd in killed), killed
    assert any(cmd.startswith("sh") for cmd in killed), killed


def test_standalone_pidone_replaces_entrypoint_sh_and_gosu(
    podman: Podman, container: str, standalone_image: str
) -> None:
    """The database-image pattern in a real image: pidone started as root fixes ownership in
    --init, then runs the app as `app` (--user), and stays root itself."""
    entrypoint = ["/opt/pidone/pidone", "--init", "sh -c 'mkdir -p /data && chown app /data'"]
    entrypoint += ["--user", "app", "--no-new-privileges", "--"]
    app = "grep -E '^(Uid|NoNewPrivs):' /proc/$$/status; touch /data/mine && echo WROTE; "
    app += "echo USER=$USER HOME=$HOME; echo ready; exec sleep 1000"
    podman.start_image(
        container,
        standalone_image,
        "sh",
        "-c",
        app,
        extra=["--user", "0", "--entrypoint", json.dumps(entrypoint)],
    )
    podman.wait_for_log(container, "ready")
    out, err = podman.logs(container)
    lines = out.splitlines()
    app_uid = podman("exec", container, "id", "-u", "app").stdout.strip()
    assert f"Uid:\t{app_uid}\t{app_uid}\t{app_uid}\t{app_uid}" in lines, out
    assert "NoNewPrivs:\t1" in lines, out
    assert "WROTE" in lines, out + err
    assert "USER=app HOME=/home/app" in lines, out  # from its /etc/passwd entry
    pid1 = podman("exec", container, "grep", "^Uid:", "/proc/1/status").stdout.split()
    assert pid1[1:] == ["0"] * 4, "pidone must keep root"

    podman.stop(container, timeout=10)

    _final(podman, container, "Signaled", 143)


def test_standalone_pidone_rehearses_inside_an_image_without_python(
    podman: Podman, standalone_image: str
) -> None:
    """`pidone rehearse` from the standalone build (which runs itself, not `python -m
    pidone`) passes for the Perl app with the image's own settings."""
    done = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--entrypoint",
        "/opt/pidone/pidone",
        standalone_image,
        "rehearse",
        "--load",
        "http://127.0.0.1:8080/",
        "--warmup",
        "0.5",
        "--grace",
        "8",
        "--pre-stop-delay",
        "1",
        "--drain-http",
        "POST http://127.0.0.1:8080/drain",
        "--",
        "perl",
        "/app/webapp.pl",
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("pidone rehearse: PASS"), done.stdout
    assert "Signaled, exit code 143" in done.stdout, done.stdout
