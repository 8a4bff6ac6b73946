"""Real images for the end-to-end tests, made without any image registry.

A Debian bookworm base is bootstrapped from Debian's package mirror with ``mmdebstrap`` and
imported into podman (``podman import``); ``podman build`` then builds the repository's example
Dockerfiles on top of it, passing the base with ``--build-arg``. Only Debian's mirror and PyPI
are reached.

Both steps are cached in podman's own image store under tags that hash their inputs:

* a base is tagged ``localhost/pidone-e2e-base-KIND:HASH``, HASH covering the mmdebstrap
  arguments and this recipe's version -- a cold bootstrap takes 20-60 s, a warm run nothing;
* a built image is tagged ``localhost/pidone-e2e-NAME:HASH``, HASH covering the base and every
  file the Dockerfile copies, so a change to pidone rebuilds it and nothing else does.

A file lock serialises builds, so two test sessions on one machine (several checkouts) do not
bootstrap the same base twice at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

REPO = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pidone-e2e"
# Builds behind a TLS-intercepting proxy need the host's CA bundle inside RUN steps.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Bump when the way a base is made changes without its mmdebstrap arguments changing.
RECIPE_VERSION = "1"

# The bases: mmdebstrap arguments before the target. "python" is what Dockerfile.example's
# python:3.12-slim stands for (python-is-python3 gives the image's `python`); "nopython" is a
# root filesystem with no Python at all, for the standalone pidone.
BASES: dict[str, list[str]] = {
    "python": [
        "--variant=minbase",
        # libpython3.11 and binutils are for scripts/build-standalone: PyInstaller bundles the
        # shared libpython (python:3.12-slim has one) and strips with binutils.
        (
            "--include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,"
            "libpython3.11,binutils"
        ),
        # PEP 668 would refuse `pip install` into the system Python, as the official
        # python images (which have their own Python in /usr/local) never do.
        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
        "bookworm",
    ],
    "nopython": ["--variant=minbase", "bookworm"],
}


class ImageBuildError(RuntimeError):
    """A base or an image could not be made; the message says which command and why."""


def _log(message: str) -> None:
    print(f"\n[e2e] {message}", file=sys.stderr, flush=True)


def _digest(parts: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(len(part).to_bytes(8, "big"))
        sha.update(part)
    return sha.hexdigest()[:16]


def image_exists(tag: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", tag], check=False).returncode == 0


def _check(argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise ImageBuildError(f"`{' '.join(argv)}` failed (rc={proc.returncode}):\n{tail}")


class BuildLock:
    def __enter__(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self._file = (CACHE / "build.lock").open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def base_image(kind: str) -> str:
    """The tag of the *kind* base, bootstrapped and imported first if it is not cached."""
    args = BASES[kind]
    tag = f"localhost/pidone-e2e-base-{kind}:" + _digest(
        [RECIPE_VERSION.encode(), *(arg.encode() for arg in args)]
    )
    if image_exists(tag):
        return tag
    with BuildLock():
        if image_exists(tag):  # built by another session while we waited
            return tag
        _log(f"bootstrapping the {kind} base with mmdebstrap (once; cached as {tag})")
        started = time.monotonic()
        # mmdebstrap writes a tarball to stdout when the target is "-"; podman imports it.
        mmdebstrap = ["mmdebstrap", "--quiet", *args, "-"]
        importer = [*PODMAN, "import", "-", tag]
        with subprocess.Popen(
            mmdebstrap,
            stdin=subprocess.DEVNULL,  # else it reads its package sources from stdin
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as boot:
            assert boot.stdout is not None
            imported = subprocess.run(
                importer, stdin=boot.stdout, capture_output=True, text=True, check=False
            )
            boot.stdout.close()
            boot_err = boot.stderr.read().decode(errors="replace") if boot.stderr else ""
            boot.wait(timeout=600)
        if boot.returncode != 0:
            subprocess.run([*PODMAN, "rmi", "-f", tag], capture_output=True, check=False)
            tail = "\n".join(boot_err.strip().splitlines()[-15:])
            raise ImageBuildError(
                f"`{' '.join(mmdebstrap)}` failed (rc={boot.returncode}):\n{tail}"
            )
        _check(importer, imported)
        _log(f"{kind} base ready in {time.monotonic() - started:.1f} s")
    return tag


def _context_files(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = REPO / name
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
        else:
            files.append(path)
    return files


def build(
    dockerfile: str,
    name: str,
    *,
    build_args: dict[str, str],
    context_paths: Sequence[str],
    target: str | None = None,
    timeout: float = 900,
) -> str:
    """``podman build`` *dockerfile* (relative to the repository) unless cached; its tag.

    *context_paths* are the files and directories the Dockerfile copies: the cache key hashes
    their contents with the Dockerfile, the build arguments (base image tags included) and the
    target, so any change to them rebuilds.
    """
    parts = [dockerfile.encode(), (target or "").encode()]
    parts += [f"{key}={value}".encode() for key, value in sorted(build_args.items())]
    for path in _context_files([dockerfile, *context_paths]):
        parts += [str(path.relative_to(REPO)).encode(), path.read_bytes()]
        parts.append(b"x" if os.access(path, os.X_OK) else b"-")
    tag = f"localhost/pidone-e2e-{name}:{_digest(parts)}"
    if image_exists(tag):
        return tag
    argv = [*PODMAN, "build", "--format", "docker", "--network", "host", "-f", dockerfile]
    argv += ["-t", tag]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    if HOST_CA_BUNDLE.is_file():
        argv += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    argv.append(str(REPO))
    with BuildLock():
        if image_exists(tag):
            return tag
        _log(f"building {dockerfile} as {tag}")
        started = time.monotonic()
        proc = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
        _check(argv, proc)
        _log(f"{tag} built in {time.monotonic() - started:.1f} s")
        _drop_older(tag)
    return tag


def _drop_older(tag: str) -> None:
    """Untag this image's builds for older inputs, so the cache does not grow with every change.

    Without --force: an image that a container (of another session) still uses stays.
    """
    repository = tag.rpartition(":")[0]
    listed = subprocess.run(
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}", repository],
        capture_output=True,
        text=True,
        check=False,
    )
    for other in listed.stdout.split():
        if other != tag and other.rpartition(":")[0] == repository:
            subprocess.run([*PODMAN, "rmi", other], capture_output=True, check=False)
