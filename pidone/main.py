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
from typing import Any, NoReturn

from pidone import cgroup, signals, spawn
from pidone.config import Config
from pidone.options import fast_parse, wants_check

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Not PID 1: ask the kernel to hand orphans of our descendants to us anyway."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _open_standard_fds() -> None:
    """Put /dev/null on any of fds 0-2 that the world handed us closed.

    Otherwise the next pipe pidone opens takes that number, and its log, or
    the app's stdio, would end up in pidone's own signal pipe.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # a lower fd was closed too; it gets its own turn
                os.dup2(null, fd)
                os.close(null)


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
    _open_standard_fds()
    status = _status_server(config.status_addr) if config.status_addr else None
    notify, env = _notify_socket(config) if config.notify else (None, None)
    wake_fd = signals.install()  # before the app exists: no signal may be lost
    oom_before = cgroup.oom_kills()  # the app could be OOM-killed within milliseconds
    tty = foreground_tty()
    app: int | spawn.SpawnError | None = None  # None: the loop runs the init commands first
    if not config.inits:
        try:
            app = spawn.spawn_app(config, tty_fd=tty, env=env)
        except spawn.SpawnError as exc:
            app = exc
    from pidone import loop

    return loop.supervise(
        config,
        wake_fd,
        app,
        foreground=tty is not None,
        status=status,
        notify=notify,
        app_env=env,
        oom_before=oom_before,
    )


def _notify_socket(config: Config) -> tuple[Any, dict[str, str]]:
    """The sd_notify socket and the app's environment that points at it."""
    from pidone.notify import NotifySocket

    try:
        sock = NotifySocket()
    except OSError as exc:
        sys.stderr.write(f"pidone: error: --notify: cannot create the notify socket: {exc}\n")
        sys.exit(2)
    env = {**os.environ, **sock.env()}
    if config.watchdog is not None:
        env["WATCHDOG_USEC"] = str(int(config.watchdog * 1_000_000))
    return sock, env


def _status_server(addr: tuple[str, int]) -> Any:
    """Bind the status port before anything starts: a port in use is a usage error."""
    from pidone import status

    def starting() -> status.Snapshot:  # until the loop takes over, moments later
        return status.Snapshot(live=False, ready=False, status={"stage": "starting"})

    try:
        return status.StatusServer(addr[0], addr[1], starting)
    except OSError as exc:
        sys.stderr.write(f"pidone: error: --status-addr {addr[0]}:{addr[1]}: {exc}\n")
        sys.exit(2)


def main(args: Sequence[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if args is None else list(args)
    if wants_check(argv):  # validate and explain; nothing is started
        from pidone import check

        sys.exit(check.run(argv, os.environ))
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
