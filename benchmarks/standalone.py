#!/usr/bin/env python3
"""The standalone pidone (scripts/build-standalone) beside the pip-installed one.

Usage (as root, Linux)::

    python3 benchmarks/standalone.py [--standalone DIR] [--quick]

Builds the standalone into a temporary directory unless --standalone names an existing
``OUTDIR/pidone`` directory, pip-installs the checkout into a fresh virtualenv as run.py does,
and measures both with run.py's own workloads (launch, round trip, idle RSS; each as PID 1 of
its own PID namespace) plus their size on disk. Prints a markdown section for BENCHMARKS.md;
nothing else is rerun or rewritten.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pidbench import report, workloads
from pidbench.build import build_helpers
from pidbench.inits import Init
from pidbench.install import install_venv
from pidbench.procfs import become_subreaper
from pidbench.workloads import Context, Plan
from run import Workload, check_available, run_workload

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
PIP, STANDALONE = "pidone (pip, venv)", "pidone (standalone)"
# Not pidone's: pip's own tooling that a venv carries whatever is installed into it.
VENV_TOOLING = ("pip", "setuptools", "_distutils_hack", "pkg_resources")


def disk_mib(paths: Sequence[Path]) -> float:
    total = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        total += sum(p.lstat().st_blocks * 512 for p in files if not p.is_symlink())
    return total / 2**20


def pip_footprint(venv: Path) -> list[Path]:
    """pidone and its dependencies in the venv's site-packages (the interpreter excluded)."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    return [
        p for p in site.iterdir() if not p.name.startswith(VENV_TOOLING) and p.name != "__pycache__"
    ]


def build_standalone(out: Path) -> float:
    started = time.monotonic()
    subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-standalone"), str(out)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    return time.monotonic() - started


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--standalone", type=Path, help="an existing OUTDIR/pidone directory")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("standalone.py needs root (unshare --pid --mount-proc)", file=sys.stderr)
        return 2
    become_subreaper()
    plan = Plan.quick() if args.quick else Plan()
    notes = []
    with tempfile.TemporaryDirectory(prefix="pidbench-standalone-") as tmp:
        work_dir = Path(tmp)
        bundle = args.standalone
        if bundle is None:
            took = build_standalone(work_dir / "out")
            bundle = work_dir / "out" / "pidone"
            notes.append(f"`scripts/build-standalone` took {took:.0f} s (venv + PyInstaller).")
        install = install_venv(REPO_ROOT, work_dir)
        venv = Path(install.command.strip("'")).parent.parent
        executable = str(bundle / "pidone")
        inits = [
            Init(PIP, (str(venv / "bin" / "pidone"),)),
            Init(STANDALONE, (executable,)),
        ]
        helpers = build_helpers(work_dir)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        ctx = Context(helpers, env, work_dir / "init-stderr.log", plan)
        usable, problems = check_available(inits, env, helpers.noop)
        notes += problems
        results: report.Results = {}
        for work in (
            Workload("launch", ("launch_ms",), workloads.launch, plan.launch_reps),
            Workload("round trip", ("roundtrip_ms",), workloads.round_trip, plan.launch_reps),
            Workload("idle", ("rss_mib", "wakeups_per_s"), workloads.idle, plan.idle_reps),
        ):
            print(f"{work.name} ({work.reps} reps)", file=sys.stderr, flush=True)
            run_workload(work, inits, usable, ctx, results)
        sizes = {PIP: disk_mib(pip_footprint(venv)), STANDALONE: disk_mib([bundle])}
    print("| metric | " + " | ".join(init.name for init in inits) + " |")
    print("|---|" + "---|" * len(inits))
    for metric, label, digits in (
        ("launch_ms", "launch, ms (median, min-max)", 2),
        ("roundtrip_ms", "round trip, ms", 2),
        ("rss_mib", "idle RSS as PID 1, MiB", 2),
        ("wakeups_per_s", "idle wake-ups/s", 2),
    ):
        cells = [report.cell(results[metric].get(init.name), digits) for init in inits]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| size on disk, MiB | {sizes[PIP]:.1f} | {sizes[STANDALONE]:.1f} |")
    for note in notes:
        print(f"\n- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
