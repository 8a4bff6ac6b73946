"""Why and how the container ended: reason, exit code, timeline, termination log.

Reasons (stable; people alert on them):

- ``Completed``  the app exited 0
- ``Error``      the app exited non-zero
- ``Signaled``   the app died of a signal (``signal`` names it)
- ``Killed``     pidone had to SIGKILL something at the deadline, or was forced
- ``OOMKilled``  the memory cgroup counted an OOM kill during the run
- ``StartError`` the app could not be executed (127 not found, 126 not executable)
"""

from __future__ import annotations

import os
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

    def reason(self, shutdown: Shutdown) -> str:
        if self.start_error is not None:
            return "StartError"
        if self.oom:
            return "OOMKilled"
        if shutdown.forced or (shutdown.escalated and self.killed):
            return "Killed"
        if self.app_signal is not None:
            return "Signaled"
        return "Completed" if self.app_code == 0 else "Error"

    def exit_code(self) -> int:
        # The app is reaped before pidone finishes, even after SIGKILL; only a
        # process stuck in the kernel leaves no status: report it as killed.
        return 137 if self.app_code is None else self.app_code

    def fields(self, shutdown: Shutdown, now: float, exit_code: int) -> dict[str, object]:
        out: dict[str, object] = {"reason": self.reason(shutdown), "exit_code": exit_code}
        if self.app_signal is not None:
            out["signal"] = signal_name(self.app_signal)
        if self.start_error is not None:
            out["error"] = self.start_error
        if shutdown.started_at is not None:
            out["cause"] = shutdown.cause
            if self.shutdown_signal is not None:
                out["shutdown_signal"] = signal_name(self.shutdown_signal)
            out["duration_s"] = round(now - shutdown.started_at, 3)
            out["phases"] = [
                {
                    "phase": rec.phase.value,
                    "start_s": round(rec.start - shutdown.started_at, 3),
                    "duration_s": round((rec.end if rec.end is not None else now) - rec.start, 3),
                }
                for rec in shutdown.history
            ]
        if shutdown.forced:
            out["forced"] = True
        if self.drains:
            out["drains"] = [d.as_dict() for d in self.drains]
        if self.killed:
            out["killed"] = [{"pid": p.pid, "cmdline": p.cmdline[:200]} for p in self.killed[:50]]
            out["killed_count"] = len(self.killed)
        return out

    def timeline(self, shutdown: Shutdown, now: float) -> list[str]:
        """A compact table of the shutdown for people reading a console."""
        if shutdown.started_at is None:
            return []
        t0 = shutdown.started_at
        lines = [f"shutdown timeline ({shutdown.cause}, grace {shutdown.grace:g}s):"]
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
    """Write the message; return an error text instead of raising."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(message)
    except OSError as exc:
        return str(exc)
    return None
