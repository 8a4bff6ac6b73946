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

import contextlib
import errno
import os
import signal
import time
from typing import TYPE_CHECKING

from pidone.config import signal_name
from pidone.lifecycle import Phase

if TYPE_CHECKING:
    from collections.abc import Sequence

    from structlog.typing import FilteringBoundLogger

    from pidone import status
    from pidone.lifecycle import Life, SignalTake
    from pidone.run import Run, SidecarRun

# kubelet reads no more than this of a termination message.
TERMINATION_LOG_LIMIT = 4096


def fields(
    life: Life, run: Run, now: float, exit_code: int, sidecars: Sequence[SidecarRun] = ()
) -> dict[str, object]:
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
        "failed_sidecar": None
        if outcome.failed_sidecar is None
        else life.config.sidecars[outcome.failed_sidecar].name,
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
    optional["sidecars"] = [side.summary() for side in sidecars] or None
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


def conclude(  # noqa: PLR0913, PLR0917 - the end is made of all of these
    life: Life,
    run: Run,
    sidecars: Sequence[SidecarRun],
    now: float,
    code: int,
    log: FilteringBoundLogger,
    *,
    output_dropped: int = 0,
) -> None:
    """The end: the termination log, the console timeline, the ``terminated`` line last."""
    from pidone import log as log_mod

    out = fields(life, run, now, code, sidecars)
    path = life.config.termination_log or default_termination_log()
    if path:
        error = write_termination_log(path, termination_message(life, run, now, code))
        if error:
            log.warning("termination_log_failed", path=path, error=error)
    if log_mod.use_console(life.config.log_format):
        for line in timeline(life, run, now):
            log.info(line)
    if life.backoff.total:
        out["restarts"] = life.backoff.total
    if output_dropped:
        out["output_lines_dropped"] = output_dropped
    out["log_lines_dropped"] = log_mod.closing()  # and the line passes the log's bounds
    log.info("terminated", **out)


def snapshot(
    life: Life, run: Run, sidecars: Sequence[SidecarRun], last_exit: dict[str, object] | None
) -> status.Snapshot:
    """What the status endpoint reports, read at the moment of each request."""
    from pidone import status as status_mod

    pod = run.pod
    running = life.stage == "app" and pod is not None and not life.shutdown.app_exited
    live = running and pod is not None and pod.live
    ready = (
        live
        and pod is not None
        and life.shutdown.phase is Phase.RUNNING
        and pod.ready
        and life.sidecars.all_ready  # as a pod's: every sidecar started and ready
    )
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
    if sidecars:
        status["sidecars"] = [
            {
                "name": side.spec.name,
                "pid": side.pid,
                "state": "running" if side.pid is not None else "exited",
                "ready": state.ready,
                "restarts": side.restarts,
                "last_exit": side.last_exit,
            }
            for side, state in zip(sidecars, life.sidecars.states, strict=True)
        ]
    if life.shutdown.started_at is not None:
        status["shutdown"] = {
            "cause": life.shutdown.cause,
            "elapsed_s": round(life.shutdown.elapsed(now), 3),
        }
    return status_mod.Snapshot(live, ready, status)


def signal_taken(
    take: SignalTake, signum: int, life: Life, run: Run, now: float
) -> tuple[str, dict[str, object]] | None:
    """The line that says what a shutdown signal did (the event and its keys), if any."""
    shutdown, name, config = life.shutdown, signal_name(signum), life.config
    if take == "ended_backoff":
        return "shutdown_during_backoff", {"signal": name}
    if take == "started":
        app = run.kind == "app"
        return "shutdown_started", {
            "signal": name,
            "grace_s": config.grace,
            "pre_stop_delay_s": config.pre_stop_delay if app else 0,
            "drains": [d.describe() for d in config.drains] if app else [],
        }
    if take == "joined":
        # pidone was already stopping the app (it exited, a probe failed): the
        # stop under way serves this signal too; a second one forces.
        return "shutdown_joined", {
            "signal": name,
            "phase": shutdown.phase.value,
            "cause": shutdown.cause,
        }
    if take == "again":
        return "shutdown_signal_again", {
            "signal": name,
            "phase": shutdown.phase.value,
            "elapsed_s": round(shutdown.elapsed(now), 3),
        }
    return None


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
