"""The entry point: command line -> Config -> start the app -> supervise -> exit code.

Everything before the app is started is on its critical path, so this
module imports only what that needs; the event loop, structlog and psutil
come after the app is already running.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pidone import signals, spawn
from pidone.config import Config
from pidone.options import fast_parse

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Not PID 1: ask the kernel to hand orphans of our descendants to us anyway."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def foreground_tty() -> int | None:
    """fd 0 when it is a terminal whose foreground group is ours, else None."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


def run(config: Config) -> int:
    """Start the app as early as possible, then hand it to the event loop."""
    if os.getpid() != 1:
        become_subreaper()
    wake_fd = signals.install()  # before the app exists: no signal may be lost
    tty = foreground_tty()
    app: int | spawn.SpawnError
    try:
        app = spawn.spawn(config.argv, tty_fd=tty)
    except spawn.SpawnError as exc:
        app = exc
    from pidone import loop

    return loop.supervise(config, wake_fd, app, foreground=tty is not None)


def main(args: Sequence[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if args is None else list(args)
    config = fast_parse(argv, os.environ)
    if config is None:
        from pidone import cli

        parsed = cli.parse(argv)
        if isinstance(parsed, int):
            sys.exit(parsed)
        config = parsed
    code = run(config)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    # os._exit: no interpreter teardown to wait on (a drain thread may still
    # be stuck in a socket); every child is reaped already.
    os._exit(code)
