"""The entry point, read as a table of contents: command line -> Config -> boot -> supervise.

pidone's start-up path is the app's: nothing is imported before the app
runs that the start does not need (see :mod:`pidone.boot`).
"""

from __future__ import annotations

import os
import signal

# As PID 1 of a namespace, a signal with no handler is dropped by the kernel,
# and handlers only exist once signals.install() has run, after the imports
# below.  A blocked signal is queued instead, so the signals pidone takes are
# blocked here, before anything heavier runs; signals.install() unblocks them
# once its handlers are in place and the queued ones are delivered then.
# What remains is the interpreter's own start-up, before this line (see
# README, "Signals in the first milliseconds").  Not PID 1, a signal before
# the handlers does what it does to any program, before the app exists.
if os.getpid() == 1:
    signal.pthread_sigmask(
        signal.SIG_BLOCK,
        set(signal.valid_signals())
        - {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP},
    )

import contextlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from pidone.boot import boot, open_standard_fds
from pidone.settings import resolve, wants_check


def main(args: Sequence[str] | None = None) -> NoReturn:
    open_standard_fds()  # before anything is opened
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["rehearse"]:  # a mode of its own; `pidone -- rehearse` runs an app so named
        from pidone.rehearse import main as rehearse

        sys.exit(rehearse(argv[1:]))
    if wants_check(argv):  # validate and explain; nothing is started
        from pidone import check

        sys.exit(check.run(argv, os.environ))
    config = resolve(argv, os.environ).startable()
    if config is None:  # help, version or a mistake: click's to word
        from pidone import cli

        parsed = cli.parse(argv, os.environ)
        if isinstance(parsed, int):
            sys.exit(parsed)
        config = parsed
    started = boot(config)
    from pidone import supervisor  # the app runs: now the rest may load

    code = supervisor.supervise(started)
    if "pidone.log" in sys.modules:  # the logger was built: its queue gets 1 s at most
        sys.modules["pidone.log"].drain()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream with nothing buffered writes nothing
            stream.flush()
    # os._exit: no interpreter teardown to wait on (a drain thread may still
    # be stuck in a socket, the log writer in a stalled pipe); every child is
    # reaped already.
    os._exit(code)
