"""The event loop: one selector, one blocking call, every event in one place.

Signals arrive as bytes on a pipe (see :mod:`pidone.signals`, which sets
that up before the app is started); this module takes over once the app
runs.  SIGCHLD arrives the same way and triggers the reaper.

The loop blocks in exactly one place, ``selector.select(timeout)``, where
the timeout is the shutdown machine's next deadline, or ``None`` while
nothing is scheduled: an idle pidone makes no system call at all.

Where does SIGTERM go?  Here it is recognised as a shutdown signal and fed
to :class:`pidone.lifecycle.Shutdown`; the actions it returns are carried out
by :meth:`Supervisor._act`.  Every other signal is forwarded to the app.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import signal
import sys
import time
from typing import Any

from pidone import spawn
from pidone.config import Config, signal_name
from pidone.hooks import Result, Runner
from pidone.lifecycle import (
    Action,
    Backoff,
    CancelDrain,
    Finish,
    KillAll,
    Phase,
    RunDrain,
    Shutdown,
    SignalApp,
    SignalRest,
    should_restart,
)

# The longest single wait: select() refuses timeouts past the platform's
# limits (a --grace of 1e10 s is finite, valid, and would overflow it); a
# capped wait just wakes up early and recomputes.
MAX_WAIT = 86400.0

DRAIN_TIMED_OUT = "ran out of its share of the grace"


class Supervisor:
    def __init__(self, config: Config, wake_fd: int) -> None:
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.wake_r = wake_fd
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.app_pid: int | None = None
        self.shutdown = self._app_shutdown()
        self.runner = Runner(self.selector, config.user, config.no_new_privileges)
        self.pod: Any = None  # pidone.pod.Pod: hooks, probes, sd_notify of the current run
        self.status: Any = None  # pidone.status.StatusServer, with --status-addr
        # drain index -> the runner's token, for the drain that is running now.
        self.drain_tokens: dict[int, int] = {}
        self.drain_started: dict[int, float] = {}
        self.self_sigpipes = 0
        self.log: Any = None
        self.report: Any = None
        self.oom_before: int | None = None
        self.done = False
        self.foreground = False
        self.stage = "app"  # "init" while init commands run, then "app"
        self.init_index = 0
        self.app_started_at: float | None = None
        # sd_notify: the socket (with --notify), the environment that names it,
        # and what the app said in this run.
        self.app_env: dict[str, str] | None = None
        # Restarts: the backoff, the time of the next start, the last run's end.
        self.backoff = Backoff(config.restart_delay, config.restart_delay_max, config.restart_reset)
        self.restart_at: float | None = None
        self.last_exit: dict[str, object] | None = None
        self.base_log: Any = None
        # SIGCHLD and the shutdown signals must never be lost.  The wakeup pipe
        # drops bytes once full (a storm of forwarded signals the loop has not
        # drained yet), so these are taken by a recording handler; their bytes
        # only wake the loop up.  See _take_critical_signals.
        self.critical = frozenset({signal.SIGCHLD, *config.shutdown_signals})
        self.pending: list[int] = []
        self.early = self._take_critical_signals()

    # -- start ----------------------------------------------------------------

    def started(self, app_pid: int) -> None:
        """The app is running (started before this object existed, for speed)."""
        self._setup_reporting()
        self._app_running(app_pid, time.monotonic())

    def start_failed(self, exc: spawn.SpawnError) -> None:
        self._setup_reporting()
        self._cannot_start(exc, "app")

    def start_inits(self) -> None:
        """Init commands first: each must succeed before the next, the app last."""
        self._setup_reporting()
        self.stage = "init"
        # While an init command runs there is nothing to drain: a shutdown
        # signal only stops it, within the grace.
        self.shutdown = Shutdown(grace=self.config.grace, stop_signal=self.config.stop_signal)
        self._next_init()

    def _next_init(self) -> None:
        if self.init_index == len(self.config.inits):
            self._start_app()
            return
        step = self.config.inits[self.init_index]
        self.log.info("init_started", index=self.init_index, command=step.describe())
        try:
            self.app_pid = spawn.spawn(step.argv, tty_fd=self._tty())
        except spawn.SpawnError as exc:
            self._cannot_start(exc, "init")

    def _on_init_exit(self, ex: spawn.Exit) -> bool:
        """An init command ended; True when it handled the exit as a success."""
        step = self.config.inits[self.init_index]
        if ex.code != 0 or self.shutdown.phase is not Phase.RUNNING:
            if self.shutdown.phase is Phase.RUNNING:
                self.report.failure = "InitFailed"
            self.report.failed_step = step.describe()
            self.log.warning(
                "init_failed", index=self.init_index, command=step.describe(), exit_code=ex.code
            )
            return False
        self.log.info("init_finished", index=self.init_index, command=step.describe())
        self.init_index += 1
        self._next_init()
        return True

    def _start_app(self) -> None:
        self.stage = "app"
        self.shutdown = self._app_shutdown()
        try:
            pid = spawn.spawn_app(self.config, tty_fd=self._tty(), env=self.app_env)
        except spawn.SpawnError as exc:
            self._cannot_start(exc, "app")
            return
        self._app_running(pid, time.monotonic())

    def _tty(self) -> int | None:
        return 0 if self.foreground else None

    def _cannot_start(self, exc: spawn.SpawnError, stage: str) -> None:
        self.report.start_error = str(exc)
        self.report.app_code = exc.exit_code
        if stage == "init":
            self.report.failure = "InitFailed"
            self.report.failed_step = self.config.inits[self.init_index].describe()
        self.log.error(
            "app_start_failed" if stage == "app" else "init_failed",
            argv=list(
                self.config.argv if stage == "app" else self.config.inits[self.init_index].argv
            ),
            error=str(exc),
            exit_code=exc.exit_code,
        )
        if spawn.has_children():
            # An init command that already ran left something behind: it gets
            # the stop signal and the grace, as an app's leftovers would.
            self._feed(self.shutdown.on_app_exit, time.monotonic())
        else:
            self.done = True

    def _app_running(self, pid: int, now: float) -> None:
        self.app_pid = pid
        self.app_started_at = now
        self.log.info(
            "app_started",
            pid=pid,
            argv=list(self.config.argv),
            pidone_pid=os.getpid(),
            foreground=self.foreground,
        )
        from pidone.pod import Pod

        self.pod = Pod(self.config, self.runner, self._stop_for, self.log, self.report.hooks)
        self.pod.start(now)

    # -- pidone's own reasons to stop -------------------------------------------------

    def _stop_for(self, reason: str, cause: str, result: Result) -> None:
        """pidone itself stops the app, with the normal sequence, and remembers why."""
        if self.shutdown.phase is not Phase.RUNNING:
            return
        self.report.failure = reason
        self.report.failure_detail = {"detail": result.detail, "output": result.output[-1024:]}
        now = time.monotonic()
        self._shutdown_begins()
        self.log.warning("stopping_app", reason=reason, cause=cause, detail=result.detail)
        self._feed(self.shutdown.on_stop_request, now, cause)

    def _shutdown_begins(self) -> None:
        """Whatever starts the shutdown: no more probes, no more hooks."""
        if self.pod is not None:
            self.pod.stop()
        self.runner.cancel_all("shutdown began")

    def on_notify(self, fields: dict[str, str]) -> None:
        """A datagram from the app on the sd_notify socket."""
        if self.stage == "app" and self.pod is not None:
            self.pod.on_notify(fields)

    def snapshot(self) -> Any:
        """What the status endpoint reports, read at the moment of each request."""
        from pidone.status import Snapshot

        pod = self.pod
        running = self.stage == "app" and pod is not None and not self.shutdown.app_exited
        live = running and pod.live
        ready = live and self.shutdown.phase is Phase.RUNNING and pod.ready
        now = time.monotonic()
        status: dict[str, object] = {
            "stage": self.stage,
            "phase": self.shutdown.phase.value,
            "app_pid": self.app_pid if running else None,
            "uptime_s": round(now - self.app_started_at, 3) if self.app_started_at else 0.0,
            "live": live,
            "ready": ready,
            "restarts": self.backoff.total,
            "last_exit": self.last_exit,
            **(pod.status() if pod is not None else {}),
        }
        if self.shutdown.started_at is not None:
            status["shutdown"] = {
                "cause": self.shutdown.cause,
                "elapsed_s": round(self.shutdown.elapsed(now), 3),
            }
        return Snapshot(live, ready, status)

    def _app_shutdown(self) -> Shutdown:
        return Shutdown(
            grace=self.config.grace,
            stop_signal=self.config.stop_signal,
            drain_count=len(self.config.drains),
            pre_stop_delay=self.config.pre_stop_delay,
        )

    def _setup_reporting(self) -> None:
        # Everything imported here costs start-up time, so it happens after the
        # app is already running.
        from pidone import log, report

        self.log = log.setup(self.config.log_format, self.config.log_level, self._on_broken_pipe)
        self.base_log = self.log
        self.report = report.Report()

    def _on_broken_pipe(self) -> None:
        self.self_sigpipes += 1

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self._dispatch(self.early, early=True)
        while not self.done:
            timeout = None
            deadline = self._next_deadline()
            if deadline is not None:
                timeout = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
            events = self.selector.select(timeout)
            for key, mask in events:
                if key.fd == self.wake_r:
                    self._on_signals()
                else:
                    key.data(mask)
            if self.pending:  # recorded, but its byte was read in an earlier batch
                self._dispatch(b"")
            self._on_deadlines(time.monotonic())
        return self._finish()

    def _components(self) -> list[Any]:
        """Everything besides the shutdown machine that keeps time."""
        return [c for c in (self.runner, self.pod, self.status) if c is not None]

    def _next_deadline(self) -> float | None:
        times = [c.next_deadline() for c in (self.shutdown, *self._components())]
        times.append(self.restart_at)
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def _on_deadlines(self, now: float) -> None:
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._restart()
        for component in self._components():
            deadline = component.next_deadline()
            if deadline is not None and now >= deadline:
                component.on_deadline(now)
        deadline = self.shutdown.next_deadline()
        if deadline is not None and now >= deadline:
            self._act(self.shutdown.on_deadline(now))

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
        self.pending.append(signum)

    def _on_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            data = b""
        self._dispatch(data)

    def _dispatch(self, data: bytes, *, early: bool = False) -> None:
        reap = False
        pending, self.pending = self.pending, []
        critical = [s for s in data if early and s in self.critical] + pending
        for signum in data:
            if signum in self.critical:
                continue  # recorded by _record (or in ``critical`` when early)
            if signum == signal.SIGPIPE and self.self_sigpipes:
                self.self_sigpipes -= 1  # our own stderr broke; not the app's business
            else:
                self._forward(signum)
        for signum in critical:
            if signum == signal.SIGCHLD:
                reap = True
            else:
                self._on_shutdown_signal(signum)
        if reap:
            self._reap()

    def _forward(self, signum: int) -> None:
        if self.app_pid is None or self.shutdown.app_exited or not self._signal_app(signum):
            return
        self.log.debug(
            "signal_forwarded",
            signal=signal_name(signum),
            pid=self.app_pid,
            to=self.config.signal_to,
        )

    def _on_shutdown_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self.restart_at is not None:  # waiting to restart: nothing runs, end now
            self.restart_at = None
            self.log.info("shutdown_during_backoff", signal=signal_name(signum))
            self.done = True
            return
        first = self.report.shutdown_signal is None
        if first:
            self.report.shutdown_signal = signum
        if self.shutdown.phase is Phase.RUNNING:
            self._shutdown_begins()
            self.log.info(
                "shutdown_started",
                signal=signal_name(signum),
                grace_s=self.config.grace,
                pre_stop_delay_s=self.config.pre_stop_delay if self.stage == "app" else 0,
                drains=[d.describe() for d in self.config.drains] if self.stage == "app" else [],
            )
        elif first and self.shutdown.phase is not Phase.DONE:
            # pidone was already stopping the app (it exited, a probe failed):
            # the stop under way serves this signal too; a second one forces.
            self.log.info(
                "shutdown_joined",
                signal=signal_name(signum),
                phase=self.shutdown.phase.value,
                cause=self.shutdown.cause,
            )
        elif self.shutdown.phase is not Phase.DONE:
            self.log.warning(
                "shutdown_signal_again",
                signal=signal_name(signum),
                phase=self.shutdown.phase.value,
                elapsed_s=round(self.shutdown.elapsed(now), 3),
            )
        self._feed(self.shutdown.on_shutdown_signal, now)
        if self.shutdown.forced:
            self.log.warning("shutdown_forced", elapsed_s=round(self.shutdown.elapsed(now), 3))

    def _reap(self) -> None:
        exits, none_left = spawn.reap()
        now = time.monotonic()
        # Everything in the batch is reaped already: first mark all of it (so
        # nothing acts on a pid that is gone), then the app, then the actions.
        app_exit = None
        for ex in exits:
            if ex.pid == self.app_pid:
                app_exit = ex
            elif not self.runner.claim(ex):
                self.log.debug("orphan_reaped", pid=ex.pid, exit_code=ex.code)
        if app_exit is not None and not (self.stage == "init" and self._on_init_exit(app_exit)):
            self._on_app_exit(app_exit, now)
        self.runner.deliver()
        if none_left and self.shutdown.app_exited:
            self._feed(self.shutdown.on_nothing_left, now)

    def _on_app_exit(self, ex: spawn.Exit, now: float) -> None:
        self.report.app_code = ex.code
        self.report.app_signal = ex.signal
        fields: dict[str, object] = {"pid": ex.pid, "exit_code": ex.code}
        if ex.signal is not None:
            fields["signal"] = signal_name(ex.signal)
        if self.shutdown.started_at is not None:
            fields["elapsed_s"] = round(self.shutdown.elapsed(now), 3)
        self.log.info("app_exited", **fields)
        if self.shutdown.phase is Phase.RUNNING:
            self._shutdown_begins()
        self._feed(self.shutdown.on_app_exit, now)

    # -- drains -----------------------------------------------------------------

    def _drain_done(self, index: int, result: Result) -> None:
        from pidone.hooks import DrainOutcome

        now = time.monotonic()
        self.drain_tokens.pop(index, None)
        started = self.drain_started.pop(index)
        outcome = "ok" if result.ok else "failed"
        if result.detail == DRAIN_TIMED_OUT:
            outcome = "timed_out"
        record = DrainOutcome(
            self.config.drains[index].describe(),
            outcome,
            result.detail,
            started - (self.shutdown.started_at or started),
            result.duration,
        )
        self.report.drains.append(record)
        log = self.log.info if outcome == "ok" else self.log.warning
        log("drain_finished" if outcome == "ok" else "drain_failed", **record.as_dict())
        self._feed(self.shutdown.on_drain_done, now, index)

    def _run_drain(self, index: int, deadline: float) -> None:
        now = time.monotonic()
        step = self.config.drains[index]
        self.drain_started[index] = now
        self.log.info(
            "drain_started",
            step=step.describe(),
            index=index,
            budget_s=round(deadline - now, 3),
            elapsed_s=round(self.shutdown.elapsed(now), 3),
        )
        # No time limit of the runner's own: the shutdown machine owns the
        # drain's deadline and says when to cancel it (CancelDrain).
        done = functools.partial(self._drain_done, index)
        token = self.runner.start(step, None, done)
        if self.runner.running(token):
            self.drain_tokens[index] = token

    def _cancel_drain(self, index: int) -> None:
        token = self.drain_tokens.get(index)
        if token is not None:
            self.runner.cancel(token, DRAIN_TIMED_OUT)

    # -- actions ----------------------------------------------------------------

    def _feed(self, event: Any, now: float, *args: Any) -> None:
        before = self.shutdown.phase
        actions: list[Action] = event(now, *args)
        if self.shutdown.phase is not before:
            self._log_phase(now)
        self._act(actions)

    def _log_phase(self, now: float) -> None:
        shutdown = self.shutdown
        if shutdown.phase is Phase.DONE:
            return
        self.log.info(
            "phase_entered",
            phase=shutdown.phase.value,
            elapsed_s=round(shutdown.elapsed(now), 3),
            deadline_s=round((shutdown.deadline or now) - now, 3),
            cause=shutdown.cause,
        )

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, RunDrain):
                self._run_drain(action.index, action.deadline)
            elif isinstance(action, CancelDrain):
                self._cancel_drain(action.index)
            elif isinstance(action, SignalApp):
                self.log.info(
                    "stop_signal_sent",
                    signal=signal_name(action.signum),
                    pid=self.app_pid,
                    to=self.config.signal_to,
                )
                self._signal_app(action.signum)
            elif isinstance(action, SignalRest):
                self._signal_rest(action.signum)
            elif isinstance(action, KillAll):
                self._kill_all()
            elif isinstance(action, Finish):
                self._run_over()

    def _signal_app(self, signum: int) -> bool:
        """Signal the app, or its group with --signal-to group; False if it is gone."""
        if self.app_pid is None:
            return False
        try:
            if self.config.signal_to == "group":
                os.killpg(self.app_pid, signum)
            else:
                os.kill(self.app_pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _signal_rest(self, signum: int) -> None:
        if not spawn.has_children():
            self._reap()  # the common case: the app left nothing behind
            return
        from pidone import tree

        rest = tree.descendants()
        if rest:
            self.log.info(
                "leftovers_signalled", signal=signal_name(signum), count=len(rest), pids=rest[:50]
            )
            tree.signal_rest(signum)
        # Exits that happened before the signal left no SIGCHLD to wait for.
        self._reap()

    def _kill_all(self) -> None:
        from pidone import tree

        now = time.monotonic()
        alive = tree.lingering()
        self.report.killed = alive
        for info in alive[:50]:
            self.log.warning(
                "process_killed", pid=info.pid, cmdline=info.cmdline[:500], age_s=info.age_s
            )
        if len(alive) > 50:
            self.log.warning("process_killed_more", count=len(alive) - 50)
        self.log.warning(
            "escalated",
            count=len(alive),
            forced=self.shutdown.forced,
            elapsed_s=round(self.shutdown.elapsed(now), 3),
        )
        self.runner.cancel_all("killed at the deadline")
        tree.kill_all()
        self._reap()

    # -- the end ----------------------------------------------------------------

    def _run_over(self) -> None:
        """The app and everything it started are gone: restart it, or end pidone."""
        now = time.monotonic()
        self._check_oom()
        code = self.report.exit_code()
        reason = self.report.reason(self.shutdown)
        failed = self.report.failure is not None
        # A shutdown signal from outside is never undone, even when it arrived
        # while pidone was already stopping the app for its own reasons.
        cause = "signal" if self.report.shutdown_signal is not None else self.shutdown.cause
        restart = (
            self.stage == "app"
            and self.report.start_error is None
            and should_restart(self.config.restart, cause, code, failed)
        )
        if not restart:
            self.done = True
            return
        ran = now - (self.app_started_at or now)
        delay = self.backoff.next_delay(ran)
        self.last_exit = {"reason": reason, "exit_code": code, "ran_s": round(ran, 3)}
        self.log.info("run_ended", **self.report.fields(self.shutdown, now, code))
        self.log.warning(
            "restart_scheduled", **self.last_exit, delay_s=delay, restarts=self.backoff.total
        )
        self.log = self.base_log.bind(restart=self.backoff.total, last_reason=reason)
        self.restart_at = now + delay

    def _restart(self) -> None:
        """A new run: fresh shutdown budget, probes, hooks and report."""
        from pidone import report

        self.report = report.Report()
        self.pod = None
        self.app_pid = None
        self._start_app()

    def _finish(self) -> int:
        from pidone import report

        self._check_oom()
        return self.conclude(time.monotonic(), report)

    def _check_oom(self) -> None:
        """Did the memory cgroup count an OOM kill during this run?"""
        from pidone import cgroup

        oom_after = cgroup.oom_kills()
        if self.oom_before is not None and oom_after is not None and oom_after > self.oom_before:
            self.report.oom = True
        self.oom_before = oom_after  # the next run counts from here

    def conclude(self, now: float, report_mod: Any) -> int:
        code = self.config.remap(self.report.exit_code())
        fields = self.report.fields(self.shutdown, now, code)
        path = self.config.termination_log or report_mod.default_termination_log()
        if path:
            message = self.report.termination_message(self.shutdown, now, code)
            error = report_mod.write_termination_log(path, message)
            if error:
                self.log.warning("termination_log_failed", path=path, error=error)
        from pidone.log import use_console

        if use_console(self.config.log_format):
            for line in self.report.timeline(self.shutdown, now):
                self.log.info(line)
        if self.backoff.total:
            fields["restarts"] = self.backoff.total
        self.log.info("terminated", **fields)
        return code


def supervise(  # noqa: PLR0913 - what was set up before the app started, handed over once
    config: Config,
    wake_fd: int,
    app: int | spawn.SpawnError | None,
    *,
    foreground: bool,
    status: Any = None,
    notify: Any = None,
    app_env: dict[str, str] | None = None,
    oom_before: int | None = None,
) -> int:
    """Supervise the app: already started, not startable, or (None) after the init commands."""
    sup = Supervisor(config, wake_fd)
    sup.foreground = foreground
    sup.app_env = app_env
    sup.oom_before = oom_before
    try:
        if status is not None:
            sup.status = status
            status.snapshot = sup.snapshot
            status.register(sup.selector)
        if notify is not None:
            notify.register(sup.selector, sup.on_notify)
        if app is None:
            sup.start_inits()
        elif isinstance(app, spawn.SpawnError):
            sup.start_failed(app)
        else:
            sup.started(app)
        return sup.run()
    except Exception as exc:  # the last resort: keep the promise, never orphan anything
        return last_resort(sup, exc)


def last_resort(sup: Supervisor, exc: BaseException) -> int:
    """An unexpected error inside pidone: kill the tree, reap, keep the app's code."""
    from pidone import tree

    with contextlib.suppress(Exception):
        sup.log.error("internal_error", error=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):
        tree.kill_all()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except OSError:  # ECHILD: nothing left
            break
        if pid == 0:  # not a blocking wait: a child stuck in the kernel must not hold PID 1
            time.sleep(0.01)
            continue
        if pid == sup.app_pid and sup.report is not None:
            sup.report.app_code = spawn.Exit(pid, status).code
    code = 70  # EX_SOFTWARE, when the app's own code is unknown
    if sup.report is not None and sup.report.app_code is not None:
        code = sup.config.remap(sup.report.app_code)
    with contextlib.suppress(Exception):
        sup.log.error("terminated", reason="InternalError", exit_code=code)
    sys.stderr.flush()
    return code
