"""What Kubernetes adds around a running container, for one run of the app.

Post-start hooks (in order, beside the app, each bounded), the probes (after
the hooks succeed), the sd_notify messages with their watchdog, and the
readiness all of that adds up to.  A :class:`Pod` lives as long as one run of
the app; a restart gets a new one.  When something here fails, the pod does
not stop anything itself: it asks the supervisor (``stop_for``), which asks
the lifecycle machine and runs the normal shutdown sequence.  Results reach it
through the loop's queue, never inside the call that started or cancelled
the action.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pidone.actions import Result, Runner
from pidone.config import Config

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from pidone.probes import Probes

StopFor = Callable[[str, str, Result], None]


class Pod:
    def __init__(
        self, config: Config, runner: Runner, stop_for: StopFor, log: FilteringBoundLogger
    ) -> None:
        self.config = config
        self._runner = runner
        self._stop_for = stop_for
        self._log = log
        self.hooks: list[dict[str, object]] = []  # each post-start hook's outcome, in order
        self.hooks_ok: bool | None = None  # None while they run
        self.probes: Probes | None = None  # when probes are configured
        self.notified_ready = False
        self.notify_status: str | None = None
        self.watchdog_deadline: float | None = None
        self.stopped = False

    def start(self, now: float) -> None:
        """The app is running: hooks now, probes once they succeeded, the watchdog."""
        if self.config.watchdog is not None:
            self.watchdog_deadline = now + self.config.watchdog
        if self.config.probes:
            from pidone.probes import Probes

            self.probes = Probes(self.config, self._runner, self._on_unhealthy, self._log)
        self._next_post_start(0)

    def stop(self) -> None:
        """The shutdown began: no more hooks, probes or watchdog."""
        self.stopped = True
        if self.probes is not None:
            self.probes.stop()
        self.watchdog_deadline = None  # (running hooks: the supervisor cancels every action)

    @property
    def live(self) -> bool:
        return self.probes is None or self.probes.live

    @property
    def ready(self) -> bool:
        return (
            self.hooks_ok is True
            and (self.probes is None or self.probes.ready)
            and (self.notified_ready or not self.config.notify)
        )

    def status(self) -> dict[str, object]:
        probes = self.probes
        return {
            "post_start_hooks": self.hooks,
            "notify_status": self.notify_status,
            "probes": {k: v.as_dict() for k, v in probes.states.items()} if probes else {},
        }

    # -- timers --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times = [self.watchdog_deadline, self.probes.next_deadline() if self.probes else None]
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def on_deadline(self, now: float) -> None:
        if self.watchdog_deadline is not None and now >= self.watchdog_deadline:
            self.watchdog_deadline = None
            silence = f"no WATCHDOG=1 for {self.config.watchdog:g}s"
            self._log.warning("Unhealthy", probe="watchdog", healthy=False, detail=silence)
            self._stop_for("WatchdogTimeout", "watchdog", Result(False, silence, "", 0.0))
        if self.probes is not None:
            deadline = self.probes.next_deadline()
            if deadline is not None and now >= deadline:
                self.probes.on_deadline(now)

    # -- post-start hooks ----------------------------------------------------------

    def _next_post_start(self, index: int) -> None:
        if index == len(self.config.post_start):
            self.hooks_ok = True
            if self.probes is not None:
                self.probes.start(time.monotonic())
            return
        step = self.config.post_start[index]
        self._log.info(
            "post_start_started",
            index=index,
            hook=step.describe(),
            timeout_s=self.config.hook_timeout,
        )
        done = functools.partial(self._post_start_done, index)
        self._runner.start(step, self.config.hook_timeout, done)

    def _post_start_done(self, index: int, result: Result) -> None:
        outcome = {
            "hook": self.config.post_start[index].describe(),
            "ok": result.ok,
            "detail": result.detail,
            "duration_s": round(result.duration, 3),
        }
        self.hooks.append(outcome)
        if self.stopped:
            return  # cancelled by the shutdown; nothing to decide any more
        if result.ok:
            self._log.info("post_start_finished", **outcome)
            self._next_post_start(index + 1)
            return
        self.hooks_ok = False
        self._log.warning("FailedPostStartHook", **outcome)
        self._stop_for("PostStartHookFailed", "post_start_failed", result)

    def _on_unhealthy(self, kind: str, result: Result) -> None:
        reason = "StartupProbeFailed" if kind == "startup" else "LivenessProbeFailed"
        self._stop_for(reason, f"{kind}_probe_failed", result)

    # -- sd_notify -------------------------------------------------------------------

    def on_notify(self, fields: dict[str, str]) -> None:
        """A datagram from the app on the sd_notify socket."""
        if fields.get("READY") == "1" and not self.notified_ready:
            self.notified_ready = True
            self._log.info("app_notified_ready")
        status = fields.get("STATUS", self.notify_status)
        if status is not None and status[:512] != self.notify_status:
            self.notify_status = status[:512]
            self._log.info("app_status", status=self.notify_status)
        if fields.get("STOPPING") == "1":
            self._log.info("app_notified_stopping")
        if fields.get("WATCHDOG") == "1" and self.watchdog_deadline is not None:
            assert self.config.watchdog is not None
            self.watchdog_deadline = time.monotonic() + self.config.watchdog
