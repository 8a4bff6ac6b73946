"""The shutdown state machine: pure, clock-free, process-free.

The event loop feeds it events (a shutdown signal, the app's exit, a drain
finishing, "nothing is left", a deadline passing), always with the current
monotonic time, and carries out the actions it returns.  All budget
arithmetic lives here so that it can be tested without a single process.

Phases::

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
    cause: str | None = None  # "signal" | "app_exit"
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


class Backoff:
    """CrashLoopBackOff: a delay that doubles per restart, capped, reset by a good run.

    Pure arithmetic, like the rest of this module: the loop tells it how long
    the run that just ended lasted and gets the delay before the next start.
    """

    def __init__(self, delay: float, maximum: float, reset_after: float) -> None:
        self.delay = delay
        self.maximum = maximum
        self.reset_after = reset_after
        self.restarts = 0  # in a row, since the last reset
        self.total = 0

    def next_delay(self, run_duration: float) -> float:
        if run_duration >= self.reset_after:
            self.restarts = 0  # it ran long enough without failing: start over
        doublings = min(self.restarts, 64)  # past the cap anyway; 2**1024 overflows a float
        wait = min(self.delay * 2.0**doublings, self.maximum) if self.delay > 0 else 0.0
        self.restarts += 1
        self.total += 1
        return wait


def should_restart(policy: str, cause: str | None, exit_code: int, failed: bool) -> bool:
    """Whether the run that just ended is followed by another.

    A stop that came from outside (the shutdown signal) is never undone.
    """
    if policy == "never" or cause == "signal":
        return False
    return policy == "always" or exit_code != 0 or failed
