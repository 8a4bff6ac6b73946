"""The supervisor: events in, the lifecycle machine's actions carried out, lines logged.

Every event (a signal, a reaped exit, a drain's or hook's result, a deadline)
comes here from :class:`pidone.loop.Loop`, goes to
:class:`pidone.lifecycle.Life` for a decision, and comes back as actions that
this module carries out on the current :class:`pidone.run.Run`: start an
init command or the app, run or cancel a drain, signal, kill, restart, exit.
It logs what happens; it decides nothing the machine could decide.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

# This module is imported once the app runs (main.py), so its imports cost no
# start-up time.  They are made here, not where they are used, because an
# import is an open(): at the end of a run under EMFILE (ulimit -n reached) a
# lazy import of report or tree failed and turned the app's exit code into 1
# (tests/test_faults_actions.py, out of descriptors).
from pidone import cgroup, report, spawn, tree
from pidone.actions import Result, Runner
from pidone.config import signal_name
from pidone.crew import Crew
from pidone.lifecycle import (
    CancelDrain,
    Exit,
    Finish,
    KillAll,
    Life,
    LifeAction,
    Phase,
    RestartLater,
    RunDrain,
    SignalApp,
    SignalRest,
    StartApp,
    StartInit,
)
from pidone.log import setup as setup_log
from pidone.run import Run
from pidone.sidecars import RestartSidecarLater, SidecarNotReady, StartSidecar, StopSidecar

if TYPE_CHECKING:
    from collections.abc import Iterable

    from structlog.typing import FilteringBoundLogger

    from pidone.actions import OnDone
    from pidone.boot import Started
    from pidone.config import Check, Config
    from pidone.loop import Loop, Timed
    from pidone.relay import Relay
    from pidone.status import Snapshot


class QueuedRunner(Runner):
    """The action runner, with every result delivered through the loop's queue.

    A command that cannot start reports at once, and a cancelled action reports
    when it is cancelled: handed straight back, that result would re-enter the
    code that started or cancelled it.
    """

    def __init__(self, loop: Loop, config: Config) -> None:
        # Commands act for the app: they run as its user (--user, --no-new-privileges).
        super().__init__(loop.selector, config.user, config.no_new_privileges)
        self._loop = loop

    def start(
        self, action: Check, timeout: float | None, on_done: OnDone, *, capture: bool = False
    ) -> int:
        def later(result: Result) -> None:
            self._loop.later(lambda: on_done(result))

        return super().start(action, timeout, later, capture=capture)


class LifeClock:
    """The lifecycle machine's deadlines, as one of the loop's timers."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def next_deadline(self) -> float | None:
        return self._sup.life.next_deadline()

    def on_deadline(self, now: float) -> None:
        self._sup.act(self._sup.life.on_deadline(now), now)


class Supervisor:
    def __init__(self, started: Started, loop: Loop) -> None:
        self.config = started.config
        self.started = started
        self.loop = loop
        # [log] pidone's own SIGPIPE/SIGXFSZ never reach the loop: see pidone.log.
        self.log: FilteringBoundLogger = setup_log(self.config.log_format, self.config.log_level)
        self.base_log = self.log
        self.life = Life(self.config)
        self.runner = QueuedRunner(loop, self.config)
        self.run = Run(self.config, "app", self.config.argv)
        self.oom = cgroup.OomWatch(started.oom_before)
        self.last_exit: dict[str, object] | None = None
        self.code: int | None = None
        self._clock = LifeClock(self)
        self.crew = Crew(self.config, self)
        self.relay: Relay | None = None
        if self.config.prefix_output:
            from pidone.relay import Relay

            self.relay = Relay(loop.selector, self._output_dropped)
        # The stop phase last logged (of which run's stop): each new one is logged once.
        self._phase_seen = (self.life.shutdown, self.life.shutdown.phase)

    # -- what the loop asks -------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.life.done

    def timers(self) -> Iterable[Timed]:
        pod, status = self.run.pod, self.started.status
        timers = [t for t in (self.runner, pod, status) if t is not None]
        return [*timers, self.crew, self._clock] if self.crew.runs else [*timers, self._clock]

    def begin(self) -> None:
        self.act([self.life.first()], time.monotonic())

    # -- signals --------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        if self.run.pid is not None and self.run.signal(signum):
            self.log.debug(
                "signal_forwarded",
                signal=signal_name(signum),
                pid=self.run.pid,
                to=self.config.signal_to,
            )

    def on_critical(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.reap()
        else:
            self.on_shutdown_signal(signum)

    def on_shutdown_signal(self, signum: int) -> None:
        now = time.monotonic()
        take, actions = self.life.on_shutdown_signal(now, signum)
        if take == "started":
            self._stop_begins()
        line = report.signal_taken(take, signum, self.life, self.run, now)
        if line is not None:
            log = self.log.warning if take == "again" else self.log.info
            log(line[0], **line[1])
        self.act(actions, now)
        shutdown = self.life.shutdown
        if shutdown.forced and take == "again":
            self.log.warning("shutdown_forced", elapsed_s=round(shutdown.elapsed(now), 3))

    # -- processes ------------------------------------------------------------------

    def reap(self) -> None:
        exits, none_left = spawn.reap()
        now = time.monotonic()
        # Everything in the batch is reaped already: first mark all of it (so
        # nothing acts on a pid that is gone), then the run's own process.
        mine = None
        sidecar_exits = []
        for ex in exits:
            sidecar = self.crew.index_of(ex.pid)
            if ex.pid == self.run.pid:
                mine = ex
                self.run.exited = True
            elif sidecar is not None:
                sidecar_exits.append((sidecar, ex))
            elif not self.runner.claim(ex):
                self.log.debug("orphan_reaped", pid=ex.pid, exit_code=ex.code)
        if mine is not None:
            self._on_exit(mine, now)
        self.crew.exited(sidecar_exits, now)
        self.runner.deliver()
        if none_left or self.crew.only_sidecars_left():
            self.act(self.life.on_nothing_left(now), now)

    def _on_exit(self, ex: spawn.Exit, now: float) -> None:
        if self.run.kind == "init":
            index = self.life.init_index
            step = self.config.inits[index].describe()
            follow = self.life.on_init_exit(ex.code)
            if follow is not None:
                self.log.info("init_finished", index=index, command=step)
                self.act(follow, now)
                return
            self.log.warning("init_failed", index=index, command=step, exit_code=ex.code)
        fields: dict[str, object] = {"pid": ex.pid, "exit_code": ex.code}
        if ex.signal is not None:
            fields["signal"] = signal_name(ex.signal)
        if self.life.shutdown.started_at is not None:
            fields["elapsed_s"] = round(self.life.shutdown.elapsed(now), 3)
        self.log.info("app_exited", **fields)
        if self.life.shutdown.phase is Phase.RUNNING:
            self._stop_begins()
        self.act(self.life.on_exit(now, ex.code, ex.signal), now)

    def _start(self, run: Run, now: float) -> None:
        """Start the run's process (boot may have started the app already)."""
        self.run = run
        if run.kind == "init":
            index = self.life.init_index
            self.log.info("init_started", index=index, command=self.config.inits[index].describe())
        preset, self.started = self.started.app, self.started._replace(app=None)
        env = self.started.app_env if run.kind == "app" else None
        tty = 0 if self.started.foreground else None
        preset = preset if run.kind == "app" else None
        name = "app" if run.kind == "app" else f"init-{self.life.init_index}"
        stdio = self.pipes(name) if preset is None else None
        error = run.start(preset, env, tty, now, stdio)
        if error is not None:
            self._cannot_start(error, now)
            return
        self.life.on_started(now)
        if run.kind == "app":
            self._app_running(now)

    def _cannot_start(self, exc: spawn.SpawnError, now: float) -> None:
        self.log.error(
            "app_start_failed" if self.run.kind == "app" else "init_failed",
            argv=list(self.run.argv),
            error=str(exc),
            exit_code=exc.exit_code,
        )
        leftovers = spawn.has_children()
        self.act(self.life.on_start_failed(now, str(exc), exc.exit_code, leftovers=leftovers), now)

    def _app_running(self, now: float) -> None:
        from pidone.pod import Pod

        self.log.info(
            "app_started",
            pid=self.run.pid,
            argv=list(self.config.argv),
            pidone_pid=os.getpid(),
            foreground=self.started.foreground,
        )
        self.run.pod = Pod(self.config, self.runner, self.stop_for, self.log)
        self.run.pod.start(now)

    # -- pidone's own reasons to stop -------------------------------------------------

    def stop_for(self, reason: str, cause: str, result: Result) -> None:
        """pidone itself stops the app, with the normal sequence, and remembers why."""
        now = time.monotonic()
        actions = self.life.on_stop_request(now, reason, cause)
        if actions is None:
            return  # a stop is under way already
        self.run.failure_detail = {"detail": result.detail, "output": result.output[-1024:]}
        self._stop_begins()
        self.log.warning("stopping_app", reason=reason, cause=cause, detail=result.detail)
        self.act(actions, now)

    def _stop_begins(self) -> None:
        """Whatever starts the stop: no more probes, no more hooks."""
        self.run.stop_pod()
        self.runner.cancel_all("shutdown began")

    def on_notify(self, fields: dict[str, str]) -> None:
        """A datagram from the app on the sd_notify socket."""
        if self.run.kind == "app" and self.run.pod is not None:
            self.run.pod.on_notify(fields)

    def snapshot(self) -> Snapshot:
        """What the status endpoint reports, read at the moment of each request."""
        return report.snapshot(self.life, self.run, self.crew.runs, self.last_exit)

    # -- actions ----------------------------------------------------------------------

    def act(self, actions: list[LifeAction], now: float) -> None:
        """Carry out the machine's actions, in order, logging each phase it enters."""
        for action in actions:
            self._do(action, now)
        shutdown = self.life.shutdown
        seen, self._phase_seen = self._phase_seen, (shutdown, shutdown.phase)
        if seen != self._phase_seen and shutdown.phase not in (Phase.RUNNING, Phase.DONE):
            self.log.info(
                "phase_entered",
                phase=shutdown.phase.value,
                elapsed_s=round(shutdown.elapsed(now), 3),
                deadline_s=round((shutdown.deadline or now) - now, 3),
                cause=shutdown.cause,
            )

    def _do(self, action: LifeAction, now: float) -> None:  # noqa: C901 - one case per action
        if isinstance(action, StartSidecar | StopSidecar | RestartSidecarLater | SidecarNotReady):
            self.crew.do(action, now)
        elif isinstance(action, StartInit):
            self._start(Run(self.config, "init", self.config.inits[action.index].argv), now)
        elif isinstance(action, StartApp):
            self._start(Run(self.config, "app", self.config.argv), now)
        elif isinstance(action, RunDrain):
            self._run_drain(action.index, action.deadline, now)
        elif isinstance(action, CancelDrain):
            # The app gone, the drain has nothing left to prepare: not a time-out.
            self.run.cancel_drain(self.runner, action.index, moot=self.run.exited)
        elif isinstance(action, SignalApp):
            self.log.info(
                "stop_signal_sent",
                signal=signal_name(action.signum),
                pid=self.run.pid,
                to=self.config.signal_to,
            )
            self.run.signal(action.signum)
            # A stopped (SIGSTOP) app could not act on its stop signal until the
            # deadline; SIGCONT lets it stop gracefully, as systemd does.
            self.run.signal(signal.SIGCONT)
        elif isinstance(action, SignalRest):
            spare = self.crew.pids
            self.run.signal_rest(action.signum, self.log, spare)
            self.loop.later(self.reap)  # exits before the signal left no SIGCHLD to wait for
        elif isinstance(action, KillAll):
            self.runner.cancel_all("killed at the deadline")
            self.life.on_killed(self.run.kill_all(self.life.shutdown, now, self.log))
            self.loop.later(self.reap)
        elif isinstance(action, Finish):
            self._run_over(now)
        elif isinstance(action, RestartLater):
            self._restart_later(action.delay, now)
        elif isinstance(action, Exit):
            self._check_oom()

    def _output_dropped(self, count: int) -> None:
        self.log.warning("output_lines_dropped", count=count)

    def pipes(self, name: str) -> tuple[int, int] | None:
        """With --prefix-output, the output pipes for a new process (None: inherited)."""
        if self.relay is None:
            return None
        try:
            return self.relay.pipes(name)
        except (OSError, ValueError) as exc:  # out of descriptors: it starts all the same
            self.log.warning("output_not_prefixed", name=name, error=str(exc))
            return None

    def _run_drain(self, index: int, deadline: float, now: float) -> None:
        step = self.config.drains[index]
        self.log.info(
            "drain_started",
            step=step.describe(),
            index=index,
            budget_s=round(deadline - now, 3),
            elapsed_s=round(self.life.shutdown.elapsed(now), 3),
        )
        run = self.run

        def done(result: Result) -> None:
            self._drain_done(run, index, result)

        run.start_drain(self.runner, index, now, done)

    def _drain_done(self, run: Run, index: int, result: Result) -> None:
        now = time.monotonic()
        record = run.drain_done(index, result, self.life.shutdown.started_at)
        log = self.log.info if record.outcome == "ok" else self.log.warning
        log("drain_finished" if record.outcome == "ok" else "drain_failed", **record.as_dict())
        if run is self.run:
            self.act(self.life.on_drain_done(now, index), now)

    # -- the end of a run -----------------------------------------------------------------

    def _run_over(self, now: float) -> None:
        """The run and everything it started are gone: the machine says what follows."""
        self.act(self.life.on_run_over(now, oom=self._check_oom()), now)

    def _restart_later(self, delay: float, now: float) -> None:
        life = self.life
        ran = now - (self.run.started_at or now)
        self.last_exit = {
            "reason": life.reason(),
            "exit_code": life.outcome.exit_code(),
            "ran_s": round(ran, 3),
        }
        fields = report.fields(life, self.run, now, life.outcome.exit_code())
        self.log.info("run_ended", **fields)
        self.log.warning(
            "restart_scheduled", **self.last_exit, delay_s=delay, restarts=life.backoff.total
        )
        self.log = self.base_log.bind(restart=life.backoff.total, last_reason=life.reason())

    def _check_oom(self) -> bool:
        """Did the memory cgroup count an OOM kill during this run?"""
        oom = self.oom.since_last()
        if oom:
            self.life.outcome.oom = True
        return oom

    def conclude(self) -> int:
        """The final report; the exit code."""
        code = self.life.exit_code()
        dropped = 0
        if self.relay is not None:  # the processes' last lines come before pidone's last
            self.relay.close()
            dropped = self.relay.dropped
        report.conclude(
            self.life,
            self.run,
            self.crew.runs,
            time.monotonic(),
            code,
            self.log,
            output_dropped=dropped,
        )
        return code


def supervise(started: Started) -> int:
    """Run the loop over the started app (or its init commands) until the end."""
    from pidone.loop import Loop

    config = started.config
    loop = Loop(started.wake_fd, frozenset({signal.SIGCHLD, *config.shutdown_signals}))
    sup: Supervisor | None = None
    try:
        sup = Supervisor(started, loop)
        if started.status is not None:
            started.status.snapshot = sup.snapshot
            started.status.register(loop.selector)
        if started.notify is not None:
            started.notify.register(loop.selector, sup.on_notify)
        sup.begin()
        loop.run(sup)
        return sup.conclude()
    except Exception as exc:  # the last resort: keep the promise, never orphan anything
        return last_resort(sup, started, exc)


# Past this point pidone may not bail out: whatever went wrong inside it, the
# app's tree is killed and reaped and the app's exit code still comes out.


def last_resort(sup: Supervisor | None, started: Started, exc: BaseException) -> int:
    """An unexpected error inside pidone: kill the tree, reap, keep the app's code."""
    import contextlib
    import sys

    error = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(Exception):
        if sup is not None:
            sup.log.error("internal_error", error=error)
        else:  # no logger (it could not be built): one plain line, where it cannot block
            from pidone import log

            target = log.direct_target(2)
            if target is not None:
                line = f"pidone: internal_error: {error}"[:1000] + "\n"
                log.write_nonblocking(target[0], line.encode())
    with contextlib.suppress(Exception):
        tree.kill_all()
    app_pid = sup.run.pid if sup is not None else started.app
    app_code = sup.life.outcome.app_code if sup is not None else None
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except OSError:  # ECHILD: nothing left
            break
        if pid == 0:  # not a blocking wait: a child stuck in the kernel must not hold PID 1
            time.sleep(0.01)
            continue
        if pid == app_pid:
            app_code = spawn.Exit(pid, status).code
    code = 70 if app_code is None else started.config.remap(app_code)  # 70: EX_SOFTWARE
    if sup is not None:
        with contextlib.suppress(Exception):
            from pidone import log  # [log] the final line passes the log's bounds

            dropped = log.closing()
            sup.log.error(
                "terminated", reason="InternalError", exit_code=code, log_lines_dropped=dropped
            )
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return code
