"""A test sidecar that records what happens to it, with monotonic timestamps, in a file.

Lines: ``NAME start T``, ``NAME ready T`` (once its ready file exists),
``NAME term T``, ``NAME exit T``.  ``--ready-after S`` creates the ready file
S seconds after the start; ``--notify-after S`` sends READY=1 over sd_notify then;
``--crash-after S`` exits 3 after S seconds;
``--ignore-term`` records SIGTERM and goes on; ``--stop-time S`` takes S
seconds to stop.
"""

import argparse
import os
import signal
import socket
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("name")
parser.add_argument("record")
parser.add_argument("--ready-after", type=float)
parser.add_argument("--notify-after", type=float, help="send READY=1 to NOTIFY_SOCKET then")
parser.add_argument("--crash-after", type=float)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--stop-time", type=float, default=0.0)
args = parser.parse_args()


def record(what: str) -> None:
    with open(args.record, "a") as fh:
        fh.write(f"{args.name} {what} {time.clock_gettime(time.CLOCK_MONOTONIC):.6f}\n")


def on_term(_signum: int, _frame: object) -> None:
    record("term")
    if args.ignore_term:
        return
    time.sleep(args.stop_time)
    record("exit")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
record("start")
started = time.monotonic()
ready_file = f"{args.record}.{args.name}.ready"
while True:
    now = time.monotonic() - started
    if args.ready_after is not None and now >= args.ready_after and not os.path.exists(ready_file):
        record("ready")
        open(ready_file, "w").close()
    if args.notify_after is not None and now >= args.notify_after:
        args.notify_after = None
        record("notify")
        address = os.environ["NOTIFY_SOCKET"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", "\0" + address[1:] if address[0] == "@" else address)
    if args.crash_after is not None and now >= args.crash_after:
        record("crash")
        sys.exit(3)
    time.sleep(0.02)
