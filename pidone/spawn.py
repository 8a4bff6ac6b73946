"""Starting processes with a clean signal state, and reaping every child.

pidone has handlers on every catchable signal and ignores SIGPIPE and
SIGXFSZ (Python does).  Handlers reset themselves on exec, but ignored
dispositions and the blocked mask survive it, so each spawn resets both.

``os.posix_spawn`` would do this without running Python in the child, but
glibc's implementation leaves its two internal signals (32 and 33) ignored
in the new program, which then shows up in the app's SigIgn and is
inherited by everything it starts.  A plain fork does not touch them, so
pidone forks the app (and the init commands), resets the signal state, and
execs; an exec failure is reported back over a close-on-exec pipe as an
errno.  Hooks, drains and probes, which run while the app runs, take the
fast posix_spawn path instead (see :func:`spawn_action`).

With a terminal the app must also become the foreground process group
before it runs a single instruction, or an early read from the terminal
stops it with SIGTTIN: the child calls ``tcsetpgrp`` itself, before exec.

Exit statuses are owned here, in one place: nothing else in pidone calls
``waitpid`` (``subprocess`` and ``psutil.Process.wait`` would race with the
reaper for the same children).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

_DEFAULTED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class SpawnError(Exception):
    """The command could not be executed; ``exit_code`` follows the shell's rule."""

    def __init__(self, argv0: str, err: int) -> None:
        self.argv0 = argv0
        self.errno = err
        # 127: not found; 126: found but not executable (permission, format, a directory).
        self.exit_code = 127 if err in (errno.ENOENT, errno.ENOTDIR) else 126
        super().__init__(f"cannot execute {argv0!r}: {os.strerror(err)}")


def spawn(
    argv: tuple[str, ...],
    *,
    tty_fd: int | None = None,
    env: Mapping[str, str] | None = None,
    stdio: tuple[int, int] | None = None,
) -> int:
    """Start ``argv`` (searched in PATH) in a new process group, signals at default.

    Waits until the child has exec'd, and raises SpawnError if it could not.
    With ``tty_fd``, the new group also becomes the terminal's foreground group;
    ``env`` replaces pidone's environment; ``stdio`` replaces its stdout and
    stderr (``--prefix-output``).
    """
    try:
        read_end, write_end = os.pipe()  # both close-on-exec
    except OSError as exc:  # out of file descriptors
        raise SpawnError(argv[0], exc.errno or errno.EMFILE) from None
    try:
        pid = os.fork()
    except OSError as exc:  # EAGAIN at the pids limit, ENOMEM
        os.close(read_end)
        os.close(write_end)
        raise SpawnError(argv[0], exc.errno or errno.EAGAIN) from None
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        _child(argv, write_end, read_end, tty_fd, env, stdio)
    os.close(write_end)
    # Also from the parent, so that a signal to the group cannot miss the
    # child while it is still on its way to exec.
    with contextlib.suppress(OSError):  # already exec'd (EACCES): the child did it itself
        os.setpgid(pid, pid)
    report = b""
    while chunk := os.read(read_end, 16):  # EOF when exec succeeded (close-on-exec)
        report += chunk
    os.close(read_end)
    if report:
        os.waitpid(pid, 0)
        raise SpawnError(argv[0], int(report))
    return pid


def _child(  # noqa: PLR0913, PLR0917 - spawn's arguments, in the child
    argv: tuple[str, ...],
    write_end: int,
    read_end: int,
    tty_fd: int | None,
    env: Mapping[str, str] | None,
    stdio: tuple[int, int] | None,
) -> NoReturn:  # pragma: no cover - runs in the child, reported through the pipe
    """Between fork and exec: signals reset, the group, the terminal, the streams."""
    try:
        os.close(read_end)
        signal.set_wakeup_fd(-1)  # that pipe is the parent's event source
        os.setpgid(0, 0)
        if stdio is not None:
            os.dup2(stdio[0], 1)
            os.dup2(stdio[1], 2)
        if tty_fd is not None:
            # We are in a background group until tcsetpgrp succeeds, and
            # SIGTTOU would stop us: ignore it for the call.
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(tty_fd, os.getpid())
        for signum in _DEFAULTED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if env is None:
            os.execvp(argv[0], list(argv))
        else:
            os.execvpe(argv[0], list(argv), env)
    except OSError as exc:
        os.write(write_end, str(exc.errno or errno.ENOENT).encode())
    finally:
        os._exit(127)


def spawn_action(argv: tuple[str, ...], *, output_fd: int | None = None) -> int:
    """Start a hook, drain or probe command: fast, with /dev/null as stdin.

    These run while the app runs, some every few seconds, so they take
    ``posix_spawn`` (vfork and exec in C): forking pidone would copy its page
    tables and make every page it then touches fault until the child has
    exec'd, holding signal forwarding up by milliseconds.  The one cost is
    glibc's quirk described above (its two internal signals stay ignored),
    which glibc programs undo themselves when they need those signals; the
    app and the init commands, which live long and own the terminal, are
    started by :func:`spawn`.
    """
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if output_fd is not None:
        actions += [(os.POSIX_SPAWN_DUP2, output_fd, 1), (os.POSIX_SPAWN_DUP2, output_fd, 2)]
    try:
        return os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ,
            file_actions=actions,
            setpgroup=0,
            setsigmask=(),
            setsigdef=_DEFAULTED,
        )
    except OSError as exc:
        raise SpawnError(argv[0], exc.errno or errno.ENOENT) from None


class Exit(NamedTuple):
    pid: int
    status: int

    @property
    def code(self) -> int:
        """The shell's view of the status: the exit code, or 128+N for signal N."""
        signum = self.signal
        return os.WEXITSTATUS(self.status) if signum is None else 128 + signum

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def reap() -> tuple[list[Exit], bool]:
    """Collect every exited child; return them and whether no child is left at all.

    Several exits can arrive behind one SIGCHLD, so this loops until the
    kernel says "none ready" (0) or "no children" (ECHILD).
    """
    exits: list[Exit] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exits, True
        if pid == 0:
            return exits, False
        exits.append(Exit(pid, status))


def has_children() -> bool:
    """Whether any child, running or exited, is left (without reaping it)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True
