"""Signal plumbing: which signals pidone takes, and the pipe they arrive on.

Every catchable signal gets a no-op Python handler, and
``signal.set_wakeup_fd`` makes the C-level handler write the signal's number
as one byte into a pipe, at delivery time, in order.  The event loop watches
that pipe with its selector, so signals, child exits, sockets and deadlines
all wait in one ``select``.  ``sigtimedwait`` would give the same signals
but could not also wait on sockets and pipes; a signalfd is not reachable
from the standard library.

Nothing is blocked: as PID 1 of a namespace, a signal with no handler would
be dropped by the kernel, and a blocked one would leak into the app's mask.
"""

from __future__ import annotations

import os
import signal

# Never forwarded: SIGCHLD is pidone's own business; the synchronous fault
# signals only ever mean a bug in pidone itself and keep their default action.
NOT_FORWARDED = frozenset(
    {
        signal.SIGKILL,
        signal.SIGSTOP,
        signal.SIGCHLD,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGTRAP,
        signal.SIGSYS,
    }
)
FORWARDED = sorted(set(signal.valid_signals()) - NOT_FORWARDED)


def _noop(_signum: int, _frame: object) -> None:
    """The wakeup pipe carries the signal; the Python-level handler has nothing to do."""


def install() -> int:
    """Route every signal pidone takes into a pipe; return its (non-blocking) read end."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    # A full pipe (a signal storm the loop has not drained yet) drops bytes
    # silently rather than warning on pidone's stderr for each one.
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in (*FORWARDED, signal.SIGCHLD):
        signal.signal(signum, _noop)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    return read_fd
