"""Why and how the container ended: reason, exit code, timeline, termination log.

Reasons (stable; people alert on them):

- ``Completed``  the app exited 0
- ``Error``      the app exited non-zero
- ``Signaled``   the app died of a signal (``signal`` names it)
- ``Killed``     pidone had to SIGKILL something at the deadline, or was forced
- ``OOMKilled``  the memory cgroup counted an OOM kill during the run
- ``StartError`` the app could not be executed (127 not found, 126 not executable)
- ``InitFailed``  an init command failed (its exit code is pidone's)
- ``PostStartHookFailed``, ``StartupProbeFailed``, ``LivenessProbeFailed``, ``WatchdogTimeout``
                  pidone stopped the app because of that; never exit code 0
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from dataclasses import dataclass, field

from pidone.config import signal_name
from pidone.hooks import DrainOutcome
from pidone.lifecycle import Shutdown
from pidone.tree import ProcessInfo

# kubelet reads no more than this of a termination message.
TERMINATION_LOG_LIMIT = 4096


@dataclass
class Report:
    app_code: int | None = None  # shell view: code, or 128+N
    app_signal: int | None = None
    oom: bool = False
    start_error: str | None = None
    shutdown_signal: int | None = None
    drains: list[DrainOutcome] = field(default_factory=list)
    killed: list[ProcessInfo] = field(default_factory=list)
    failure: str | None = None  # a reason of pidone's own deciding (see above)
    failed_step: str | None = None  # the init command that failed
    failure_detail: dict[str, str] | None = None  # the failing hook's or probe's last words
    hooks: list[dict[str, object]] = field(default_factory=list)

    def reason(self, shutdown: Shutdown) -> str:
        # In order of what explains the end best: the first that holds wins.
        ladder = (
            (self.failure == "InitFailed", "InitFailed"),
            (self.start_error is not None, "StartError"),
            (self.oom, "OOMKilled"),
            (self.failure is not None, self.failure),
            (shutdown.forced or (shutdown.escalated and bool(self.killed)), "Killed"),
            (self.app_signal is not None, "Signaled"),
            (self.app_code == 0, "Completed"),
        )
        return next((str(reason) for holds, reason in ladder if holds), "Error")

    def exit_code(self) -> int:
        # The app is reaped before pidone finishes, even after SIGKILL; only a
        # process stuck in the kernel leaves no status: report it as killed.
        code = 137 if self.app_code is None else self.app_code
        if code == 0 and self.failure is not None:
            return 1  # the app stopped cleanly, but because it was unhealthy
        return code

    def fields(self, shutdown: Shutdown, now: float, exit_code: int) -> dict[str, object]:
        """The final event's keys; those that do not apply are left out."""
        out: dict[str, object] = {"reason": self.reason(shutdown), "exit_code": exit_code}
        optional: dict[str, object] = {
            "signal": None if self.app_signal is None else signal_name(self.app_signal),
            "error": self.start_error,
            "init": self.failed_step,
            "failure": self.failure_detail,
            "post_start_hooks": self.hooks or None,
        }
        if shutdown.started_at is not None:
            optional.update(self._shutdown_fields(shutdown, shutdown.started_at, now))
        optional["forced"] = True if shutdown.forced else None
        optional["drains"] = [d.as_dict() for d in self.drains] or None
        if self.killed:
            optional["killed"] = [
                {"pid": p.pid, "cmdline": p.cmdline[:200]} for p in self.killed[:50]
            ]
            optional["killed_count"] = len(self.killed)
        out.update((key, value) for key, value in optional.items() if value is not None)
        return out

    def _shutdown_fields(self, shutdown: Shutdown, t0: float, now: float) -> dict[str, object]:
        return {
            "cause": shutdown.cause,
            "shutdown_signal": (
                None if self.shutdown_signal is None else signal_name(self.shutdown_signal)
            ),
            "duration_s": round(now - t0, 3),
            "phases": [
                {
                    "phase": rec.phase.value,
                    "start_s": round(rec.start - t0, 3),
                    "duration_s": round((rec.end if rec.end is not None else now) - rec.start, 3),
                }
                for rec in shutdown.history
            ],
        }

    def timeline(self, shutdown: Shutdown, now: float) -> list[str]:
        """A compact table of the shutdown for people reading a console."""
        if shutdown.started_at is None:
            return []
        t0 = shutdown.started_at
        lines = [f"shutdown timeline ({shutdown.cause}, grace {shutdown.grace:g}s):"]
        lines.extend(
            f"  post-start {'ok' if h['ok'] else 'FAILED'}: {h['hook']} ({h['detail']})"
            for h in self.hooks
        )
        if self.failure_detail is not None and self.failure is not None:
            lines.append(f"  {self.failure}: {self.failure_detail['detail']}")
        for rec in shutdown.history:
            end = rec.end if rec.end is not None else now
            lines.append(f"  +{rec.start - t0:7.3f}s  {rec.phase.value:<9} {end - rec.start:7.3f}s")
            if rec.phase.value == "draining":
                lines.extend(
                    f"  +{d.start_s:7.3f}s    drain   {d.duration_s:7.3f}s  {d.outcome}: {d.step}"
                    for d in self.drains
                )
            if rec.phase.value == "killing" and self.killed:
                lines.append(f"              killed {len(self.killed)} process(es)")
        lines.append(f"  +{now - t0:7.3f}s  done")
        return lines

    def termination_message(self, shutdown: Shutdown, now: float, exit_code: int) -> str:
        parts = [f"{self.reason(shutdown)}: exit code {exit_code}"]
        if self.app_signal is not None:
            parts[0] += f" (signal {signal_name(self.app_signal)})"
        if self.start_error:
            parts.append(self.start_error)
        parts.extend(self.timeline(shutdown, now))
        if self.killed:
            parts.append("killed at the deadline:")
            parts.extend(f"  {p.pid} {p.cmdline[:120]} (ran {p.age_s:.1f}s)" for p in self.killed)
        text = "\n".join(parts) + "\n"
        data = text.encode("utf-8", "replace")
        if len(data) > TERMINATION_LOG_LIMIT:
            data = data[: TERMINATION_LOG_LIMIT - 4] + b"...\n"
        return data.decode("utf-8", "ignore")


def default_termination_log() -> str | None:
    """Kubernetes mounts /dev/termination-log; use it when it is there and writable."""
    path = "/dev/termination-log"
    return path if os.path.exists(path) and os.access(path, os.W_OK) else None


def write_termination_log(path: str, message: str) -> str | None:
    """Write the message without ever blocking; return an error text instead of raising.

    ``O_NONBLOCK``: opening a FIFO nobody reads would otherwise wait forever
    for a reader (now ``ENXIO``), and a write to a FIFO nobody drains would
    wait for room (now ``EAGAIN``, reported).  On a regular file the flag
    changes nothing.  The SIGPIPE or SIGXFSZ this write may provoke (a reader
    that goes away, ``ulimit -f``) is pidone's own: taken here, never
    forwarded to the app.
    """
    data = message.encode("utf-8", "replace")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    own = {signal.SIGPIPE, signal.SIGXFSZ}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, own)
    try:
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except BlockingIOError:
        return "the reader takes nothing (a FIFO that is not being read)"
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.EFBIG):  # the signal that came with it is ours
            with contextlib.suppress(OSError):
                signal.sigtimedwait(own, 0)
        return str(exc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return None
