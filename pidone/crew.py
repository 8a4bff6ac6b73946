"""The sidecars' processes: started, checked for readiness, told to stop, reaped.

:class:`Crew` carries out the sidecar actions of the lifecycle machine
(``StartSidecar``, ``StopSidecar``, ``RestartSidecarLater``) and feeds back
what happens to the processes (started, ready, exited); the decisions stay
in :class:`pidone.lifecycle.Life` and its :class:`pidone.sidecars.Sidecars`.
One :class:`pidone.run.SidecarRun` per sidecar holds its process across
restarts.

Readiness comes one of two ways: a check (``http(s)://``, ``tcp://``,
``exec:``) run through the action runner every :data:`READY_PERIOD` until it
passes, each run bounded by :data:`READY_TIMEOUT`; or ``notify``, a
``NOTIFY_SOCKET`` of the sidecar's own, on which ``READY=1`` is waited for
in the loop's selector.  Once a sidecar is ready nothing polls it.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Protocol

from pidone import spawn
from pidone.config import NOTIFY, describe_ready, signal_name
from pidone.run import SidecarRun
from pidone.sidecars import RestartSidecarLater, SidecarNotReady, StartSidecar, StopSidecar

if TYPE_CHECKING:
    from collections.abc import Sequence

    from structlog.typing import FilteringBoundLogger

    from pidone.actions import Result, Runner
    from pidone.config import Check, Config
    from pidone.lifecycle import Life, LifeAction
    from pidone.loop import Loop
    from pidone.notify import NotifySocket

# Ready checks of a sidecar the start waits for: this often, each this long at most.
READY_PERIOD = 0.2
READY_TIMEOUT = 1.0
# A sidecar whose notify socket could not be made cannot be told ready: it cannot start.
_NO_NOTIFY = spawn.SpawnError("sd_notify socket", errno.EMFILE)

SidecarAction = StartSidecar | StopSidecar | RestartSidecarLater | SidecarNotReady


class Host(Protocol):
    """What the crew needs of the supervisor."""

    @property
    def life(self) -> Life: ...

    @property
    def runner(self) -> Runner: ...

    @property
    def loop(self) -> Loop: ...

    @property
    def log(self) -> FilteringBoundLogger: ...

    def act(self, actions: list[LifeAction], now: float) -> None: ...

    def pipes(self, name: str) -> tuple[int, int] | None: ...


class Crew:
    def __init__(self, config: Config, host: Host) -> None:
        self.runs = [SidecarRun(spec) for spec in config.sidecars]
        self._host = host
        self._notify: dict[int, NotifySocket] = {}  # the sidecars that use sd_notify

    @property
    def pids(self) -> list[int]:
        return [side.pid for side in self.runs if side.pid is not None]

    def index_of(self, pid: int) -> int | None:
        return next((i for i, side in enumerate(self.runs) if side.pid == pid), None)

    def only_sidecars_left(self) -> bool:
        """Every child of pidone is a sidecar: for the app's stop, nothing is left."""
        running = set(self.pids)
        if not running:
            return False
        from pidone import tree

        return set(tree.children()) <= running

    # -- actions ------------------------------------------------------------------

    def do(self, action: SidecarAction, now: float) -> None:
        host = self._host
        side = self.runs[action.index]
        if isinstance(action, StartSidecar):
            self._start(action.index, now)
        elif isinstance(action, StopSidecar):
            host.log.info(
                "sidecar_stopping",
                name=side.spec.name,
                pid=side.pid,
                signal=signal_name(action.signum),
                elapsed_s=round(host.life.shutdown.elapsed(now), 3),
            )
            side.stop(action.signum, now)
        elif isinstance(action, SidecarNotReady):
            host.log.error(
                "sidecar_not_ready",
                name=side.spec.name,
                check=describe_ready(side.spec.ready),
                timeout_s=action.timeout,
            )
        else:
            side.restarts += 1
            host.log.warning(
                "sidecar_restart_scheduled",
                name=side.spec.name,
                delay_s=action.delay,
                restarts=side.restarts,
            )

    def _start(self, index: int, now: float) -> None:
        host, side = self._host, self.runs[index]
        error: spawn.SpawnError | None = None
        env = None
        if side.spec.ready == NOTIFY:
            sock = self._notify_socket(index)
            if sock is None:
                error = _NO_NOTIFY
            else:
                env = {**os.environ, **sock.env()}
        if error is None:
            error = side.start(now, env, host.pipes(side.spec.name))
        if error is not None:
            host.log.error(
                "sidecar_exited", name=side.spec.name, error=str(error), exit_code=error.exit_code
            )
            side.last_exit = {"exit_code": error.exit_code, "error": str(error)}
            host.act(host.life.on_sidecar_exit(now, index, error.exit_code), now)
            return
        host.log.info(
            "sidecar_started",
            name=side.spec.name,
            pid=side.pid,
            argv=list(side.spec.argv),
            restarts=side.restarts,
        )
        if side.spec.ready is None:  # running is all it promises
            host.log.info("sidecar_ready", name=side.spec.name, check=None)
        host.act(host.life.on_sidecar_started(now, index), now)

    # -- readiness --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The next ready check due (the crew is one of the loop's timers)."""
        due = [s.check_at for s in self.runs if s.check_at is not None]
        return min(due) if due else None

    def on_deadline(self, now: float) -> None:
        for index, side in enumerate(self.runs):
            check = side.spec.ready
            if side.check_at is None or now < side.check_at:
                continue
            side.check_at = None  # none again until this one has its result
            if check is not None and check != NOTIFY:
                self._check(index, check, side.generation)

    def _check(self, index: int, check: Check, generation: int) -> None:
        host = self._host

        def done(result: Result) -> None:
            side = self.runs[index]
            if side.generation != generation or side.pid is None:
                return  # that process is gone; its successor has checks of its own
            now = time.monotonic()
            if not result.ok:
                side.check_at = now + READY_PERIOD
                return
            host.log.info("sidecar_ready", name=side.spec.name, check=check.describe())
            host.act(host.life.on_sidecar_ready(index), now)

        host.runner.start(check, READY_TIMEOUT, done)

    def _notify_socket(self, index: int) -> NotifySocket | None:
        """The sidecar's own sd_notify socket (made once); None if none can be made."""
        if index in self._notify:
            return self._notify[index]
        from pidone.notify import NotifySocket

        try:
            sock = NotifySocket()
        except OSError as exc:  # out of file descriptors: this start fails, not pidone
            name = self.runs[index].spec.name
            self._host.log.error("sidecar_notify_failed", name=name, error=str(exc))
            return None
        selector = self._host.loop.selector
        sock.register(selector, lambda fields: self._on_notify(index, fields))
        self._notify[index] = sock
        return sock

    def _on_notify(self, index: int, fields: dict[str, str]) -> None:
        host, side = self._host, self.runs[index]
        if fields.get("READY") != "1" or side.pid is None:
            return
        if host.life.sidecars.states[index].ready:
            return  # said again: nothing new
        host.log.info("sidecar_ready", name=side.spec.name, check=NOTIFY)
        host.act(host.life.on_sidecar_ready(index), time.monotonic())

    # -- exits ------------------------------------------------------------------------

    def exited(self, exits: Sequence[tuple[int, spawn.Exit]], now: float) -> None:
        host = self._host
        for index, ex in exits:
            side = self.runs[index]
            stopping = host.life.sidecars.states[index].stopping
            fields = side.exited(ex, now)
            if stopping:
                host.log.info("sidecar_stopped", **fields)
            elif host.life.restarts_sidecars:
                host.log.warning("sidecar_exited", **fields)  # unexpected: it is restarted
            else:
                host.log.info("sidecar_exited", **fields)  # the stop is under way
            host.act(host.life.on_sidecar_exit(now, index, ex.code), now)
