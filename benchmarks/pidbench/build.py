"""Compile the C workloads at run time so every init runs identical binaries."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchError

HELPERS_DIR = Path(__file__).resolve().parent.parent / "helpers"
NAMES = ("stamp", "noop", "waiter", "sigecho", "orphans", "tree", "httpok")


@dataclass(frozen=True)
class Helpers:
    stamp: str
    noop: str
    waiter: str
    sigecho: str
    orphans: str
    tree: str
    httpok: str


def build_helpers(out_dir: Path) -> Helpers:
    """Build every helper into OUT_DIR and return their paths.

    Static linking keeps dynamic-loader work out of the launch numbers (it
    would be the same for every init, but it adds noise); we fall back to
    dynamic linking where no static libc is installed.
    """
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise BenchError("gcc (or cc) is required to build the workloads")
    static = _can_link_static(cc, out_dir)
    paths = {name: str(_compile(cc, name, out_dir, static)) for name in NAMES}
    return Helpers(**paths)


def _compile(cc: str, name: str, out_dir: Path, static: bool) -> Path:
    out = out_dir / name
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", *(["-static"] if static else [])]
    cmd = [cc, *flags, "-I", str(HELPERS_DIR), "-o", str(out), str(HELPERS_DIR / f"{name}.c")]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"compiling {name}.c failed:\n{result.stderr}")
    return out


def _can_link_static(cc: str, out_dir: Path) -> bool:
    probe = out_dir / "static-probe"
    result = subprocess.run(
        [cc, "-static", "-o", str(probe), str(HELPERS_DIR / "noop.c")],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0
