"""The inits under comparison and how each one is invoked."""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# The floor: an interpreter start-up that does nothing but exec the app.
# -I -S skip site and environment processing, i.e. the cheapest possible
# Python start, so "pidone - floor" is pidone's own cost.
FLOOR_CODE = "import os,sys; os.execvp(sys.argv[1], sys.argv[1:])"

PIDONE = "pidone"
PIDONE_PROBES = "pidone + probes"
FLOOR = "python-floor"


@dataclass(frozen=True)
class Init:
    name: str
    prefix: tuple[str, ...]
    separator: tuple[str, ...] = ("--",)
    reaps: bool = True  # does it reap orphans handed to it?
    escalates: bool = False  # does it SIGKILL what survives a grace period?
    version: str = ""
    # pidone with probes and a status endpoint: the workloads that support it
    # add the probe options (ports are picked per sample) and an idle crowd.
    probes: bool = False

    def command(self, app: Sequence[str], options: Sequence[str] = ()) -> list[str]:
        return [*self.prefix, *options, *self.separator, *app]


def python3() -> str:
    """The interpreter running the benchmark, by its real path.

    `python3` on PATH may be a version-manager shim (pyenv's is a shell
    script) that would add tens of milliseconds to every Python launch.
    """
    return sys.executable


def all_inits(pidone_command: str) -> list[Init]:
    """Every init of the comparison, in a fixed reporting order."""
    pidone = tuple(shlex.split(pidone_command))
    version = _version([*pidone, "--version"])
    return [
        Init("tini", ("tini",), version=_version(["tini", "--version"])),
        Init("dumb-init", ("dumb-init",), version=_version(["dumb-init", "--version"])),
        Init("catatonit", ("catatonit",), version=_version(["catatonit", "--version"])),
        Init(
            FLOOR,
            (python3(), "-I", "-S", "-c", FLOOR_CODE),
            separator=(),
            # The app itself becomes PID 1 and does not reap anything.
            reaps=False,
            version=_version([python3(), "--version"]),
        ),
        Init(PIDONE, pidone, escalates=True, version=version),
        Init(PIDONE_PROBES, pidone, escalates=True, version=version, probes=True),
    ]


def _version(argv: list[str]) -> str:
    """First line of ``--version`` output, or '' if the tool has none."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text and out.returncode == 0 else ""
