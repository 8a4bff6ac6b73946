#!/usr/bin/env python3
"""When does SIGKILL reach a big tree at the deadline?  (pidone only, as root.)

Usage::

    python3 benchmarks/kill_deadline.py [--processes 10000] [--grace 2] [--reps 3]

Runs ``helpers/tree.c`` (N processes, all ignoring SIGTERM) under pidone from
this checkout (``python -m pidone``; ``--checkout DIR`` measures another), as
PID 1 of a fresh PID namespace and as
a subreaper, sends SIGTERM and watches a sample of 200 of the tree's
processes through pidfds: the moment each becomes a zombie is the moment the
SIGKILL reached it.  Prints, per mode, the first and last death of the sample
relative to the deadline (SIGTERM + grace), the ``elapsed_s`` of pidone's
``escalated`` line, and when pidone itself exited.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pidbench.build import build_helpers

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 200


def _tree_pids(root: int) -> list[int]:
    found: list[int] = []
    queue = [root]
    while queue:
        pid = queue.pop(0)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    found += map(int, kids)
                    queue += map(int, kids)
    return found


def run_once(
    tree: str, processes: int, grace: float, pid1: bool, root: Path = ROOT
) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pidone", "--log-format", "json", "--grace", f"{grace:g}"]
    cmd += ["--", tree, str(processes)]
    if pid1:
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=root,  # python -m puts the working directory first on sys.path
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"tree never got ready: {line!r}")
        top = proc.pid
        if pid1:
            while not (kids := _tree_pids(proc.pid)):
                time.sleep(0.01)
            top = kids[0]
        pids = _tree_pids(top)
        step = max(1, len(pids) // SAMPLE)
        fds = {}
        for pid in pids[::step][:SAMPLE] + pids[-5:]:
            with contextlib.suppress(OSError):
                fds[os.pidfd_open(pid)] = pid
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        sent = time.monotonic()
        os.kill(top, signal.SIGTERM)
        deaths: list[float] = []
        while len(deaths) < len(fds):
            for fd, _ in poller.poll(30_000):
                deaths.append(time.monotonic())
                poller.unregister(fd)
        proc.wait(60)
        exited = time.monotonic()
        for fd in fds:
            os.close(fd)
        escalated = next(
            json.loads(line)["elapsed_s"]
            for line in proc.stderr.read().decode().splitlines()
            if '"escalated"' in line
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = sent + grace
    return {
        "first_ms": (min(deaths) - deadline) * 1000,
        "last_ms": (max(deaths) - deadline) * 1000,
        "escalated_ms": (escalated - grace) * 1000,
        "exit_ms": (exited - deadline) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="pidone checkout to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = build_helpers(Path(tmp)).tree
        print(
            f"{args.processes} processes ignoring SIGTERM, --grace {args.grace:g}: "
            "ms after the deadline"
        )
        print("| mode | first SIGKILLed | last SIGKILLed (sample) | `escalated` | pidone exited |")
        print("|---|---|---|---|---|")
        for pid1 in (True, False):
            for _ in range(args.reps):
                r = run_once(tree, args.processes, args.grace, pid1, args.checkout)
                print(
                    f"| {'PID 1' if pid1 else 'subreaper'} | {r['first_ms']:.0f}"
                    f" | {r['last_ms']:.0f} | {r['escalated_ms']:.0f} | {r['exit_ms']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
