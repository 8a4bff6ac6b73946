#!/usr/bin/env python3
"""The README quick-start app: greet, sleep until told to stop, clean up, exit 0.

    pidone -- python3 examples/demo_app.py
    # in another terminal: kill -TERM <pidone's pid>   (or Ctrl-C)

Options: ``--duration N`` exits on its own after N seconds; ``--cleanup SECONDS`` (default
0.5) is how long the pretend clean-up takes after the stop signal.
The app does no polling while idle: it blocks in ``sigtimedwait`` until a signal arrives.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def say(message: str) -> None:
    print(f"demo[{os.getpid()}]: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pidone quick-start demo app")
    parser.add_argument("--duration", type=float, default=None, help="exit after N seconds")
    parser.add_argument("--cleanup", type=float, default=0.5, help="seconds of clean-up work")
    args = parser.parse_args(argv)

    # Block the stop signals and wait for them synchronously: no handler, no busy loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    say("hello! waiting for SIGTERM (Ctrl-C works too)")

    if args.duration is None:
        signum = signal.sigwait(STOP_SIGNALS)
    else:
        deadline = time.monotonic() + args.duration
        signum = None
        while (remaining := deadline - time.monotonic()) > 0:
            info = signal.sigtimedwait(STOP_SIGNALS, remaining)
            if info is not None:
                signum = info.si_signo
                break

    if signum is None:
        say(f"{args.duration:g}s are up, exiting on my own")
    else:
        say(f"got {signal.Signals(signum).name}, cleaning up ...")
        time.sleep(args.cleanup)
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
