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

With ``--user`` the child also drops root before exec (:mod:`pidone.user` says
how and in which order); hooks, drains and probes, which act for the app, then
take the fork path too, since ``posix_spawn`` cannot change credentials.

Exit statuses are owned here, in one place: nothing else in pidone calls
``waitpid`` (``subprocess`` and ``psutil.Process.wait`` would race with the
reaper for the same children).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pidone.config import Config
    from pidone.user import Credentials

_DEFAULTED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


class SpawnError(Exception):
    """The command could not be executed; ``exit_code`` follows the shell's rule."""

    def __init__(self, argv0: str, err: int) -> None:
        self.argv0 = argv0
        self.errno = err
        # 127: not found; 126: found but not executable (permission, format, a directory).
        self.exit_code = 127 if err in (errno.ENOENT, errno.ENOTDIR) else 126
        super().__init__(f"cannot execute {argv0!r}: {os.strerror(err)}")


class Drop(NamedTuple):
    """What the child gives up before exec: ``--user``, ``--no-new-privileges``."""

    user: Credentials | None = None
    no_new_privs: bool = False


def spawn(  # noqa: PLR0913 - keyword-only, each one for one kind of process
    argv: tuple[str, ...],
    *,
    tty_fd: int | None = None,
    env: Mapping[str, str] | None = None,
    drop: Drop | None = None,
    null_stdin: bool = False,
    output_fd: int | None = None,
    stdio: tuple[int, int] | None = None,
) -> int:
    """Start ``argv`` (searched in PATH) in a new process group, signals at default.

    Waits until the child has exec'd, and raises SpawnError if it could not.
    With ``tty_fd``, the new group also becomes the terminal's foreground group;
    ``env`` replaces pidone's environment; ``drop`` gives up privileges before
    exec.  An action's stdin is /dev/null (``null_stdin``) and its output may
    go to ``output_fd``; ``stdio`` replaces stdout and stderr (``--prefix-output``).
    """
    drop = drop or Drop()
    stdio = (output_fd, output_fd) if output_fd is not None else stdio
    prctl = _prctl() if drop.no_new_privs else None
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
        try:
            os.close(read_end)
            _prepare_child(tty_fd, null_stdin, stdio)
            if drop.user is not None:
                _become(drop.user)
            if prctl is not None and prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                os.write(write_end, str(errno.EPERM).encode())
                os._exit(127)
            if env is None:
                os.execvp(argv[0], list(argv))
            else:
                os.execvpe(argv[0], list(argv), env)
        except OSError as exc:
            os.write(write_end, str(exc.errno or errno.ENOENT).encode())
        finally:
            os._exit(127)
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


def _prepare_child(  # pragma: no cover - runs in the child
    tty_fd: int | None, null_stdin: bool, stdio: tuple[int, int] | None
) -> None:
    """In the child: own process group, terminal, signal state and, for actions, stdio."""
    signal.set_wakeup_fd(-1)  # that pipe is the parent's event source
    os.setpgid(0, 0)
    if tty_fd is not None:
        # We are in a background group until tcsetpgrp succeeds, and
        # SIGTTOU would stop us: ignore it for the call.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(tty_fd, os.getpid())
    for signum in _DEFAULTED:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    if null_stdin:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if stdio is not None:
        os.dup2(stdio[0], 1)
        os.dup2(stdio[1], 2)


def _become(user: Credentials) -> None:  # pragma: no cover - runs in the child
    # Groups first, the uid last: once the uid is dropped, nothing else can be.
    # As root, setgid and setuid set the real, effective and saved ids at once.
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)


def spawn_app(
    config: Config,
    *,
    tty_fd: int | None,
    env: Mapping[str, str] | None,
    stdio: tuple[int, int] | None = None,
) -> int:
    """Start the app of *config*: :func:`spawn` as ``--user``, with that user's HOME."""
    user = config.user
    if user is not None:
        env = user.environ(os.environ if env is None else env)
    drop = Drop(user, config.no_new_privileges)
    return spawn(config.argv, tty_fd=tty_fd, env=env, drop=drop, stdio=stdio)


PR_SET_NO_NEW_PRIVS = 38


def _prctl() -> Callable[..., int]:
    """libc's prctl, looked up in the parent (the child should only call it)."""
    import ctypes

    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def spawn_action(
    argv: tuple[str, ...],
    *,
    output_fd: int | None = None,
    user: Credentials | None = None,
    no_new_privs: bool = False,
) -> int:
    """Start a hook, drain or probe command: fast, with /dev/null as stdin.

    These run while the app runs, some every few seconds, so they take
    ``posix_spawn`` (vfork and exec in C): forking pidone would copy its page
    tables and make every page it then touches fault until the child has
    exec'd, holding signal forwarding up by milliseconds.  The one cost is
    glibc's quirk described above (its two internal signals stay ignored),
    which glibc programs undo themselves when they need those signals; the
    app and the init commands, which live long and own the terminal, are
    started by :func:`spawn`.  So are actions that must run as the app's
    user (``--user``, ``--no-new-privileges``): posix_spawn cannot drop
    privileges, and running them as root would undo the point of dropping.
    """
    if user is not None or no_new_privs:
        env = user.environ(os.environ) if user is not None else None
        drop = Drop(user, no_new_privs)
        return spawn(argv, env=env, drop=drop, null_stdin=True, output_fd=output_fd)
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
