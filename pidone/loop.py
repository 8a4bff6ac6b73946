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
import os
import selectors
import signal
import sys
import time
from typing import Any

from pidone import spawn
from pidone.config import Config, ExecDrain, HttpDrain, signal_name
from pidone.lifecycle import (
    Action,
    CancelDrain,
    Finish,
    KillAll,
    Phase,
    RunDrain,
    Shutdown,
    SignalApp,
    SignalRest,
)

# The longest single wait: select() refuses timeouts past the platform's
# limits (a --grace of 1e10 s is finite, valid, and would overflow it); a
# capped wait just wakes up early and recomputes.
MAX_WAIT = 86400.0

class Supervisor:
    def __init__(self, config: Config, wake_fd: int) -> None:
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.wake_r = wake_fd
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.app_pid: int | None = None
        self.shutdown = Shutdown(
            grace=config.grace,
            stop_signal=config.stop_signal,
            drain_count=len(config.drains),
            pre_stop_delay=config.pre_stop_delay,
        )
        # pid -> drain index, for the drains that are running right now.
        self.drain_pids: dict[int, int] = {}
        self.drain_started: dict[int, float] = {}
        self.self_sigpipes = 0
        self.log: Any = None
        self.report: Any = None
        self.http: Any = None
        self.oom_before: int | None = None
        self.done = False
        # SIGCHLD and the shutdown signals must never be lost.  The wakeup pipe
        # drops bytes once full (a storm of forwarded signals the loop has not
        # drained yet), so these are taken by a recording handler; their bytes
        # only wake the loop up.  See _take_critical_signals.
        self.critical = frozenset({signal.SIGCHLD, *config.shutdown_signals})
        self.pending: list[int] = []
        self.early = self._take_critical_signals()

    # -- start ----------------------------------------------------------------

    def started(self, app_pid: int, foreground: bool) -> None:
        self.app_pid = app_pid
        self._setup_reporting()
        self.log.info(
            "app_started",
            pid=app_pid,
            argv=list(self.config.argv),
            pidone_pid=os.getpid(),
            foreground=foreground,
        )

    def start_failed(self, exc: spawn.SpawnError) -> int:
        self._setup_reporting()
        self.report.start_error = str(exc)
        self.report.app_code = exc.exit_code
        self.log.error(
            "app_start_failed",
            argv=list(self.config.argv),
            error=str(exc),
            exit_code=exc.exit_code,
        )
        from pidone import report

        return self.conclude(time.monotonic(), report)

    def _setup_reporting(self) -> None:
        # Everything imported here costs start-up time, so it happens after the
        # app is already running.
        from pidone import cgroup, log, report

        self.log = log.setup(self.config.log_format, self.config.log_level, self._on_broken_pipe)
        self.report = report.Report()
        self.oom_before = cgroup.oom_kills()

    def _on_broken_pipe(self) -> None:
        self.self_sigpipes += 1

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        self._dispatch(self.early, early=True)
        while not self.done:
            timeout = None
            deadline = self.shutdown.next_deadline()
            if deadline is not None:
                timeout = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
            events = self.selector.select(timeout)
            for key, _ in events:
                if key.fd == self.wake_r:
                    self._on_signals()
                elif self.http is not None and key.fd == self.http.read_fd:
                    self._on_http_results()
            if self.pending:  # recorded, but its byte was read in an earlier batch
                self._dispatch(b"")
            deadline = self.shutdown.next_deadline()
            if deadline is not None and time.monotonic() >= deadline:
                self._act(self.shutdown.on_deadline(time.monotonic()))
        return self._finish()

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
        if self.app_pid is None or self.shutdown.app_exited:
            return
        try:
            if self.config.signal_to == "group":
                os.killpg(self.app_pid, signum)
            else:
                os.kill(self.app_pid, signum)
        except ProcessLookupError:
            return
        self.log.debug(
            "signal_forwarded",
            signal=signal_name(signum),
            pid=self.app_pid,
            to=self.config.signal_to,
        )

    def _on_shutdown_signal(self, signum: int) -> None:
        now = time.monotonic()
        first = self.shutdown.started_at is None or self.report.shutdown_signal is None
        if first:
            self.report.shutdown_signal = signum
        if self.shutdown.phase is Phase.RUNNING:
            self.log.info(
                "shutdown_started",
                signal=signal_name(signum),
                grace_s=self.config.grace,
                pre_stop_delay_s=self.config.pre_stop_delay,
                drains=[d.describe() for d in self.config.drains],
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
        for ex in exits:
            if ex.pid == self.app_pid:
                self._on_app_exit(ex, now)
            elif ex.pid in self.drain_pids:
                self._on_drain_exit(ex, now)
            else:
                self.log.debug("orphan_reaped", pid=ex.pid, exit_code=ex.code)
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
        self._feed(self.shutdown.on_app_exit, now)

    # -- drains -----------------------------------------------------------------

    def _on_drain_exit(self, ex: spawn.Exit, now: float) -> None:
        index = self.drain_pids.pop(ex.pid)
        ok = ex.code == 0
        detail = f"exit code {ex.code}" if ex.signal is None else f"signal {signal_name(ex.signal)}"
        self._drain_done(index, ok, detail, now)

    def _on_http_results(self) -> None:
        now = time.monotonic()
        for index, ok, detail in self.http.collect():
            if index in self.drain_started:
                self._drain_done(index, ok, detail, now)

    def _drain_done(
        self, index: int, ok: bool, detail: str, now: float, outcome: str | None = None
    ) -> None:
        from pidone.hooks import DrainOutcome

        started = self.drain_started.pop(index)
        step = self.config.drains[index]
        result = DrainOutcome(
            index,
            step.describe(),
            outcome or ("ok" if ok else "failed"),
            detail,
            started - (self.shutdown.started_at or started),
            now - started,
        )
        self.report.drains.append(result)
        log = self.log.info if result.outcome == "ok" else self.log.warning
        log("drain_finished" if result.outcome == "ok" else "drain_failed", **result.as_dict())
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
        if isinstance(step, ExecDrain):
            try:
                pid = spawn.spawn(step.argv)
            except spawn.SpawnError as exc:
                self._drain_done(index, False, str(exc), now)
                return
            self.drain_pids[pid] = index
        elif isinstance(step, HttpDrain):
            if self.http is None:
                from pidone.hooks import HttpResults

                self.http = HttpResults()
                self.selector.register(self.http.read_fd, selectors.EVENT_READ)
            self.http.start(index, step, deadline - now)

    def _cancel_drain(self, index: int) -> None:
        from pidone import tree

        for pid, idx in list(self.drain_pids.items()):
            if idx == index:
                tree.kill_tree(pid)
                del self.drain_pids[pid]  # its exit is reaped as an orphan
        if index in self.drain_started:
            now = time.monotonic()
            self._drain_done(
                index, False, "ran out of its share of the grace", now, outcome="timed_out"
            )

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
                self.done = True

    def _signal_app(self, signum: int) -> None:
        assert self.app_pid is not None
        with contextlib.suppress(ProcessLookupError):
            if self.config.signal_to == "group":
                os.killpg(self.app_pid, signum)
            else:
                os.kill(self.app_pid, signum)

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
        for pid in list(self.drain_pids):
            tree.kill_tree(pid)
        tree.kill_all()
        self._reap()

    # -- the end ----------------------------------------------------------------

    def _finish(self) -> int:
        from pidone import cgroup, report

        now = time.monotonic()
        oom_after = cgroup.oom_kills()
        if self.oom_before is not None and oom_after is not None and oom_after > self.oom_before:
            self.report.oom = True
        return self.conclude(now, report)

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
        self.log.info("terminated", **fields)
        return code


def supervise(config: Config, wake_fd: int, app: int | spawn.SpawnError, foreground: bool) -> int:
    """Supervise the started app (or report why it could not start); the exit code."""
    sup = Supervisor(config, wake_fd)
    if isinstance(app, spawn.SpawnError):
        return sup.start_failed(app)
    sup.started(app, foreground)
    try:
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
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except OSError:
            break
        if pid == sup.app_pid and sup.report is not None:
            sup.report.app_code = spawn.Exit(pid, status).code
    code = 70  # EX_SOFTWARE, when the app's own code is unknown
    if sup.report is not None and sup.report.app_code is not None:
        code = sup.config.remap(sup.report.app_code)
    with contextlib.suppress(Exception):
        sup.log.error("terminated", reason="InternalError", exit_code=code)
    sys.stderr.flush()
    return code
