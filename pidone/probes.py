"""Startup, readiness and liveness probes, with Kubernetes' semantics.

- The startup probe runs first; until it succeeds once, the other two wait.
  ``failure_threshold`` failures in a row mean the app never came up.
- Liveness: ``failure_threshold`` failures in a row mean the app is stuck.
- Readiness only moves the ready state: not ready until ``success_threshold``
  successes in a row, unready again after ``failure_threshold`` failures.

Each probe is due every ``period`` seconds from its initial delay; a probe
still running when it is due again is not started twice.  The runs go
through :class:`pidone.actions.Runner` (commands as children, HTTP and TCP on
short threads), so a slow or hung probe never blocks the loop; its time
limit is ``timeout``.  Without probes this module schedules nothing, and an
idle pidone stays asleep.

A run that pidone could not even start, for want of a resource of its own
(a thread at a pids limit, a descriptor, a free worker slot: the runner's
``Result.errored``), is logged as ``probe_errored`` and not counted either
way, as the kubelet throws away a probe that errored: a readiness probe is
not made unready, and a healthy app is never stopped as unhealthy, because
pidone ran short of something.  The next run is due at the next period.

:class:`ProbeState` holds the counting and the timing and touches nothing;
:class:`Probes` connects the states to the runner and to the loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pidone.actions import Result, Runner
from pidone.config import Config, Probe

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger


class ProbeState:
    """Thresholds and timing of one probe: pure arithmetic, no I/O."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.next_run: float | None = None  # None: not scheduled (gated or stopped)
        self.successes = 0
        self.failures = 0
        self.healthy: bool | None = None  # None until the thresholds say otherwise
        self.running = False
        self.last: Result | None = None
        self.runs = 0
        self.errors = 0  # runs that could not be started (not counted)

    def schedule(self, now: float) -> None:
        self.next_run = now + self.probe.initial_delay

    def due(self, now: float) -> bool:
        return self.next_run is not None and now >= self.next_run and not self.running

    def started(self, now: float) -> None:
        self.running = True
        self.runs += 1
        assert self.next_run is not None
        # Every period from the last due time, as kubelet's ticker does, but
        # never in the past: a late start does not cause a burst of runs.
        self.next_run = max(self.next_run + self.probe.period, now)

    def errored(self, result: Result) -> None:
        """A run pidone could not start: it ends, and counts for nothing."""
        self.running = False
        self.errors += 1
        self.last = result

    def record(self, result: Result) -> bool | None:
        """Count one result; return the new health when a threshold flips it."""
        self.running = False
        self.last = result
        if result.ok:
            self.successes += 1
            self.failures = 0
            if self.healthy is not True and self.successes >= self.probe.success_threshold:
                self.healthy = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.healthy is not False and self.failures >= self.probe.failure_threshold:
                self.healthy = False
                return False
        return None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "target": self.probe.check.describe(),
            "healthy": self.healthy,
            "runs": self.runs,
            "successes_in_a_row": self.successes,
            "failures_in_a_row": self.failures,
            "errored_runs": self.errors,
        }
        if self.last is not None:
            out["last"] = {
                "ok": self.last.ok,
                "detail": self.last.detail,
                "output": self.last.output[-512:],
                "duration_s": round(self.last.duration, 3),
                "errored": self.last.errored,
            }
        return out


OnUnhealthy = Callable[[str, Result], None]


class Probes:
    """Runs the configured probes and reports startup/liveness failures to the loop."""

    def __init__(
        self, config: Config, runner: Runner, on_unhealthy: OnUnhealthy, log: FilteringBoundLogger
    ) -> None:
        self._runner = runner
        self._on_unhealthy = on_unhealthy
        self._log = log
        self.states = {probe.kind: ProbeState(probe) for probe in config.probes}
        self._tokens: dict[int, str] = {}
        self.stopped = False

    @property
    def started_up(self) -> bool:
        startup = self.states.get("startup")
        return startup is None or startup.healthy is True

    @property
    def ready(self) -> bool:
        readiness = self.states.get("readiness")
        return self.started_up and (readiness is None or readiness.healthy is True)

    @property
    def live(self) -> bool:
        liveness = self.states.get("liveness")
        return liveness is None or liveness.healthy is not False

    def start(self, now: float) -> None:
        """The app is up (and its post-start hooks succeeded): begin probing."""
        first = ("startup",) if "startup" in self.states else ("readiness", "liveness")
        for kind in first:
            if kind in self.states:
                self.states[kind].schedule(now)

    def stop(self) -> None:
        """Shutdown has begun: no more probes, and none left running."""
        self.stopped = True
        for state in self.states.values():
            state.next_run = None
        for token in list(self._tokens):
            self._runner.cancel(token, "shutdown began")

    def next_deadline(self) -> float | None:
        # A probe still running is not due, whatever its next_run says: counting
        # it would make the loop spin until the run ends.
        runs = [
            s.next_run for s in self.states.values() if s.next_run is not None and not s.running
        ]
        return min(runs) if runs else None

    def on_deadline(self, now: float) -> None:
        for kind, state in self.states.items():
            if state.due(now):
                state.started(now)
                probe = state.probe
                done = functools.partial(self._done, kind)
                token = self._runner.start(probe.check, probe.timeout, done, capture=True)
                if self._runner.running(token):
                    self._tokens[token] = kind

    def _done(self, kind: str, result: Result) -> None:
        self._tokens = {t: k for t, k in self._tokens.items() if self._runner.running(t)}
        if self.stopped:
            return
        state = self.states[kind]
        if result.errored:
            state.errored(result)
            self._log.warning("probe_errored", probe=kind, detail=result.detail)
            return
        flipped = state.record(result)
        if flipped is None:
            return
        fields = {"probe": kind, "healthy": flipped, "detail": result.detail}
        if flipped:
            self._log.info("probe_succeeded", **fields)
            if kind == "startup":
                state.next_run = None  # done for good; the others take over
                for other in ("readiness", "liveness"):
                    if other in self.states:
                        self.states[other].schedule(time.monotonic())
            return
        self._log.warning("Unhealthy", **fields, output=result.output[-1024:])
        if kind in ("startup", "liveness"):
            state.next_run = None
            self._on_unhealthy(kind, result)
