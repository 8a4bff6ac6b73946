"""A test app that reports every signal it receives, one line each, on stdout.

All catchable signals are blocked and taken with sigwaitinfo, so the app
never dies of one unless told to: ``--exit-on SIG`` (repeatable) exits with
``--exit-code`` after ``--cleanup SECONDS``; ``--ignore-term`` makes
SIGTERM only recorded.  The first line is ``ready <pid>``.
"""

import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--exit-on", action="append", default=[])
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--cleanup", type=float, default=0.0)
parser.add_argument("--log", help="also append each line to this file")
args = parser.parse_args()

exit_on = {signal.Signals["SIG" + name].value for name in (args.exit_on or ["TERM"])}
catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
signal.pthread_sigmask(signal.SIG_BLOCK, catchable)


def say(line: str) -> None:
    print(line, flush=True)
    if args.log:
        with open(args.log, "a") as fh:
            fh.write(line + "\n")


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


say(f"ready {os.getpid()}")
while True:
    info = signal.sigwaitinfo(catchable)
    if info.si_signo == signal.SIGCHLD:
        continue
    say(f"signal {name(info.si_signo)}")
    if info.si_signo in exit_on:
        time.sleep(args.cleanup)
        say("exiting")
        sys.exit(args.exit_code)
