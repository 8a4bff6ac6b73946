"""A test app that leaves processes behind, for the reaping and shutdown tests.

``--orphans N``: fork a middle process that forks N children and exits at
once, so the N are orphaned to the init; each exits when told (``--linger``
seconds) and becomes the init's zombie to reap.

``--worker MODE``: start one worker that is not the app's direct concern:
``cleanup`` (on TERM: sleep ``--cleanup`` s, write ``--marker``, exit),
``stubborn`` (ignores TERM), ``daemon`` (double-forks and setsid, ignores TERM).
The app itself exits on TERM at once (or, with ``--exit-now CODE``, right
after starting its worker).  It prints ``ready`` once everything is set up.
"""

import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--orphans", type=int, default=0)
parser.add_argument("--linger", type=float, default=0.0)
parser.add_argument("--worker", choices=["cleanup", "stubborn", "daemon"])
parser.add_argument("--cleanup", type=float, default=1.0)
parser.add_argument("--marker")
parser.add_argument("--exit-now", type=int)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--tag", help="ignored: lets a test find its own processes")
args = parser.parse_args()


def worker(mode: str, ready_w: int) -> None:
    if mode == "daemon":
        os.setsid()
        if os.fork():
            os._exit(0)
    if mode in ("stubborn", "daemon"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def on_term(*_: object) -> None:
            time.sleep(args.cleanup)
            if args.marker:
                with open(args.marker, "w") as fh:
                    fh.write("cleaned up\n")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
    os.write(ready_w, f"{os.getpid()}\n".encode())
    while True:
        signal.pause()


def orphans(count: int) -> None:
    middle = os.fork()
    if middle == 0:
        for _ in range(count):
            if os.fork() == 0:
                time.sleep(args.linger)
                os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)  # reaping our own child is our job; the orphans are the init's


if args.orphans:
    orphans(args.orphans)
worker_pid = None
if args.worker:
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        worker(args.worker, w)
    os.close(w)
    worker_pid = int(os.read(r, 64).split()[0])
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(f"ready {os.getpid()} worker {worker_pid}", flush=True)
if args.exit_now is not None:
    sys.exit(args.exit_now)
while True:
    signal.pause()
