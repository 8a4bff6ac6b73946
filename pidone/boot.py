"""Boot: everything pidone sets up before the loop exists, and the app's start.

Everything here is on the app's critical path, so this module imports only
what that needs; the event loop, structlog and psutil come after the app is
already running.  What boot set up is handed to the supervisor whole, as one
:class:`Started` record.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING, NamedTuple

from pidone import cgroup, signals, spawn
from pidone.config import Config

if TYPE_CHECKING:
    from pidone.notify import NotifySocket
    from pidone.status import StatusServer

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Not PID 1: ask the kernel to hand orphans of our descendants to us anyway."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def open_standard_fds() -> None:
    """Put /dev/null on any of fds 0-2 that the world handed us closed.

    Otherwise the next pipe or socket pidone opens takes that number, and its
    log, or the app's stdio, would end up in pidone's own signal pipe.  So
    :func:`pidone.main.main` calls this first, before pidone opens anything.
    Python found those fds closed at start-up and set ``sys.stdin``/
    ``stdout``/``stderr`` to None; they get text streams on /dev/null, so no
    later ``flush()`` or ``write()`` can fail with AttributeError and change
    the exit code.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # a lower fd was closed too; it gets its own turn
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, mode, closefd=False)))


def foreground_tty() -> int | None:
    """fd 0 when it is a terminal whose foreground group is ours, else None."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            return 0
    except OSError:
        pass
    return None


class Started(NamedTuple):
    """Everything set up before the loop exists, handed to it whole."""

    config: Config
    wake_fd: int  # the signal pipe (see pidone.signals)
    app: int | spawn.SpawnError | None  # its pid; why it could not start; None: not yet
    foreground: bool  # the app's group owns the terminal
    status: StatusServer | None
    notify: NotifySocket | None
    app_env: dict[str, str] | None  # the app's environment, when pidone adds to it
    oom_before: int | None  # the OOM-kill count before the app existed


def boot(config: Config) -> Started:
    """Start the app as early as possible; everything else it needs first."""
    if os.getpid() != 1:
        become_subreaper()
    status = _status_server(config.status_addr) if config.status_addr else None
    notify, env = _notify_socket(config) if config.notify else (None, None)
    wake_fd = signals.install()  # before the app exists: no signal may be lost
    oom_before = cgroup.oom_kills()  # the app could be OOM-killed within milliseconds
    tty = foreground_tty()
    app: int | spawn.SpawnError | None = None
    # Init commands and sidecars come first; prefixed output needs the loop's pipes.
    if not config.inits and not config.sidecars and not config.prefix_output:
        try:
            app = spawn.spawn_app(config, tty_fd=tty, env=env)
        except spawn.SpawnError as exc:
            app = exc
    return Started(config, wake_fd, app, tty is not None, status, notify, env, oom_before)


def _notify_socket(config: Config) -> tuple[NotifySocket, dict[str, str]]:
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


def _status_server(addr: tuple[str, int]) -> StatusServer:
    """Bind the status port before anything starts: a port in use is a usage error."""
    from pidone import status

    def starting() -> status.Snapshot:  # until the loop takes over, moments later
        return status.Snapshot(live=False, ready=False, status={"stage": "starting"})

    try:
        return status.StatusServer(addr[0], addr[1], starting)
    except OSError as exc:
        sys.stderr.write(f"pidone: error: --status-addr {addr[0]}:{addr[1]}: {exc}\n")
        sys.exit(2)
