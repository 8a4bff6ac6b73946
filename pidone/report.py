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

The reason and the exit code are decisions, made by
:class:`pidone.lifecycle.Outcome`; this module only writes them out.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from pidone.config import signal_name
from pidone.lifecycle import Phase

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from pidone import status
    from pidone.lifecycle import Life
    from pidone.run import Run

# kubelet reads no more than this of a termination message.
TERMINATION_LOG_LIMIT = 4096


def fields(life: Life, run: Run, now: float, exit_code: int) -> dict[str, object]:
    """The final event's keys; those that do not apply are left out."""
    outcome, shutdown = life.outcome, life.shutdown
    out: dict[str, object] = {"reason": life.reason(), "exit_code": exit_code}
    failed_step = (
        None if outcome.failed_step is None else life.config.inits[outcome.failed_step].describe()
    )
    optional: dict[str, object] = {
        "signal": None if outcome.app_signal is None else signal_name(outcome.app_signal),
        "error": outcome.start_error,
        "init": failed_step,
        "failure": run.failure_detail if outcome.failure is not None else None,
        "post_start_hooks": run.hooks or None,
    }
    if shutdown.started_at is not None:
        optional.update(_shutdown_fields(life, shutdown.started_at, now))
    optional["forced"] = True if shutdown.forced else None
    optional["drains"] = [d.as_dict() for d in run.drains] or None
    if run.killed:
        optional["killed"] = [{"pid": p.pid, "cmdline": p.cmdline[:200]} for p in run.killed[:50]]
        optional["killed_count"] = len(run.killed)
    out.update((key, value) for key, value in optional.items() if value is not None)
    return out


def _shutdown_fields(life: Life, t0: float, now: float) -> dict[str, object]:
    shutdown, signum = life.shutdown, life.shutdown_signal
    return {
        "cause": shutdown.cause,
        "shutdown_signal": None if signum is None else signal_name(signum),
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


def timeline(life: Life, run: Run, now: float) -> list[str]:
    """A compact table of the shutdown for people reading a console."""
    shutdown = life.shutdown
    if shutdown.started_at is None:
        return []
    t0 = shutdown.started_at
    lines = [f"shutdown timeline ({shutdown.cause}, grace {shutdown.grace:g}s):"]
    lines.extend(
        f"  post-start {'ok' if h['ok'] else 'FAILED'}: {h['hook']} ({h['detail']})"
        for h in run.hooks
    )
    failure = life.outcome.failure
    if run.failure_detail is not None and failure is not None:
        lines.append(f"  {failure}: {run.failure_detail['detail']}")
    for rec in shutdown.history:
        end = rec.end if rec.end is not None else now
        lines.append(f"  +{rec.start - t0:7.3f}s  {rec.phase.value:<9} {end - rec.start:7.3f}s")
        if rec.phase.value == "draining":
            lines.extend(
                f"  +{d.start_s:7.3f}s    drain   {d.duration_s:7.3f}s  {d.outcome}: {d.step}"
                for d in run.drains
            )
        if rec.phase.value == "killing" and run.killed:
            lines.append(f"              killed {len(run.killed)} process(es)")
    lines.append(f"  +{now - t0:7.3f}s  done")
    return lines


def termination_message(life: Life, run: Run, now: float, exit_code: int) -> str:
    outcome = life.outcome
    parts = [f"{life.reason()}: exit code {exit_code}"]
    if outcome.app_signal is not None:
        parts[0] += f" (signal {signal_name(outcome.app_signal)})"
    if outcome.start_error:
        parts.append(outcome.start_error)
    parts.extend(timeline(life, run, now))
    if run.killed:
        parts.append("killed at the deadline:")
        parts.extend(f"  {p.pid} {p.cmdline[:120]} (ran {p.age_s:.1f}s)" for p in run.killed)
    text = "\n".join(parts) + "\n"
    data = text.encode("utf-8", "replace")
    if len(data) > TERMINATION_LOG_LIMIT:
        data = data[: TERMINATION_LOG_LIMIT - 4] + b"...\n"
    return data.decode("utf-8", "ignore")


def conclude(life: Life, run: Run, now: float, code: int, log: FilteringBoundLogger) -> None:
    """The end: the termination log, the console timeline, the ``terminated`` line last."""
    from pidone.log import use_console

    out = fields(life, run, now, code)
    path = life.config.termination_log or default_termination_log()
    if path:
        error = write_termination_log(path, termination_message(life, run, now, code))
        if error:
            log.warning("termination_log_failed", path=path, error=error)
    if use_console(life.config.log_format):
        for line in timeline(life, run, now):
            log.info(line)
    if life.backoff.total:
        out["restarts"] = life.backoff.total
    log.info("terminated", **out)


def snapshot(life: Life, run: Run, last_exit: dict[str, object] | None) -> status.Snapshot:
    """What the status endpoint reports, read at the moment of each request."""
    from pidone import status as status_mod

    pod = run.pod
    running = life.stage == "app" and pod is not None and not life.shutdown.app_exited
    live = running and pod is not None and pod.live
    ready = live and pod is not None and life.shutdown.phase is Phase.RUNNING and pod.ready
    now = time.monotonic()
    started_at = run.started_at if run.kind == "app" else None
    status: dict[str, object] = {
        "stage": "app" if life.stage in ("backoff", "done") else life.stage,
        "phase": life.shutdown.phase.value,
        "app_pid": run.pid if running else None,
        "uptime_s": round(now - started_at, 3) if started_at else 0.0,
        "live": live,
        "ready": ready,
        "restarts": life.backoff.total,
        "last_exit": last_exit,
        **(pod.status() if pod is not None else {}),
    }
    if life.shutdown.started_at is not None:
        status["shutdown"] = {
            "cause": life.shutdown.cause,
            "elapsed_s": round(life.shutdown.elapsed(now), 3),
        }
    return status_mod.Snapshot(live, ready, status)


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
