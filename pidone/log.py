"""structlog set-up, and the sink that keeps pidone's log off the event loop.

``import structlog`` costs tens of milliseconds, so the start-up path never
touches this module's structlog half: the app is launched first, then the
logger is built.

Why a queue and a thread.  pidone's stderr is usually a pipe read by the
container runtime's log driver, and that reader can stall for minutes (a
dead log driver in blocking mode, containerd restarting, log rotation stuck
in fsync).  A full pipe blocks every ``write()``; a PID 1 that writes its
log lines from the event loop then stops forwarding signals, reaping and
keeping its deadlines.  The ways out, weighed:

- ``O_NONBLOCK`` on fd 2: fd 2 is the *same open file description* as the
  app's stderr (and usually stdout), so the flag would hand the app
  ``EAGAIN`` on its own writes.  Never.
- A second open file description of the same pipe, opened through
  ``/proc/self/fd/2`` with ``O_NONBLOCK``: works for pipes only (a regular
  file would get its own offset and overwrite the app's output; a socket
  cannot be reopened that way), needs ``/proc``, and a non-blocking write of
  more than ``PIPE_BUF`` bytes can be cut short, tearing the line.
- A writer thread that owns all writes to fd 2, fed by a bounded queue:
  works for every kind of stream, leaves the app's file description exactly
  as it was, and writes every line whole (it loops until the line is out).
  The loop only appends to a deque under a lock held for microseconds.

pidone takes the thread.  The queue is bounded in lines and in bytes; a line
that does not fit is dropped and counted, and once there is room again one
``log_lines_dropped`` line (with ``count``) says how many went missing.  The
writer blocks every signal, so process-directed signals always go to the
main thread, and the SIGPIPE or SIGXFSZ its own write provokes (a reader
gone, ``ulimit -f``) stays pending on the writer, never seen by the loop and
never forwarded to the app; the write itself fails with ``EPIPE``/``EFBIG``.

Errors: a broken pipe ends writing for good (nobody will ever read again);
any other error (``ENOSPC`` for a moment, ``EIO`` from a terminal, ``EFBIG``)
drops that one line and the next line is tried.

If the thread cannot be started (a pids limit, out of memory), lines stay
queued (bounded) and the start is retried at most once a second; meanwhile
a pipe is written through a second, non-blocking open file description
(whole lines of at most ``PIPE_BUF`` bytes only, which the kernel writes
atomically or not at all), a regular file or ``/dev/null`` directly, and
anything else (a terminal, a socket) waits in the queue or is dropped.

At exit :func:`drain` gives the queued lines, the final ``terminated`` line
above all, at most ``DRAIN_TIMEOUT`` (1 s) to reach the stream, and stops
waiting sooner once the reader has taken nothing for ``STALL_TIMEOUT``
(25 ms: a stalled reader gains nothing from a longer wait, and the
container's stop would pay for it); the process then exits regardless,
ending the writer wherever it is.  A line longer than
``PIPE_BUF`` that is half written at that moment is cut: the only way a line
can reach the stream incomplete.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import importlib
import os
import select
import signal
import stat
import sys
import termios
import threading
import time
import types
from collections.abc import Callable, MutableMapping
from typing import Any

from pidone.config import LogFormat

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# The queue's bounds.  A pipe holds 64 KiB by default; the queue holds a
# good deal more, so a reader that pauses for a moment loses nothing, and
# little enough that pidone's memory stays flat behind a reader that never
# comes back (see BENCHMARKS.md: peak RSS after 100,000 dropped lines).
MAX_LINES = 4096
MAX_BYTES = 1 << 20
# At exit, the longest pidone waits for queued lines to reach the stream.
DRAIN_TIMEOUT = 1.0
# ... and gives up sooner once the reader has taken nothing for this long: a
# stalled reader would only hold the container's end up for nothing.
STALL_TIMEOUT = 0.025
# Without a writer thread, how often starting one is tried again.
RETRY_INTERVAL = 1.0
# pidone's own writes provoke these; they are never the app's business.
SELF_INFLICTED = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
# What a non-blocking write came to.
WRITTEN, FULL, FAILED, BROKEN = "written", "full", "failed", "broken"


class QueuedStderr:
    """A structlog logger: queues whole lines for fd 2; never blocks, never raises.

    ``notice(count)`` renders the ``log_lines_dropped`` line (None: not at
    this log level).
    """

    def __init__(
        self,
        fd: int = 2,
        *,
        notice: Callable[[int], str] | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._fd = fd
        self._notice = notice
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        # Lines, each with the number of lost lines it reports (0: a line of its own).
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._queued_bytes = 0
        self._writing = False  # the writer holds a line it has taken off the queue
        self._failing = False  # the last write failed: no notice until a new line comes
        self._dropped = 0  # since the start
        self._unreported = 0  # dropped and not yet reported by a notice
        self._broken = False  # EPIPE: nobody will ever read again
        self._let_through = False  # the final line passes the bounds
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._direct: tuple[int, int] | bool | None = False  # False: not looked at yet
        self._start_writer()

    # -- what the loop calls (under the lock for microseconds, never a write) ----

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "backslashreplace")
        if self._thread is None:
            self._without_writer()  # make room first, if the stream takes lines again
        with self._cond:
            if self._broken:
                return
            self._queue_notice(force=self._let_through)
            if self._fits(len(data)) or self._let_through:
                self._let_through = False
                self._append(data, 0)
            else:
                self._dropped += 1
                self._unreported += 1
        if self._thread is None:
            self._without_writer()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    def closing(self) -> int:
        """The final line comes next: it passes the bounds.  Lines dropped so far."""
        with self._cond:
            self._let_through = True
            return self._dropped

    def drain(self, timeout: float, stall: float = STALL_TIMEOUT) -> bool:
        """Wait for every queued line to be written: at most ``timeout`` seconds, and
        no longer than ``stall`` seconds in which the reader takes nothing at all."""
        now = time.monotonic()
        deadline = now + timeout
        if self._thread is None:
            self._without_writer()
        with self._cond:
            seen, moved = self._progress(), now
            while not self._broken and (self._queue or self._writing):
                if self._thread is None or now >= deadline or now - moved >= stall:
                    return False
                self._cond.wait(min(deadline - now, stall / 5))
                now = time.monotonic()
                if (progress := self._progress()) != seen:
                    seen, moved = progress, now
        return True

    def _progress(self) -> tuple[int, int]:
        """Lines left to write, and bytes in the pipe: either moves while the reader reads.

        (A line of up to PIPE_BUF bytes waits in write() until all of it fits,
        so a reader taking less than that shows only in the pipe's fill level.)
        """
        level = array.array("i", [0])
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._fd, termios.FIONREAD, level)
        return len(self._queue) + self._writing, level[0]

    # -- under the lock ----------------------------------------------------------

    def _fits(self, size: int) -> bool:
        return len(self._queue) < self._max_lines and self._queued_bytes + size <= self._max_bytes

    def _append(self, data: bytes, reports: int) -> None:
        self._queue.append((data, reports))
        self._queued_bytes += len(data)
        self._cond.notify_all()

    def _pop(self) -> tuple[bytes, int]:
        data, reports = self._queue.popleft()
        self._queued_bytes -= len(data)
        return data, reports

    def _queue_notice(self, *, force: bool = False) -> None:
        """Once there is room again, or before the final line, one line counts the lost."""
        if not self._unreported:
            return
        if self._notice is None:
            self._unreported = 0
            return
        data = (self._notice(self._unreported) + "\n").encode("utf-8", "backslashreplace")
        if force or self._fits(len(data)):
            self._append(data, self._unreported)
            self._unreported = 0

    def _failed(self, reports: int) -> None:
        """A write failed: a line is lost; a notice's count waits for the next one."""
        self._failing = True
        if reports:
            self._unreported += reports
        else:
            self._dropped += 1
            self._unreported += 1

    def _stop_for_good(self) -> None:
        self._broken = True
        self._queue.clear()
        self._queued_bytes = 0
        self._cond.notify_all()

    # -- the writer thread ---------------------------------------------------------

    def _start_writer(self) -> bool:
        thread = threading.Thread(target=self._run, name="pidone-log", daemon=True)
        # The thread inherits this mask: every signal blocked, so none is ever
        # delivered to it, and its own SIGPIPE/SIGXFSZ stay pending there.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            thread.start()
        except (RuntimeError, OSError, MemoryError):  # "can't start new thread"
            return False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._thread = thread
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if not self._failing:  # the reader took everything: report the loss
                        self._queue_notice()
                    if not self._queue:
                        self._cond.wait()
                data, reports = self._pop()
                self._writing = True
            ok = self._write_whole(data)
            with self._cond:
                self._writing = False
                if ok is None:
                    self._stop_for_good()
                    return
                if ok:
                    self._failing = False
                else:
                    self._failed(reports)
                self._cond.notify_all()

    def _write_whole(self, data: bytes) -> bool | None:
        """A blocking write of the whole line, off the loop.  None: a broken pipe."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BrokenPipeError:
                return None
            except BlockingIOError:
                # Someone (the app) made the shared description non-blocking:
                # wait for room here, where waiting costs the loop nothing.
                try:
                    select.select([], [self._fd], [], None)
                except (OSError, ValueError):
                    return False
            except OSError:  # ENOSPC, EIO, EFBIG...: this line, not the stream
                return False
        return True

    # -- without a writer thread ----------------------------------------------------

    def _without_writer(self) -> None:
        now = time.monotonic()
        if now >= self._retry_at:
            self._retry_at = now + RETRY_INTERVAL
            if self._start_writer():
                return
        target = self._direct_target()
        if target is None:
            return  # the lines wait in the queue, within its bounds
        with self._cond:
            self._flush_direct(*target)

    def _flush_direct(self, fd: int, limit: int) -> None:
        """Write what the stream takes now, under the lock; every write non-blocking."""
        while not self._broken:
            if not self._queue and not self._failing:
                self._queue_notice()
            if not self._queue:
                return
            data, reports = self._queue[0]
            outcome = FAILED if len(data) > limit else write_nonblocking(fd, data)
            if outcome == FULL:
                return  # no room now: the line keeps its place
            self._pop()
            if outcome == BROKEN:
                self._stop_for_good()
            elif outcome == WRITTEN:
                self._failing = False
            else:
                self._failed(reports)

    def _direct_target(self) -> tuple[int, int] | None:
        """Where lines can be written without ever blocking, and how long they may be."""
        if self._direct is False:
            self._direct = direct_target(self._fd)
        return self._direct if isinstance(self._direct, tuple) else None


def direct_target(fd: int) -> tuple[int, int] | None:
    """Where lines for ``fd`` can be written without ever blocking, and how long they may be.

    A regular file or /dev/null as it is; a pipe through a second open file
    description of its own, non-blocking (the app's is left alone), up to
    PIPE_BUF bytes written whole or not at all; anything else (a terminal, a
    socket): nowhere.
    """
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) or (
            stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)  # /dev/null
        ):
            return fd, sys.maxsize
        if stat.S_ISFIFO(st.st_mode):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
            return os.open(f"/proc/self/fd/{fd}", flags), select.PIPE_BUF
    return None


def write_nonblocking(fd: int, data: bytes) -> str:
    """WRITTEN, FULL (no room now), FAILED (an error) or BROKEN (EPIPE).

    The SIGPIPE or SIGXFSZ a failed write raises is blocked for the call
    and taken right after: it is pidone's own, never the app's.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SELF_INFLICTED)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except BlockingIOError:
        return FULL if written == 0 else FAILED
    except OSError as exc:
        broken = isinstance(exc, BrokenPipeError)
        if broken or exc.errno == errno.EFBIG:
            with contextlib.suppress(OSError):
                signal.sigtimedwait(SELF_INFLICTED, 0)
        return BROKEN if broken else FAILED
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return WRITTEN


def _event_first(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Put the stable keys first, so a line reads well and greps well."""
    head: dict[str, Any] = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    return {**head, **event}


def use_console(fmt: LogFormat) -> bool:
    if fmt == "auto":
        try:
            return os.isatty(2)
        except OSError:
            return False
    return fmt == "console"


class _DeferredModule(types.ModuleType):
    """A stand-in that imports the real module on first attribute access.

    ``structlog.stdlib`` imports asyncio at its top but only uses it inside
    its async logging methods, which pidone never calls.  asyncio (with ssl
    and concurrent.futures behind it) is about half of structlog's import
    time and 11 MB of pidone's resident memory.  Should anything ever touch
    it, the real module is loaded then and takes this one's place.
    """

    def __getattr__(self, attr: str) -> Any:
        real = sys.modules.get(self.__name__)
        if real is self or real is None:  # first use: replace the stand-in for good
            sys.modules.pop(self.__name__, None)
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def _import_structlog() -> Any:
    if "asyncio" not in sys.modules:
        sys.modules["asyncio"] = _DeferredModule("asyncio")
    import structlog

    return structlog


# The sink of the running logger, for the exit path (drain) and the final line.
_current: list[QueuedStderr] = []


def setup(fmt: LogFormat, level: str) -> Any:
    structlog = _import_structlog()
    console = use_console(fmt)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)
        if console
        else structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    )
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _event_first,
        renderer,
    ]

    def notice(count: int) -> str:
        """The ``log_lines_dropped`` line, rendered as every other line is."""
        event: Any = {"event": "log_lines_dropped", "count": count}
        for processor in processors:
            event = processor(None, "warning", event)
        return str(event)

    sink = QueuedStderr(notice=notice if LEVELS[level] <= LEVELS["warning"] else None)
    _current[:] = [sink]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()


def closing() -> int:
    """The final line is next: let it past the queue's bounds; lines dropped so far."""
    return _current[0].closing() if _current else 0


def drain(timeout: float = DRAIN_TIMEOUT) -> bool:
    """At exit: give the queued lines at most ``timeout`` s to reach the stream."""
    return _current[0].drain(timeout) if _current else True
