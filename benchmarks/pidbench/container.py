"""Run one init with one app, either as PID 1 of a new PID namespace or as a
plain child of the benchmark (subreaper mode), and tear it down reliably."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import procfs
from .errors import BenchError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

# unshare forks (so the init really is PID 1), mounts a private /proc (so the
# workloads see only their namespace) and, with --kill-child, SIGKILLs the
# init if unshare itself dies -- which tears the whole namespace down.
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")

# Bounded polls for "this process exists now" use this step: small enough not
# to distort anything measured afterwards.
POLL_STEP_S = 0.0005


def monotonic_ns() -> int:
    """Same clock the C helpers stamp with, so the values subtract directly."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class LineReader:
    """Read newline-terminated reports from the app's stdout with deadlines."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""

    def readline(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"no report from the app within {timeout_s:g}s")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                self._fill()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def expect(self, word: str, timeout_s: float) -> int:
        """Wait for ``<word> <int>`` and return the integer."""
        line = self.readline(timeout_s)
        key, _, value = line.partition(" ")
        if key != word:
            raise BenchError(f"expected {word!r} from the app, got {line!r}")
        return int(value)

    def _fill(self) -> None:
        chunk = os.read(self._fd, 65536)
        if not chunk:
            raise BenchError("the app's stdout closed before it reported")
        self._buffer += chunk


@contextmanager
def running(
    argv: Sequence[str],
    *,
    pid1: bool,
    env: dict[str, str],
    log_path: Path,
    stalled_stderr: bool = False,
) -> Iterator[Container]:
    """A Container that is always killed and reaped when the block exits."""
    box = Container(argv, pid1=pid1, env=env, log_path=log_path, stalled_stderr=stalled_stderr)
    try:
        yield box
    finally:
        box.destroy()


class Container:
    """One init + app; see running() for the safe way to use it.

    ``pid1=True`` runs ``unshare ... INIT APP``; the init's host pid is then
    the single child of the unshare process.  ``pid1=False`` runs the init
    directly, in its own session so that cleanup can kill its process group.

    ``stalled_stderr=True`` gives the init a pipe as stderr that is full
    before it starts and that nobody reads (a stalled log driver) until
    :meth:`resume_stderr`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        pid1: bool,
        env: dict[str, str],
        log_path: Path,
        stalled_stderr: bool = False,
    ) -> None:
        self.argv = [*UNSHARE, *argv] if pid1 else list(argv)
        self.pid1 = pid1
        self.env = env
        self.log_path = log_path
        self.start_ns = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._pidfd: int | None = None
        self.reader: LineReader | None = None
        self.stalled_stderr = stalled_stderr
        self._stalled_r: int | None = None
        self._resumed: list[bytes] = []
        self._resume_thread: threading.Thread | None = None

    # -- starting ---------------------------------------------------------

    def start(self, *, capture: bool = True) -> int:
        """Spawn; returns the CLOCK_MONOTONIC stamp taken just before."""
        stdout = subprocess.PIPE if capture else subprocess.DEVNULL
        with contextlib.ExitStack() as stack:
            if self.stalled_stderr:
                self._stalled_r, stderr = _full_pipe()
                stack.callback(os.close, stderr)
            else:
                stderr = stack.enter_context(self.log_path.open("wb")).fileno()
            self.start_ns = monotonic_ns()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                start_new_session=not self.pid1,
            )
        if capture:
            assert self._proc.stdout is not None
            self.reader = LineReader(self._proc.stdout.fileno())
        return self.start_ns

    @property
    def lines(self) -> LineReader:
        if self.reader is None:
            raise BenchError("container started without captured output")
        return self.reader

    def init_pid(self, timeout_s: float = 5.0) -> int:
        """Host pid of the init; opens a pidfd on it so later waits are exact."""
        if self._init_pid is None:
            self._init_pid = self._find_init(timeout_s)
            self._pidfd = os.pidfd_open(self._init_pid)
        return self._init_pid

    def _find_init(self, timeout_s: float) -> int:
        proc = self._require_proc()
        if not self.pid1:
            return proc.pid
        # unshare forks the init right away, but "right away" is still after
        # Popen returns; callers normally ask only once the app has reported,
        # so this loop rarely iterates.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            kids = procfs.children(proc.pid)
            if kids:
                return kids[0]
            if proc.poll() is not None:
                break
            time.sleep(POLL_STEP_S)
        raise BenchError(f"no init process under unshare{self._log_tail()}")

    def resume_stderr(self) -> None:
        """The stalled reader starts reading (everything, until EOF)."""
        fd = self._stalled_r
        if fd is None or self._resume_thread is not None:
            return

        def read() -> None:
            while chunk := os.read(fd, 65536):
                self._resumed.append(chunk)

        self._resume_thread = threading.Thread(target=read, daemon=True)
        self._resume_thread.start()

    def resumed_stderr(self, timeout_s: float) -> bytes:
        """What the resumed reader got, once the init's stderr reached EOF."""
        if self._resume_thread is None:
            raise BenchError("stderr was never resumed")
        self._resume_thread.join(timeout_s)
        return b"".join(self._resumed)

    # -- stopping ---------------------------------------------------------

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the outer process (unshare or the init); returns its status."""
        proc = self._require_proc()
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"did not exit within {timeout_s:g}s{self._log_tail()}") from exc

    def wait_init_gone(self, timeout_s: float) -> int:
        """Block until the init has exited; returns the CLOCK_MONOTONIC stamp.

        A pidfd becomes readable when the process exits.  For a namespace
        init the kernel first kills and reaps everything left in the
        namespace, so "init gone" also means "namespace empty".
        """
        self.init_pid()
        assert self._pidfd is not None
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if not poller.poll(int(timeout_s * 1000)):
            raise BenchError(f"init still alive after {timeout_s:g}s{self._log_tail()}")
        return monotonic_ns()

    def poll_init_gone(self, timeout_s: float) -> bool:
        """Non-blocking-ish variant for callers that sample while they wait."""
        assert self._pidfd is not None
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout_s * 1000)))

    def signal_init(self, sig: int) -> None:
        os.kill(self.init_pid(), sig)

    def destroy(self) -> None:
        """Kill everything this container started; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._kill_tree(proc)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._stalled_r is not None:
            if self._resume_thread is not None:
                self._resume_thread.join(5.0)
            os.close(self._stalled_r)
            self._stalled_r = None
        self._proc = None

    def _kill_tree(self, proc: subprocess.Popen[bytes]) -> None:
        if self.pid1:
            # SIGKILL to a namespace init takes the whole namespace with it.
            for pid in procfs_children_or_empty(proc.pid):
                _kill(pid, signal.SIGKILL)
            _kill(proc.pid, signal.SIGKILL)
        else:
            _killpg(proc.pid, signal.SIGKILL)

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise BenchError("container not started")
        return self._proc

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"; init stderr: {text[-400:]}" if text else ""


def _full_pipe() -> tuple[int, int]:
    """A pipe filled to the brim; (read end, write end).

    Filled through a second open file description: O_NONBLOCK on the write
    end itself would be shared with the init that inherits it.
    """
    r, w = os.pipe()
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"f" * (select.PIPE_BUF - 1) + b"\n")
    except BlockingIOError:
        pass
    finally:
        os.close(filler)
    return r, w


def procfs_children_or_empty(pid: int) -> list[int]:
    try:
        return procfs.children(pid)
    except OSError:
        return []


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def reap_strays(timeout_s: float = 5.0) -> int:
    """Kill and reap orphans that re-parented to the benchmark (a subreaper).

    Returns how many there were; any non-zero value means an init under test
    left processes behind.
    """
    me = os.getpid()
    strays = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = procfs_children_or_empty(me)
        if not kids:
            return strays
        for pid in kids:
            strays += 1
            _kill(pid, signal.SIGKILL)
            _reap(pid)
    raise BenchError("could not get rid of stray processes")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
