"""One run of a supervised process: an init command, or one start of the app.

A :class:`Run` holds what exists only while that process does, and what is
reported of it afterwards: its pid, its pod (hooks, probes, sd_notify), its
drains, the processes killed at its deadline, why pidone stopped it.  A
restart is a new Run; nothing has to be reset by hand.

It carries out the actions of the lifecycle machine that concern its own
process (signal it, start or cancel a drain) and decides nothing: the
decisions are :class:`pidone.lifecycle.Life`'s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Literal

from pidone import spawn
from pidone.actions import DrainOutcome, Result, Runner
from pidone.config import NOTIFY, signal_name

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from structlog.typing import FilteringBoundLogger

    from pidone.config import Config, Sidecar
    from pidone.lifecycle import Shutdown
    from pidone.pod import Pod
    from pidone.tree import ProcessInfo

# How many killed processes are logged one by one; the rest as a count.
KILLED_LOGGED = 50

RunKind = Literal["init", "app"]
DrainResult = Literal["ok", "failed", "timed_out", "cancelled"]

# Why a drain is cancelled: the machine says its share is spent, or the app
# exited and the drain has nothing left to prepare.
DRAIN_TIMED_OUT = "ran out of its share of the grace"
DRAIN_MOOT = "cancelled: the app exited"


def close_pipes(stdio: tuple[int, int] | None) -> None:
    """pidone's copies of a child's output pipes: only the child may hold them open."""
    for fd in stdio or ():
        with contextlib.suppress(OSError):
            os.close(fd)


class Run:
    """The process of one stage, and what is reported of it."""

    def __init__(self, config: Config, kind: RunKind, argv: tuple[str, ...]) -> None:
        self.config = config
        self.kind = kind
        self.argv = argv
        self.pid: int | None = None
        self.started_at: float | None = None
        self.exited = False
        self.pod: Pod | None = None
        self.drains: list[DrainOutcome] = []  # finished drains, in order
        self._drain_tokens: dict[int, int] = {}  # drain index -> the runner's token
        self._drain_started: dict[int, float] = {}
        self._drain_cancelled: dict[int, DrainResult] = {}  # why pidone cancelled it
        self.killed: list[ProcessInfo] = []  # SIGKILLed at the deadline
        self.failure_detail: dict[str, str] | None = None  # the failing hook's or probe's words

    @property
    def hooks(self) -> list[dict[str, object]]:
        """Each post-start hook's outcome, so far."""
        return self.pod.hooks if self.pod is not None else []

    def start(
        self,
        preset: int | spawn.SpawnError | None,
        env: dict[str, str] | None,
        tty: int | None,
        now: float,
        stdio: tuple[int, int] | None = None,
    ) -> spawn.SpawnError | None:
        """Start the process, or adopt the one boot started; the error if it cannot run.

        ``stdio``: the write ends of its output pipes (``--prefix-output``), closed here.
        """
        try:
            if isinstance(preset, spawn.SpawnError):
                raise preset
            if preset is not None:
                self.pid = preset
            elif self.kind == "app":  # as --user; init commands keep pidone's user
                self.pid = spawn.spawn_app(self.config, tty_fd=tty, env=env, stdio=stdio)
            else:
                self.pid = spawn.spawn(self.argv, tty_fd=tty, env=env, stdio=stdio)
        except spawn.SpawnError as exc:
            return exc
        finally:
            close_pipes(stdio)
        self.started_at = now
        return None

    def signal(self, signum: int) -> bool:
        """Signal the process, or its group with --signal-to group; False if it is gone."""
        if self.pid is None or self.exited:
            return False
        try:
            if self.config.signal_to == "group" and self.kind == "app":
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop_pod(self) -> None:
        """The stop began: no more hooks, probes or watchdog for this run."""
        if self.pod is not None:
            self.pod.stop()

    def signal_rest(
        self, signum: int, log: FilteringBoundLogger, spare: Collection[int] = ()
    ) -> None:
        """The process is gone: what it left behind gets ``signum`` once.

        ``spare``: the sidecars, which are stopped after it, each in turn.
        """
        if not spawn.has_children():
            return  # the common case: it left nothing behind
        from pidone import tree

        rest = tree.descendants_but(spare) if spare else tree.descendants()
        if rest:
            log.info(
                "leftovers_signalled",
                signal=signal_name(signum),
                count=len(rest),
                pids=rest[:KILLED_LOGGED],
            )
            if spare:
                tree.signal_pids(rest, signum)
            else:
                tree.signal_rest(signum)

    def kill_all(self, shutdown: Shutdown, now: float, log: FilteringBoundLogger) -> int:
        """The deadline: SIGKILL everything left; how many processes that was."""
        from pidone import tree

        # [actions] Kill first: only what is logged is described, within a
        # bound, and the SIGKILL goes out at once to everything else
        # (tree.kill_described).  Describing all 10,000 processes of a big
        # tree first made the kill land seconds after the deadline, while
        # ``escalated`` still said it was on time.
        alive = tree.kill_described(KILLED_LOGGED)
        # The line says when the kill was done, not ``now`` (when it was decided).
        killed_at = max(now, time.monotonic())
        self.killed += alive
        for info in alive[:KILLED_LOGGED]:
            log.warning(
                "process_killed", pid=info.pid, cmdline=info.cmdline[:500], age_s=info.age_s
            )
        if len(alive) > KILLED_LOGGED:
            log.warning("process_killed_more", count=len(alive) - KILLED_LOGGED)
        log.warning(
            "escalated",
            count=len(alive),
            forced=shutdown.forced,
            elapsed_s=round(shutdown.elapsed(killed_at), 3),
        )
        return len(alive)

    # -- drains ---------------------------------------------------------------

    def start_drain(
        self, runner: Runner, index: int, now: float, done: Callable[[Result], None]
    ) -> None:
        """Start drain ``index``; the lifecycle machine owns its deadline (CancelDrain)."""
        self._drain_started[index] = now
        self._drain_tokens[index] = runner.start(self.config.drains[index], None, done)

    def cancel_drain(self, runner: Runner, index: int, *, moot: bool) -> None:
        token = self._drain_tokens.get(index)
        if token is not None:
            self._drain_cancelled[index] = "cancelled" if moot else "timed_out"
            runner.cancel(token, DRAIN_MOOT if moot else DRAIN_TIMED_OUT)

    def drain_done(self, index: int, result: Result, shutdown_at: float | None) -> DrainOutcome:
        """Record how drain ``index`` ended."""
        self._drain_tokens.pop(index, None)
        started = self._drain_started.pop(index)
        outcome: DrainResult = "ok" if result.ok else "failed"
        outcome = self._drain_cancelled.pop(index, outcome)
        record = DrainOutcome(
            self.config.drains[index].describe(),
            outcome,
            result.detail,
            started - (shutdown_at if shutdown_at is not None else started),
            result.duration,
        )
        self.drains.append(record)
        return record


class SidecarRun:
    """One sidecar across its restarts: its process now, and what is reported of it."""

    def __init__(self, spec: Sidecar) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.generation = 0  # one more per start: a late ready check of an old one is moot
        self.restarts = 0
        self.last_exit: dict[str, object] | None = None
        self.check_at: float | None = None  # the next ready check, while one is due
        self._stop_sent: float | None = None
        self.stop_s: float | None = None

    def start(
        self, now: float, env: dict[str, str] | None, stdio: tuple[int, int] | None = None
    ) -> spawn.SpawnError | None:
        """Start it (in a process group of its own, its signals at default)."""
        try:
            self.pid = spawn.spawn(self.spec.argv, env=env, stdio=stdio)
        except spawn.SpawnError as exc:
            return exc
        finally:
            close_pipes(stdio)
        self.generation += 1
        self._stop_sent = None
        # Notify: no checks, the sidecar says it (see Supervisor.on_sidecar_notify).
        polled = self.spec.ready is not None and self.spec.ready != NOTIFY
        self.check_at = now if polled else None
        return None

    def stop(self, signum: int, now: float) -> None:
        """Its stop signal, and SIGCONT so that a stopped sidecar can act on it."""
        self._stop_sent = now
        for sig in (signum, signal.SIGCONT):
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.pid, sig)

    def exited(self, ex: spawn.Exit, now: float) -> dict[str, object]:
        """Record its end; the fields to log."""
        self.pid, self.check_at = None, None
        end: dict[str, object] = {"exit_code": ex.code}
        if ex.signal is not None:
            end["signal"] = signal_name(ex.signal)
        if self._stop_sent is not None:
            self.stop_s = round(now - self._stop_sent, 3)
            end["stop_s"] = self.stop_s
        self.last_exit = end
        return {"name": self.spec.name, "pid": ex.pid, **end, "restarts": self.restarts}

    def summary(self) -> dict[str, object]:
        """Its line in the ``terminated`` event."""
        return {"name": self.spec.name, **(self.last_exit or {}), "restarts": self.restarts}
