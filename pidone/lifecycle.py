"""The lifecycle machine: pure, clock-free, process-free.

Two machines, one inside the other:

- :class:`Life` is the whole life of the container: the init commands one
  after another, the runs of the app, the backoff between runs, the end.  It
  owns every decision the loop would otherwise scatter: is this shutdown
  signal the first?  does a failing probe still stop anything?  restart or
  exit?  with which reason and exit code (its :class:`Outcome`)?
- :class:`Shutdown` is the stop of one run, inside the grace.

The event loop feeds events (a shutdown signal, a process's exit, a drain
finishing, "nothing is left", a deadline passing), always with the current
monotonic time, and carries out the actions it returns.  All budget
arithmetic lives here so that it can be tested without a single process.

Phases of one stop::

    running -> draining -> stopping -> killing -> done
       \\______ (app exits on its own) __/

One budget: ``grace`` seconds counted from the first shutdown signal.  The
pre-stop delay and the drains share the front of it, but the app always
keeps a reserve for its own shutdown (see :func:`app_reserve`).  Each drain
gets an equal share of what is left of the drain window when it starts, so a
hung drain cannot starve the ones after it, and a quick drain hands its
unused time on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from pidone.backoff import Backoff
from pidone.config import Config
from pidone.sidecars import (
    RestartSidecarLater,
    SidecarNotReady,
    Sidecars,
    StartSidecar,
    StopSidecar,
)

# After SIGKILL nothing can resist except a process stuck in the kernel
# (uninterruptible sleep); do not let one of those hold the container hostage.
KILL_WAIT = 2.0


class Phase(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    KILLING = "killing"
    DONE = "done"


def app_reserve(grace: float) -> float:
    """The part of the grace that drains may never eat.

    kubelet keeps 2 s for the container after its preStop hook; a quarter of
    the grace below 8 s keeps the rule meaningful for short graces.
    """
    return min(2.0, grace / 4)


# Actions -------------------------------------------------------------------


@dataclass(frozen=True)
class RunDrain:
    index: int
    deadline: float


@dataclass(frozen=True)
class CancelDrain:
    """Kill drain ``index`` (with its children): its share of the budget is spent."""

    index: int


@dataclass(frozen=True)
class SignalApp:
    signum: int


@dataclass(frozen=True)
class SignalRest:
    """Send ``signum`` once to every descendant still running (the app is gone)."""

    signum: int


@dataclass(frozen=True)
class KillAll:
    pass


@dataclass(frozen=True)
class Finish:
    pass


Action = RunDrain | CancelDrain | SignalApp | SignalRest | KillAll | Finish


@dataclass(frozen=True)
class PhaseRecord:
    phase: Phase
    start: float
    end: float | None = None


@dataclass
class Shutdown:
    """What happens after the app is running, and when."""

    grace: float
    stop_signal: int
    drain_count: int = 0
    pre_stop_delay: float = 0.0

    phase: Phase = Phase.RUNNING
    started_at: float | None = None  # first shutdown signal, or the app's own exit
    deadline: float | None = None  # the hard end of the grace
    # "signal", "app_exit", or pidone's own: "post_start_failed", "watchdog",
    # "startup_probe_failed", "liveness_probe_failed".
    cause: str | None = None
    forced: bool = False
    escalated: bool = False
    app_exited: bool = False
    history: list[PhaseRecord] = field(default_factory=list)
    # Private progress of the draining phase.
    _delay_until: float | None = None
    _drain_index: int = -1
    _drain_deadline: float | None = None
    _rest_signalled: bool = False
    _kill_until: float | None = None
    _signals_seen: int = 0

    # -- queries ------------------------------------------------------------

    @property
    def drain_end(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - app_reserve(self.grace)

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`on_deadline` has something to do."""
        candidates = {
            Phase.DRAINING: (self._delay_until, self._drain_deadline),
            Phase.STOPPING: (self.deadline,),
            Phase.KILLING: (self._kill_until,),
        }.get(self.phase, ())
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started_at is None else now - self.started_at

    # -- events -------------------------------------------------------------

    def on_shutdown_signal(self, now: float) -> list[Action]:
        self._signals_seen += 1
        if self.phase is Phase.RUNNING:
            return self._begin(now, "signal")
        if self.phase in (Phase.KILLING, Phase.DONE):
            return []
        if self.cause != "signal" and self._signals_seen == 1:
            # The stop is already under way for another reason (the app ended,
            # a probe failed); the first signal from outside asks for what is
            # already happening.
            return []
        self.forced = True
        return self._kill(now)

    def on_stop_request(self, now: float, cause: str) -> list[Action]:
        """pidone itself decided to stop the app (a hook or probe failed)."""
        if self.phase is not Phase.RUNNING:
            return []
        return self._begin(now, cause)

    def _begin(self, now: float, cause: str) -> list[Action]:
        """The normal sequence: delay, drains, stop signal, all within the grace."""
        self.started_at = now
        self.deadline = now + self.grace
        self.cause = cause
        if self.grace <= 0:
            return self._kill(now)
        if self.pre_stop_delay <= 0 and self.drain_count == 0:
            self._enter(Phase.STOPPING, now)  # nothing to drain: no empty phase
            return [SignalApp(self.stop_signal)]
        self._enter(Phase.DRAINING, now)
        self._delay_until = now + min(self.pre_stop_delay, self.grace - app_reserve(self.grace))
        return self._advance_drains(now)

    def on_app_exit(self, now: float) -> list[Action]:
        self.app_exited = True
        if self.phase is Phase.RUNNING:
            self.started_at = now
            self.deadline = now + self.grace
            self.cause = "app_exit"
            if self.grace <= 0:
                return self._kill(now)
            self._enter(Phase.STOPPING, now)
            return self._signal_rest()
        if self.phase is Phase.DRAINING:
            # Draining prepares the app's stop; with the app gone it is moot.
            actions: list[Action] = []
            if self._drain_deadline is not None:
                actions.append(CancelDrain(self._drain_index))
            self._enter(Phase.STOPPING, now)
            return actions + self._signal_rest()
        if self.phase is Phase.STOPPING:
            return self._signal_rest()
        return []

    def on_drain_done(self, now: float, index: int) -> list[Action]:
        if self.phase is not Phase.DRAINING or index != self._drain_index:
            return []
        self._drain_deadline = None
        return self._advance_drains(now)

    def on_nothing_left(self, now: float) -> list[Action]:
        """Every process but pidone is gone (waitpid said ECHILD)."""
        if not self.app_exited or self.phase in (Phase.RUNNING, Phase.DONE):
            return []
        return self._finish(now)

    def on_deadline(self, now: float) -> list[Action]:
        if self.phase is Phase.DRAINING:
            if self._drain_deadline is not None and now >= self._drain_deadline:
                index = self._drain_index
                self._drain_deadline = None
                return [CancelDrain(index), *self._advance_drains(now)]
            return self._advance_drains(now)
        if self.phase is Phase.STOPPING and self.deadline is not None and now >= self.deadline:
            return self._kill(now)
        if self.phase is Phase.KILLING and self._kill_until is not None and now >= self._kill_until:
            return self._finish(now)
        return []

    # -- transitions --------------------------------------------------------

    def _advance_drains(self, now: float) -> list[Action]:
        if self._delay_until is not None:
            if now < self._delay_until:
                return []
            self._delay_until = None  # the pre-stop delay is over
        if self._drain_deadline is not None:
            return []  # a drain is still running within its share
        drain_end = self.drain_end
        assert drain_end is not None
        self._drain_index += 1
        remaining = self.drain_count - self._drain_index
        if remaining > 0 and now < drain_end:
            self._drain_deadline = now + (drain_end - now) / remaining
            return [RunDrain(self._drain_index, self._drain_deadline)]
        self._drain_index = self.drain_count
        self._enter(Phase.STOPPING, now)
        return [SignalApp(self.stop_signal)]

    def _signal_rest(self) -> list[Action]:
        if self._rest_signalled:
            return []
        self._rest_signalled = True
        return [SignalRest(self.stop_signal)]

    def _kill(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.phase is Phase.DRAINING and self._drain_deadline is not None:
            actions.append(CancelDrain(self._drain_index))
            self._drain_deadline = None
        self.escalated = True
        self._kill_until = now + KILL_WAIT
        self._enter(Phase.KILLING, now)
        return [*actions, KillAll()]

    def _finish(self, now: float) -> list[Action]:
        self._enter(Phase.DONE, now)
        return [Finish()]

    def _enter(self, phase: Phase, now: float) -> None:
        if self.history and self.history[-1].end is None:
            last = self.history[-1]
            self.history[-1] = PhaseRecord(last.phase, last.start, now)
        self.phase = phase
        if phase is not Phase.DONE:
            self.history.append(PhaseRecord(phase, now))


def should_restart(policy: str, cause: str | None, exit_code: int, failed: bool) -> bool:
    """Whether the run that just ended is followed by another.

    A stop that came from outside (the shutdown signal) is never undone.
    """
    if policy == "never" or cause == "signal":
        return False
    return policy == "always" or exit_code != 0 or failed


# The whole life ---------------------------------------------------------------

# init commands -> sidecars (each gated) -> app -> (backoff -> app)... -> stopping
# the sidecars in reverse order -> done.
Stage = Literal["init", "sidecars", "app", "backoff", "stopping", "done"]
# How a shutdown signal was taken: it began the stop, joined a stop pidone had
# already begun, forced the stop under way, ended the backoff, or came too late.
SignalTake = Literal["started", "joined", "again", "ended_backoff", "late"]


@dataclass(frozen=True)
class StartInit:
    index: int


@dataclass(frozen=True)
class StartApp:
    pass


@dataclass(frozen=True)
class RestartLater:
    """The run is over and another follows after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True)
class Exit:
    """The life is over: pidone reports and exits (see :meth:`Life.exit_code`)."""


LifeAction = (
    Action
    | StartInit
    | StartApp
    | RestartLater
    | Exit
    | StartSidecar
    | StopSidecar
    | RestartSidecarLater
    | SidecarNotReady
)


@dataclass
class Outcome:
    """What is known of how one run ended, and the reason and code that follow.

    Reasons, in order of what explains the end best (the first that holds wins):
    InitFailed, StartError, OOMKilled, pidone's own reason (a failed hook or
    probe, the watchdog, a sidecar that failed the start), Killed, Signaled,
    Completed, Error.
    """

    app_code: int | None = None  # the shell's view: the code, or 128+N
    app_signal: int | None = None
    oom: bool = False
    start_error: str | None = None
    failure: str | None = None  # a reason of pidone's own deciding
    failed_step: int | None = None  # the index of the init command that failed
    failed_sidecar: int | None = None  # the sidecar that failed the start
    killed: int = 0  # processes SIGKILLed at the deadline
    escalated: bool = False  # sidecars were SIGKILLed at the deadline
    forced: bool = False  # a second shutdown signal killed the sidecars

    def reason(self, shutdown: Shutdown) -> str:
        ladder = (
            (self.failure == "InitFailed", "InitFailed"),
            (self.start_error is not None, "StartError"),
            (self.oom, "OOMKilled"),
            (self.failure is not None, self.failure),
            (
                shutdown.forced
                or self.forced
                or ((shutdown.escalated or self.escalated) and self.killed > 0),
                "Killed",
            ),
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


class Life:
    """Init commands, sidecars, runs of the app, backoff, the end: every decision, no I/O."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stage: Stage = "init" if config.inits else "sidecars" if config.sidecars else "app"
        self.init_index = 0
        self.shutdown = self._new_shutdown()
        self.outcome = Outcome()
        self.shutdown_signal: int | None = None  # the first from outside; never undone
        self.run_started_at: float | None = None
        self.restart_at: float | None = None
        self.backoff = Backoff(config.restart_delay, config.restart_delay_max, config.restart_reset)
        self.sidecars = Sidecars(config)
        self._gate = 0  # the sidecar the start waits for
        self._stop_deadline: float | None = None  # stopping the sidecars: the grace's end
        self._kill_until: float | None = None

    def _new_shutdown(self) -> Shutdown:
        if self.stage != "app":
            # Before the app runs there is nothing to drain: a shutdown signal
            # only stops what runs, within the grace.
            return Shutdown(grace=self.config.grace, stop_signal=self.config.stop_signal)
        return Shutdown(
            grace=self.config.grace,
            stop_signal=self.config.stop_signal,
            drain_count=len(self.config.drains),
            pre_stop_delay=self.config.pre_stop_delay,
        )

    # -- queries ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stage == "done"

    def next_deadline(self) -> float | None:
        times = [self.sidecars.next_deadline(restarts=self.stage in ("app", "backoff"))]
        if self.stage == "backoff":
            times.append(self.restart_at)
        elif self.stage == "stopping":
            times.append(self._kill_until if self._kill_until is not None else self._stop_deadline)
        else:
            times.append(self.shutdown.next_deadline())
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def first(self) -> LifeAction:
        """What to start first."""
        if self.stage == "init":
            return StartInit(0)
        return StartSidecar(0) if self.stage == "sidecars" else StartApp()

    # -- the app and the init commands ----------------------------------------------

    def on_started(self, now: float) -> None:
        """The process of the current stage runs (an init command or the app)."""
        self.run_started_at = now

    def on_start_failed(
        self, now: float, error: str, exit_code: int, *, leftovers: bool
    ) -> list[LifeAction]:
        """The current stage's process could not be executed."""
        self.outcome.start_error = error
        self.outcome.app_code = exit_code
        if self.stage == "init":
            self.outcome.failure = "InitFailed"
            self.outcome.failed_step = self.init_index
        if leftovers:
            # An init command that already ran left something behind: it gets
            # the stop signal and the grace, as an app's leftovers would.
            return list(self.shutdown.on_app_exit(now))
        return self._end(now)

    def on_init_exit(self, code: int) -> list[LifeAction] | None:
        """An init command ended; the next step, or None when it failed (then: on_exit)."""
        if code != 0 or self.shutdown.phase is not Phase.RUNNING:
            if self.shutdown.phase is Phase.RUNNING:
                self.outcome.failure = "InitFailed"
            self.outcome.failed_step = self.init_index
            return None
        self.init_index += 1
        if self.init_index < len(self.config.inits):
            return [StartInit(self.init_index)]
        if self.sidecars:
            self.stage = "sidecars"
            return [StartSidecar(0)]
        self.stage = "app"
        self.shutdown = self._new_shutdown()
        return [StartApp()]

    def on_exit(self, now: float, code: int, app_signal: int | None) -> list[LifeAction]:
        """The supervised process (the app, or a failed init command) is gone."""
        self.outcome.app_code = code
        self.outcome.app_signal = app_signal
        return list(self.shutdown.on_app_exit(now))

    def on_shutdown_signal(self, now: float, signum: int) -> tuple[SignalTake, list[LifeAction]]:
        first = self.shutdown_signal is None
        if first:
            self.shutdown_signal = signum
        if self.stage == "backoff":  # the app does not run: end now
            self.restart_at = None
            return "ended_backoff", self._end(now)
        if self.stage in ("sidecars", "stopping"):
            return self._signal_between_runs(now, signum, first=first)
        phase = self.shutdown.phase
        take: SignalTake = (
            "started"
            if phase is Phase.RUNNING
            else "late"
            if phase is Phase.DONE
            else "joined"
            if first
            else "again"
        )
        return take, list(self.shutdown.on_shutdown_signal(now))

    def _signal_between_runs(
        self, now: float, signum: int, *, first: bool
    ) -> tuple[SignalTake, list[LifeAction]]:
        """A shutdown signal while only sidecars run: before the app, or after it."""
        if self.stage == "sidecars":  # the app never started: stop the sidecars started
            self.outcome.app_code, self.outcome.app_signal = 128 + signum, signum
            return "started", self._end(now)
        if first:
            return "joined", []  # the sidecars are being stopped already
        if self._kill_until is not None:
            return "again", []
        self.outcome.forced = True
        return "again", self._kill_sidecars(now)

    def on_stop_request(self, now: float, reason: str, cause: str) -> list[LifeAction] | None:
        """pidone stops the app for its own reason; None when a stop is under way already."""
        if self.stage != "app" or self.shutdown.phase is not Phase.RUNNING:
            return None
        self.outcome.failure = reason
        return list(self.shutdown.on_stop_request(now, cause))

    def on_drain_done(self, now: float, index: int) -> list[LifeAction]:
        return list(self.shutdown.on_drain_done(now, index))

    def on_nothing_left(self, now: float) -> list[LifeAction]:
        """No process is left but the sidecars still running (waitpid's ECHILD, if none)."""
        if self.stage == "stopping":
            if self.sidecars.any_running:
                return []
            self.stage = "done"
            return [Exit()]
        return list(self.shutdown.on_nothing_left(now))

    def on_killed(self, count: int) -> None:
        self.outcome.killed += count

    def on_deadline(self, now: float) -> list[LifeAction]:
        actions: list[LifeAction] = []
        if self.stage in ("app", "backoff"):
            actions += self.sidecars.due_restarts(now)
        if self.stage == "sidecars":
            index = self.sidecars.gate_expired(now)
            if index is not None:  # it never got ready: the start fails
                timeout = self.config.sidecar_ready_timeout
                return [SidecarNotReady(index, timeout), *self._sidecar_failed(now, index, 1)]
        if self.stage == "stopping":
            if self._kill_until is not None and now >= self._kill_until:
                self.stage = "done"  # only processes stuck in the kernel resist SIGKILL
                return [Exit()]
            deadline = self._stop_deadline
            if self._kill_until is None and deadline is not None and now >= deadline:
                self.outcome.escalated = True
                return self._kill_sidecars(now)
            return []
        if self.stage == "backoff":
            if self.restart_at is not None and now >= self.restart_at:
                self.restart_at = None
                self.stage = "app"
                self.shutdown = self._new_shutdown()
                self.outcome = Outcome()
                actions.append(StartApp())
            return actions
        return actions + list(self.shutdown.on_deadline(now))

    def on_run_over(self, now: float, *, oom: bool) -> list[LifeAction]:
        """The run and everything it started are gone (after Finish): restart, or end."""
        self.outcome.oom = self.outcome.oom or oom
        # A shutdown signal from outside is never undone, even when it arrived
        # while pidone was already stopping the app for its own reasons.
        cause = "signal" if self.shutdown_signal is not None else self.shutdown.cause
        restart = (
            self.stage == "app"
            and self.outcome.start_error is None
            and should_restart(
                self.config.restart,
                cause,
                self.outcome.exit_code(),
                self.outcome.failure is not None,
            )
        )
        if not restart:
            return self._end(now)
        ran = now - (self.run_started_at if self.run_started_at is not None else now)
        delay = self.backoff.next_delay(ran)
        self.stage = "backoff"
        self.restart_at = now + delay
        return [RestartLater(delay)]

    # -- sidecars -------------------------------------------------------------------

    def on_sidecar_started(self, now: float, index: int) -> list[LifeAction]:
        gated = self.stage == "sidecars" and index == self._gate
        if self.sidecars.started(index, now, gated=gated) and gated:
            return self._gate_passed()
        return []

    def on_sidecar_ready(self, index: int) -> list[LifeAction]:
        if self.sidecars.passed_check(index) and self.stage == "sidecars" and index == self._gate:
            return self._gate_passed()
        return []

    def on_sidecar_exit(self, now: float, index: int, code: int) -> list[LifeAction]:
        """A sidecar ended, or (code 126/127) could not be started at all."""
        self.sidecars.exited(index)
        if self.stage == "sidecars":
            return self._sidecar_failed(now, index, code)
        if self.stage == "stopping":
            return self._next_stop()
        return [self.sidecars.restart_later(index, now)] if self.restarts_sidecars else []

    @property
    def restarts_sidecars(self) -> bool:
        """Between the start and the stop, a sidecar that exits is restarted."""
        return self.stage == "backoff" or (
            self.stage == "app" and self.shutdown.phase is Phase.RUNNING
        )

    def _gate_passed(self) -> list[LifeAction]:
        self._gate += 1
        if self._gate < len(self.sidecars):
            return [StartSidecar(self._gate)]
        self.stage = "app"
        self.shutdown = self._new_shutdown()
        return [StartApp()]

    def _sidecar_failed(self, now: float, index: int, code: int) -> list[LifeAction]:
        self.outcome.failure = "SidecarFailed"
        self.outcome.failed_sidecar = index
        self.outcome.app_code = code
        return self._end(now)

    def _next_stop(self) -> list[LifeAction]:
        if self._kill_until is not None:
            return []  # everything was SIGKILLed: only the reaping is left
        stops: list[LifeAction] = list(self.sidecars.next_stop())
        if stops or self.sidecars.any_running:
            return stops
        # The last sidecar is gone: whatever the sidecars left behind gets the
        # stop signal too, and pidone ends once nothing is left.
        return [SignalRest(self.config.stop_signal)]

    def _kill_sidecars(self, now: float) -> list[LifeAction]:
        self._kill_until = now + KILL_WAIT
        return [KillAll()]

    # -- the end ----------------------------------------------------------------------

    def exit_code(self) -> int:
        return self.config.remap(self.outcome.exit_code())

    def reason(self) -> str:
        return self.outcome.reason(self.shutdown)

    def _end(self, now: float) -> list[LifeAction]:
        """No more runs of the app: stop the sidecars (after it, in reverse order), then exit."""
        if not self.sidecars.any_running:
            self.stage = "done"
            return [Exit()]
        self.stage = "stopping"
        # All inside the one grace: the app's stop began it, or it begins now.
        deadline = self.shutdown.deadline
        self._stop_deadline = deadline if deadline is not None else now + self.config.grace
        if now >= self._stop_deadline:
            self.outcome.escalated = True
            return self._kill_sidecars(now)
        return self._next_stop()
