"""Sidecars, with Kubernetes' native-sidecar semantics: pure state, no I/O.

Kubernetes (1.28+) runs init containers with ``restartPolicy: Always`` as
sidecars: each starts in order after the init commands and must be started
(and pass its startup probe) before the next one starts; the app starts
last.  A sidecar that exits while the pod runs is restarted with the
CrashLoop backoff, whatever the app's own policy.  When the pod stops, the
app stops first; then the sidecars, in reverse order, each only after the
one started after it has exited, all inside the one grace.

:class:`Sidecars` keeps each sidecar's state (running, ready, restart
timing, the start gate's bound) and answers :class:`pidone.lifecycle.Life`'s
questions; Life owns the stages and every decision.  The supervisor carries
out the actions (``StartSidecar``, ``StopSidecar``) and feeds back starts,
ready checks and exits.
"""

from __future__ import annotations

from dataclasses import dataclass

from pidone.backoff import Backoff
from pidone.config import Config


@dataclass(frozen=True)
class StartSidecar:
    index: int


@dataclass(frozen=True)
class StopSidecar:
    index: int
    signum: int


@dataclass(frozen=True)
class RestartSidecarLater:
    index: int
    delay: float


@dataclass(frozen=True)
class SidecarNotReady:
    """Sidecar ``index`` was not ready within ``timeout``: the start fails (said, then done)."""

    index: int
    timeout: float


@dataclass
class SidecarState:
    running: bool = False
    ready: bool = False  # passed its ready check (or has none) since its last start
    stopping: bool = False  # its stop signal is sent
    started_at: float | None = None
    restart_at: float | None = None
    ready_by: float | None = None  # the start gate's bound, while the start waits for it


class Sidecars:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.states = [SidecarState() for _ in config.sidecars]
        self._backoffs = [
            Backoff(
                config.restart_delay if spec.restart_delay is None else spec.restart_delay,
                config.restart_delay_max
                if spec.restart_delay_max is None
                else spec.restart_delay_max,
                config.restart_reset,
            )
            for spec in config.sidecars
        ]

    def __len__(self) -> int:
        return len(self.states)

    @property
    def any_running(self) -> bool:
        return any(s.running for s in self.states)

    @property
    def all_ready(self) -> bool:
        return all(s.running and s.ready for s in self.states)

    def next_deadline(self, *, restarts: bool) -> float | None:
        times = [s.ready_by for s in self.states]
        if restarts:
            times += [s.restart_at for s in self.states]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    # -- one sidecar --------------------------------------------------------------

    def started(self, index: int, now: float, *, gated: bool) -> bool:
        """It runs; whether it is ready at once (no ready check)."""
        state = self.states[index]
        state.running, state.stopping, state.started_at = True, False, now
        state.ready = self.config.sidecars[index].ready is None
        if gated and not state.ready:
            state.ready_by = now + self.config.sidecar_ready_timeout
        return state.ready

    def passed_check(self, index: int) -> bool:
        """Its ready check passed; False when that no longer means anything."""
        state = self.states[index]
        if not state.running or state.ready:
            return False
        state.ready, state.ready_by = True, None
        return True

    def exited(self, index: int) -> SidecarState:
        state = self.states[index]
        state.running = state.ready = state.stopping = False
        state.ready_by = None
        return state

    def restart_later(self, index: int, now: float) -> RestartSidecarLater:
        state = self.states[index]
        ran = now - (state.started_at if state.started_at is not None else now)
        delay = self._backoffs[index].next_delay(ran)
        state.restart_at = now + delay
        return RestartSidecarLater(index, delay)

    # -- deadlines ------------------------------------------------------------------

    def due_restarts(self, now: float) -> list[StartSidecar]:
        due = []
        for index, state in enumerate(self.states):
            if state.restart_at is not None and now >= state.restart_at:
                state.restart_at = None
                due.append(StartSidecar(index))
        return due

    def gate_expired(self, now: float) -> int | None:
        """The sidecar whose ready bound has passed, if any."""
        for index, state in enumerate(self.states):
            if state.ready_by is not None and now >= state.ready_by:
                state.ready_by = None
                return index
        return None

    # -- the stop -------------------------------------------------------------------

    def next_stop(self) -> list[StopSidecar]:
        """Reverse order: the last one running gets its signal once the later ones are gone."""
        for state in self.states:
            state.restart_at = None  # nothing is restarted once the stop began
            state.ready_by = None
        running = [i for i, s in enumerate(self.states) if s.running]
        if not running:
            return []
        last = running[-1]
        if self.states[last].stopping:
            return []  # still waiting for it to exit
        self.states[last].stopping = True
        return [StopSidecar(last, self.config.sidecars[last].stop_signal)]
