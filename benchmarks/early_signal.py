#!/usr/bin/env python3
"""How early can a SIGTERM reach a freshly exec'd init as PID 1 and not be lost?

As PID 1 of a namespace, a signal that arrives while the init has neither a
handler nor the signal blocked is dropped by the kernel.  A C init installs
its handlers in its first microseconds; a Python init first has to start the
interpreter.  This sends SIGTERM to the init at ``t`` ms after its exec, for
a range of ``t``, and counts the runs where it was lost (the init did not
stop within ``--wait`` seconds; it is then killed).

Usage (as root)::

    python3 benchmarks/early_signal.py [--runs 20] [--max-ms 40] [--step-ms 2]
        [--init 'python3 -m pidone --'] [--init 'tini --'] ...

The app is ``sleep 1000``: a forwarded SIGTERM ends it, and with it the init.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shlex
import signal
import sys
import time
from collections.abc import Sequence

CLONE_NEWPID = 0x20000000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def start_as_pid1(argv: Sequence[str]) -> tuple[int, int, int]:
    """Exec argv as PID 1 of a new PID namespace.

    Returns (helper pid, init's host pid, CLOCK_MONOTONIC ns just before exec).
    The helper forks the namespace init and waits for it.
    """
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:  # pragma: no cover - child side
        os.close(r)
        if _libc().unshare(CLONE_NEWPID) != 0:
            os._exit(99)
        init = os.fork()
        if init == 0:
            os.write(w, f"{time.monotonic_ns()}\n".encode())
            os.close(w)
            try:
                os.execvp(argv[0], list(argv))
            finally:
                os._exit(127)
        os.write(w, f"{init}\n".encode())
        os.close(w)
        os.waitpid(init, 0)
        os._exit(0)
    os.close(w)
    data = b""
    while data.count(b"\n") < 2:
        chunk = os.read(r, 64)
        if not chunk:
            raise RuntimeError(f"the helper failed: {data!r}")
        data += chunk
    os.close(r)
    first, second = (int(x) for x in data.split())
    # The init's exec stamp (a CLOCK_MONOTONIC ns value) is far larger than any pid.
    stamp, pid = max(first, second), min(first, second)
    return helper, pid, stamp


def one_run(argv: Sequence[str], delay_s: float, wait_s: float) -> bool:
    """True when the SIGTERM sent ``delay_s`` after exec stopped the init."""
    helper, pid, exec_ns = start_as_pid1(argv)
    target = exec_ns / 1e9 + delay_s
    while (left := target - time.monotonic()) > 0:
        if left > 0.002:
            time.sleep(left - 0.001)
    os.kill(pid, signal.SIGTERM)
    pidfd = os.pidfd_open(helper)
    try:
        stopped = bool(select.select([pidfd], [], [], wait_s)[0])
        if not stopped:
            os.kill(pid, signal.SIGKILL)  # kills the namespace with it
        os.waitpid(helper, 0)
    finally:
        os.close(pidfd)
    return stopped


def main(args: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per delay")
    parser.add_argument("--max-ms", type=float, default=40.0)
    parser.add_argument("--step-ms", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=2.0, help="seconds to wait for a stop")
    parser.add_argument(
        "--init",
        action="append",
        help="init command ending with its separator (default: python3 -m pidone --)",
    )
    opts = parser.parse_args(args)
    if os.geteuid() != 0:
        print("early_signal.py needs root (a PID namespace)", file=sys.stderr)
        return 2
    inits = opts.init or [f"{sys.executable} -m pidone --"]
    delays = []
    t = 0.0
    while t <= opts.max_ms + 1e-9:
        delays.append(t)
        t += opts.step_ms
    print("| init | " + " | ".join(f"{d:g} ms" for d in delays) + " |")
    print("|---|" + "---|" * len(delays))
    for init in inits:
        argv = [*shlex.split(init), "sleep", "1000"]
        lost = []
        for delay in delays:
            misses = sum(not one_run(argv, delay / 1000, opts.wait) for _ in range(opts.runs))
            lost.append(misses)
            print(f"  {init}: {delay:g} ms: {misses}/{opts.runs} lost", file=sys.stderr)
        cells = " | ".join(f"{m}/{opts.runs}" for m in lost)
        print(f"| `{init}` | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
