"""The event loop: one selector, one blocking call, one queue of work.

Signals arrive as bytes on a pipe (see :mod:`pidone.signals`, which sets
that up before the app is started); this module takes over once the app
runs.  SIGCHLD arrives the same way and triggers the reaper.

The loop blocks in exactly one place, ``selector.select(timeout)``, where
the timeout is the earliest deadline of anything that keeps time (the
lifecycle machine, the action runner, the pod, the status server), or
``None`` while nothing is scheduled: an idle pidone makes no system call.

Completions (an action's result, a reaped exit) never call back into the
code that caused them: they are queued with :meth:`Loop.later` and worked
through one at a time, after the current step has finished.  So no handler
ever runs inside another, and none has to ask "am I still running?".

Where does SIGTERM go?  :meth:`Loop._on_signals` hands it to the
supervisor (:mod:`pidone.supervisor`), which asks the lifecycle machine
(:mod:`pidone.lifecycle`) what it means.  Every other signal is forwarded.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# The longest single wait: select() refuses timeouts past the platform's
# limits (a --grace of 1e10 s is finite, valid, and would overflow it); a
# capped wait just wakes up early and recomputes.
MAX_WAIT = 86400.0


class Timed(Protocol):
    """Anything that keeps time: the loop wakes it at its next deadline."""

    def next_deadline(self) -> float | None: ...

    def on_deadline(self, now: float) -> None: ...


class Handler(Protocol):
    """What the loop serves: the supervisor."""

    def on_signal(self, signum: int) -> None:
        """A signal to forward (or to filter as pidone's own)."""

    def on_critical(self, signum: int) -> None:
        """SIGCHLD or a shutdown signal: never lost, never coalesced with others."""

    def timers(self) -> Iterable[Timed]: ...

    @property
    def done(self) -> bool: ...


class Loop:
    def __init__(self, wake_fd: int, critical: frozenset[int]) -> None:
        self.selector = selectors.DefaultSelector()
        self.wake_r = wake_fd
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self._queue: deque[Callable[[], None]] = deque()
        # SIGCHLD and the shutdown signals must never be lost.  The wakeup pipe
        # drops bytes once full (a storm of forwarded signals the loop has not
        # drained yet), so these are taken by a recording handler; their bytes
        # only wake the loop up.  See _take_critical_signals.
        self.critical = critical
        self._pending: list[int] = []
        self._early = self._take_critical_signals()

    def later(self, work: Callable[[], None]) -> None:
        """Do ``work`` once the current step is over (never inside it)."""
        self._queue.append(work)

    def run(self, handler: Handler) -> None:
        """Serve ``handler`` until it is done."""
        self._dispatch(handler, self._early, early=True)
        self._work(handler)
        while not handler.done:
            timeout = None
            deadline = self._next_deadline(handler)
            if deadline is not None:
                timeout = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
            for key, mask in self.selector.select(timeout):
                if key.fd == self.wake_r:
                    self._on_signals(handler)
                else:
                    key.data(mask)
                self._work(handler)
            if self._pending:  # recorded, but its byte was read in an earlier batch
                self._dispatch(handler, b"")
            now = time.monotonic()
            for timer in handler.timers():
                due = timer.next_deadline()
                if due is not None and now >= due and not handler.done:
                    timer.on_deadline(now)
                    self._work(handler)

    def _work(self, handler: Handler) -> None:
        while self._queue and not handler.done:
            self._queue.popleft()()

    @staticmethod
    def _next_deadline(handler: Handler) -> float | None:
        due = [t for t in (timer.next_deadline() for timer in handler.timers()) if t is not None]
        return min(due) if due else None

    # -- signals --------------------------------------------------------------------

    def _take_critical_signals(self) -> bytes:
        """Swap in the recording handler; return the bytes that arrived before it.

        With the critical signals blocked, every one delivered so far has left
        its byte in the pipe (read here, and handled as a byte), and every one
        delivered later goes to :meth:`_record`: none counted twice, none lost.
        """
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.critical)
        try:
            early = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(self.wake_r, 4096):
                    early += chunk
            for signum in self.critical:
                signal.signal(signum, self._record)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return early

    def _record(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _on_signals(self, handler: Handler) -> None:
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            data = b""
        self._dispatch(handler, data)

    def _dispatch(self, handler: Handler, data: bytes, *, early: bool = False) -> None:
        pending, self._pending = self._pending, []
        critical = [s for s in data if early and s in self.critical] + pending
        for signum in data:
            if signum not in self.critical:  # recorded by _record (or above when early)
                handler.on_signal(signum)
        # SIGCHLD last: whatever a shutdown signal starts sees every exit so far.
        critical.sort(key=lambda s: s == signal.SIGCHLD)
        reaped = False
        for signum in critical:
            if signum != signal.SIGCHLD:
                handler.on_critical(signum)
            elif not reaped:  # one reap takes every exit so far
                reaped = True
                handler.on_critical(signum)
        self._work(handler)
