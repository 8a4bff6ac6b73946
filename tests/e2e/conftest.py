"""Fixtures for the end-to-end tests: real podman + runc, no image registry needed.

How the containers are made without an image: the machine's own root filesystem is
bind-mounted at ``ROOTFS`` and given to ``podman run --rootfs``. Everything installed here
(python, pidone, this repository's working copy) is visible inside the container at the same
paths, while the container still gets its own PID namespace -- pidone really is PID 1 and
``podman stop`` / ``podman kill`` really go through the runtime.

Facts about the machine these tests were written on, encoded below:

* crun refuses the kernel's hybrid cgroup layout, so every call is
  ``podman --cgroup-manager=cgroupfs --runtime runc ...``.
* Raising rlimits is not permitted; podman's defaults (nofile 1048576) would try to, so
  every container gets ``--ulimit nofile=1024:1024 --ulimit nproc=4096:4096``.
* ``--rootfs`` is a flag, not an option taking a value: ``podman run [OPTIONS] --rootfs DIR
  COMMAND...`` -- every option must come *before* it, or it becomes part of the command.
* ``os.path.ismount`` cannot see a bind mount of ``/`` on the same filesystem, so
  /proc/self/mountinfo is read instead (otherwise mounts pile up on re-runs).
* podman creates ``/run/.containerenv`` inside the rootfs, i.e. on the host's root
  filesystem; it is removed again at the end of the session.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import e2e_images
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# One mount point per test session: sessions of several checkouts may run at once on one
# machine, and each one unmounts and removes its mount point when it ends.
ROOTFS = Path(tempfile.gettempdir()) / f"pidone-e2e-rootfs-{os.getpid()}"
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
# Options every container gets (must precede --rootfs, see the module docstring).
BASE_RUN_OPTIONS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
# Environment inside the containers: the repository's working copy of pidone wins over any
# installed copy, and Python output is not block-buffered in the logs.
BASE_ENV = {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}

_names = itertools.count(1)


# -- helpers ----------------------------------------------------------------------------------


def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mount_count(path: Path) -> int:
    """How many mounts sit exactly at *path* (os.path.ismount misses bind mounts of /)."""
    target = str(path)
    count = 0
    with Path("/proc/self/mountinfo").open(encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
                count += 1
    return count


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


def _skip(reason: str) -> NoReturn:
    print(f"\n[e2e] skipping: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _platform_problem() -> str | None:
    if sys.platform != "linux":
        return "the e2e tests need Linux"
    if os.geteuid() != 0:
        return "the e2e tests need root (rootful podman and `mount --bind`)"
    return None


# Tools the tests run -> the Debian package that brings each. systemd-notify is the
# real sd_notify client of tests/test_notify_restart.py, installed here with the rest;
# mmdebstrap bootstraps the Debian bases of the image tests (e2e_images.py).
TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "systemd-notify": "systemd",
    "mmdebstrap": "mmdebstrap",
    "nginx": "nginx-light",  # the sidecar example (test_sidecars_e2e.py)
}


def _ensure_tools() -> str | None:
    """Install the missing tools with apt-get; the problem, if any."""
    packages = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if not packages:
        return None
    if not shutil.which("apt-get"):
        return f"{', '.join(packages)} not installed and apt-get is not available to install them"
    print(f"\n[e2e] installing {' '.join(packages)} with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=900, check=False, env=env
            )
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                return f"`{' '.join(argv)}` failed (rc={proc.returncode}): {' | '.join(tail)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not install podman/runc: {exc!r}"
    if not (shutil.which("podman") and shutil.which("runc")):
        return "podman/runc still not on PATH after apt-get install"
    return None


# Set once per session in pytest_collection_finish: why the e2e tests cannot run, if they can't.
_setup_problem: list[str | None] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check (and install) the tools before any test runs.

    Done here rather than in a fixture so that a slow ``apt-get install`` is not cut short by
    the per-test timeout (pytest-timeout counts fixture set-up), and only when e2e tests were
    actually selected.
    """
    if _setup_problem or not any(item.get_closest_marker("e2e") for item in session.items):
        return
    _setup_problem.append(_platform_problem() or _ensure_tools())


@dataclass
class Podman:
    """Thin wrapper around the podman CLI with the flags this machine needs."""

    rootfs: Path
    created: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [*PODMAN, *args]
        try:
            proc = _run(argv, timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"`{' '.join(argv)}` did not finish within {timeout} s: {exc!r}")
        if check and proc.returncode != 0:
            pytest.fail(
                f"`{' '.join(argv)}` failed with rc={proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def run_options(
        self,
        *,
        name: str | None = None,
        network: str = "none",
        env: dict[str, str] | None = None,
        workdir: str | Path = REPO,
        extra: Sequence[str] = (),
    ) -> list[str]:
        options = [*BASE_RUN_OPTIONS, "--network", network, "--workdir", str(workdir)]
        if name:
            options += ["--name", name]
        for key, value in {**BASE_ENV, **(env or {})}.items():
            options += ["--env", f"{key}={value}"]
        return [*options, *extra, "--rootfs", str(self.rootfs)]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        network: str = "none",
        env: dict[str, str] | None = None,
        workdir: str | Path = REPO,
        extra: Sequence[str] = (),
    ) -> None:
        """``podman run -d`` *argv* in a container called *name*."""
        self.created.append(name)
        options = self.run_options(
            name=name, network=network, env=env, workdir=workdir, extra=extra
        )
        self("run", "-d", *options, *argv)

    def start_image(
        self,
        name: str,
        image: str,
        *argv: str,
        publish: dict[int, int] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        """``podman run -d`` a real *image* (its ENTRYPOINT, and *argv* or its CMD).

        *publish* maps host ports (on 127.0.0.1) to container ports, over podman's bridge
        network; without it the container has no network.
        """
        self.created.append(name)
        options = [*BASE_RUN_OPTIONS, "--name", name]
        if publish:
            for host_port, container_port in publish.items():
                options += ["--publish", f"127.0.0.1:{host_port}:{container_port}"]
        else:
            options += ["--network", "none"]
        self("run", "-d", *options, *extra, image, *argv)

    def stop(self, name: str, timeout: int) -> float:
        """``podman stop -t TIMEOUT``; returns how long the command took."""
        started = time.monotonic()
        self("stop", "-t", str(timeout), name, timeout=timeout + 30)
        return time.monotonic() - started

    def kill(self, name: str, signal_name: str) -> None:
        self("kill", "-s", signal_name, name)

    def logs(self, name: str) -> tuple[str, str]:
        """(stdout, stderr) of the container so far."""
        proc = self("logs", name)
        return proc.stdout, proc.stderr

    def exit_code(self, name: str) -> int:
        return int(self("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())

    def status(self, name: str) -> str:
        return self("inspect", "--format", "{{.State.Status}}", name).stdout.strip()

    def host_path(self, path: str | Path) -> Path:
        """Where the host sees the file that a container sees at *path* (through ROOTFS)."""
        return self.rootfs / Path(path).relative_to("/")

    def wait_for_log(self, name: str, needle: str, timeout: float = 15) -> str:
        """Poll ``podman logs`` until *needle* shows up; returns all output seen."""
        deadline = time.monotonic() + timeout
        while True:
            out, err = self.logs(name)
            if needle in out or needle in err:
                return out + err
            if time.monotonic() > deadline:
                status = self.status(name)
                pytest.fail(
                    f"{needle!r} not in the logs of {name} after {timeout} s "
                    f"(status {status})\nstdout:\n{out}\nstderr:\n{err}"
                )
            time.sleep(0.1)

    def rm(self, name: str) -> None:
        self("rm", "-f", "-t", "0", name, check=False)


# -- fixtures ---------------------------------------------------------------------------------


def _mount_rootfs() -> bool:
    """Bind-mount / at ROOTFS (private), unless a mount is already there; True if we did."""
    ROOTFS.mkdir(parents=True, exist_ok=True)
    if mount_count(ROOTFS):
        return False
    for argv in (["mount", "--bind", "/", str(ROOTFS)], ["mount", "--make-private", str(ROOTFS)]):
        proc = _run(argv, timeout=30)
        if proc.returncode != 0:
            _unmount(ROOTFS)
            _skip(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return True


def _check_podman_works(pod: Podman) -> None:
    argv = [
        *PODMAN,
        "run",
        "--rm",
        *pod.run_options(),
        PYTHON,
        "-c",
        "import os;print(os.getpid())",
    ]
    try:
        probe = _run(argv, timeout=45)
    except subprocess.TimeoutExpired:
        _skip("podman did not run a trivial container within 45 s")
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        detail = probe.stderr.strip() or probe.stdout.strip()
        _skip(f"podman cannot run a container here (rc={probe.returncode}): {detail}")


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    if not _setup_problem:  # e.g. collected in a way that bypassed the hook
        _setup_problem.append(_platform_problem() or _ensure_tools())
    if _setup_problem[0]:
        _skip(_setup_problem[0])

    _mount_rootfs()
    # podman creates /run/.containerenv in the rootfs, which here is the host's root filesystem.
    containerenv = ROOTFS / "run" / ".containerenv"
    containerenv_existed = containerenv.exists()
    pod = Podman(ROOTFS)
    try:
        # The bind mount is not recursive: the repository and Python must live on the root fs.
        for needed in (REPO / "pyproject.toml", Path(PYTHON)):
            if not (ROOTFS / needed.relative_to("/")).exists():
                _skip(f"{needed} is not on the root filesystem, so containers cannot see it")
        _check_podman_works(pod)
        yield pod
    finally:
        for name in pod.created:
            pod.rm(name)
        if not containerenv_existed:
            with contextlib.suppress(FileNotFoundError):
                containerenv.unlink()
        _unmount(ROOTFS)
        with contextlib.suppress(OSError):
            ROOTFS.rmdir()


def _unmount(path: Path) -> None:
    for _ in range(5):
        if mount_count(path) == 0:
            return
        if _run(["umount", str(path)], timeout=30).returncode != 0:
            _run(["umount", "--lazy", str(path)], timeout=30)


@pytest.fixture
def container(podman: Podman, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique container name; the container is force-removed after the test."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    name = f"pidone-e2e-{test}-{os.getpid()}-{next(_names)}"
    yield name
    podman.rm(name)


# -- the example images (e2e_images.py: built once, cached across sessions) ----------------------


def _build(dockerfile: str, name: str, **kwargs: object) -> str:
    try:
        return e2e_images.build(dockerfile, name, **kwargs)  # type: ignore[arg-type]
    except e2e_images.ImageBuildError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def example_image(podman: Podman) -> str:
    """Dockerfile.example, built on the mmdebstrap Python base."""
    del podman  # needed for its set-up: tools installed, podman checked
    return _build(
        "Dockerfile.example",
        "example",
        build_args={"BASE_IMAGE": e2e_images.base_image("python")},
        context_paths=["pyproject.toml", "README.md", "pidone", "examples"],
    )


@pytest.fixture(scope="session")
def standalone_image(podman: Podman) -> str:
    """Dockerfile.standalone.example: the standalone pidone on a base with no Python."""
    del podman
    return _build(
        "Dockerfile.standalone.example",
        "standalone",
        build_args={
            "BUILD_IMAGE": e2e_images.base_image("python"),
            "RUNTIME_IMAGE": e2e_images.base_image("nopython"),
        },
        context_paths=[
            "pyproject.toml",
            "README.md",
            "pidone",
            "scripts/build-standalone",
            "examples/webapp.pl",
        ],
    )
