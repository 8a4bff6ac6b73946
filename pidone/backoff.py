"""CrashLoopBackOff arithmetic, shared by the app's restarts and each sidecar's."""

from __future__ import annotations


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
