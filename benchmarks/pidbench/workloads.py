"""The seven workloads.  Each sampler runs one init once and returns metrics.

Signal forwarding and stop latency also run the "pidone + probes" variant
(see probing.py): the same measurement with probes firing and an idle crowd
on the status port.

Samplers raise BenchError on failure; the runner records it and moves on.
Every sampler runs its container inside ``with``, so the namespace is killed
whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import procfs
from .container import monotonic_ns, reap_strays, running
from .errors import BenchError
from .probing import ProbeRig, probe_rig
from .stats import percentile

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from pathlib import Path

    from .build import Helpers
    from .container import Container
    from .inits import Init

Values = dict[str, float | list[float]]

START_TIMEOUT_S = 10.0  # app start, generous: a first Python start may be slow
ACK_TIMEOUT_S = 2.0  # one forwarded signal
SAMPLE_STEP_S = 0.005  # VmHWM sampling period while waiting for an exit
QUIET_FOR_S = 0.05  # the init counts as settled after this long without CPU use
SETTLE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run; --quick shrinks everything."""

    launch_reps: int = 20
    stop_reps: int = 15
    idle_reps: int = 3
    idle_window_s: float = 5.0
    signals: int = 200
    signal_reps: int = 3
    # The paced variant spaces its signals by a random gap in [0, this] (one
    # seeded sequence, the same for every run), so that 200 signals span
    # ~0.5 s, about ten probe periods; back to back they take ~30 ms and
    # usually overlap no probe run at all.
    signal_gap_max_s: float = 0.005
    reap_sizes: tuple[int, ...] = (2000, 10000)
    reap_reps: tuple[int, ...] = (5, 3)
    tree_size: int = 1000
    grace_s: float = 1.0
    escalation_reps: int = 4
    stalled_reps: int = 10
    dropped_lines: int = 100_000
    dropped_reps: int = 2

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            launch_reps=5,
            stop_reps=5,
            idle_reps=1,
            idle_window_s=1.0,
            signal_reps=1,
            reap_reps=(2, 1),
            escalation_reps=1,
            stalled_reps=3,
            dropped_reps=1,
        )


@dataclass(frozen=True)
class Context:
    helpers: Helpers
    env: dict[str, str]
    log_path: Path
    plan: Plan


def _container(
    ctx: Context,
    init: Init,
    app: Sequence[str],
    *,
    pid1: bool = True,
    options: Sequence[str] = (),
    stalled_stderr: bool = False,
) -> AbstractContextManager[Container]:
    return running(
        init.command(app, options),
        pid1=pid1,
        env=ctx.env,
        log_path=ctx.log_path,
        stalled_stderr=stalled_stderr,
    )


def _ns_to_ms(ns: int) -> float:
    return ns / 1e6


# -- 1. launch latency ------------------------------------------------------


def launch(ctx: Context, init: Init) -> Values:
    """Spawn of `unshare` -> the app's first instruction."""
    with _container(ctx, init, [ctx.helpers.stamp]) as box:
        started = box.start()
        stamp = box.lines.expect("stamp", START_TIMEOUT_S)
        _expect_success(box)
    return {"launch_ms": _ns_to_ms(stamp - started)}


# -- 2. round trip ----------------------------------------------------------


def round_trip(ctx: Context, init: Init) -> Values:
    """Spawn -> no-op app exits 0 -> init (and unshare) gone."""
    with _container(ctx, init, [ctx.helpers.noop]) as box:
        started = box.start(capture=False)
        _expect_success(box)
        finished = monotonic_ns()
    return {"roundtrip_ms": _ns_to_ms(finished - started)}


def wait_settled(pid: int) -> None:
    """Wait until PID 1 has stopped using CPU for QUIET_FOR_S.

    An init may keep initialising after it has spawned the app (lazy imports,
    for instance).  Steady-state workloads (idle, signals, stop) must not
    charge that one-off work to every sample, so they start once the init's
    CPU time has stopped advancing.  Bounded: a busy-looping init is measured
    as it is after SETTLE_TIMEOUT_S.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last, quiet_since = procfs.cpu_time_ns(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_STEP_S)
        now, used = time.monotonic(), procfs.cpu_time_ns(pid)
        if used != last:
            last, quiet_since = used, now
        elif now - quiet_since >= QUIET_FOR_S:
            return


def _expect_success(box: Container) -> None:
    status = box.wait_exit(START_TIMEOUT_S)
    if status != 0:
        raise BenchError(f"init exited with status {status} for an app that exits 0")


# -- 3. idle RSS and wake-ups -----------------------------------------------


def idle(ctx: Context, init: Init) -> Values:
    """PID 1's RSS and context switches per second while the app idles.

    Waiting for the init to settle excludes one-off start-up work done after
    the spawn; the window itself is a measurement interval, which is why a
    sleep is the right tool for it.
    """
    plan = ctx.plan
    with _container(ctx, init, [ctx.helpers.waiter]) as box:
        box.start()
        box.lines.expect("ready", START_TIMEOUT_S)
        pid = box.init_pid()
        wait_settled(pid)
        before = procfs.context_switches(pid)
        time.sleep(plan.idle_window_s)
        after = procfs.context_switches(pid)
        rss_kib = procfs.kib(procfs.status(pid), "VmRSS")
    return {"rss_mib": rss_kib / 1024, "wakeups_per_s": (after - before) / plan.idle_window_s}


# -- 4. signal forwarding ---------------------------------------------------


def forwarding(*, paced: bool) -> Callable[[Context, Init], Values]:
    """SIGUSR1 to PID 1 -> sigwaitinfo() returns in the app, one at a time.

    Back to back, or paced (random gaps, see Plan.signal_gap_max_s); the
    paced metrics are prefixed ``paced_`` and also count the probe runs that
    started during the window (pidone + probes only).
    """
    prefix = "paced_" if paced else ""

    def sample(ctx: Context, init: Init) -> Values:
        plan = ctx.plan
        extra: Values = {}
        with contextlib.ExitStack() as stack:
            rig = stack.enter_context(probe_rig(ctx.helpers.httpok)) if init.probes else None
            app = [ctx.helpers.sigecho]
            options = rig.options() if rig else ()
            box = stack.enter_context(_container(ctx, init, app, options=options))
            box.start()
            box.lines.expect("ready", START_TIMEOUT_S)
            pid = box.init_pid()
            runs_before = _prepare(rig, pid)
            rng = random.Random(0)  # spacing, not security
            latencies = []
            for _ in range(plan.signals):
                if paced:
                    time.sleep(rng.uniform(0, plan.signal_gap_max_s))
                latencies.append(_one_signal(box, pid))
            if rig is not None:
                rig.check_crowd()
                extra[f"{prefix}probe_runs"] = rig.probe_runs() - runs_before
            elif paced:
                extra[f"{prefix}probe_runs"] = 0
            box.signal_init(signal.SIGTERM)
            box.wait_init_gone(START_TIMEOUT_S)
        return {
            f"{prefix}signal_p50_us": percentile(latencies, 50),
            f"{prefix}signal_p99_us": percentile(latencies, 99),
            f"{prefix}signal_max_us": max(latencies),
            **extra,
        }

    return sample


def _prepare(rig: ProbeRig | None, pid: int) -> int:
    """Bring the init to its steady state before a measurement.

    Plain inits: until PID 1 stops using CPU.  With probes it never does, so:
    until each probe has run a few times, then open the idle crowd.  Returns
    the probe runs counted so far (0 without probes).
    """
    if rig is None:
        wait_settled(pid)
        return 0
    rig.wait_warm()
    rig.open_crowd()
    return rig.probe_runs()


def _one_signal(box: Container, pid: int) -> float:
    sent = monotonic_ns()
    os.kill(pid, signal.SIGUSR1)
    arrived = box.lines.expect("got", ACK_TIMEOUT_S)
    return (arrived - sent) / 1e3


# -- 5. stop latency --------------------------------------------------------


def stop(ctx: Context, init: Init) -> Values:
    """SIGTERM to PID 1 -> init gone, with an app that exits at once on TERM."""
    with contextlib.ExitStack() as stack:
        rig = stack.enter_context(probe_rig(ctx.helpers.httpok)) if init.probes else None
        options = rig.options() if rig else ()
        box = stack.enter_context(_container(ctx, init, [ctx.helpers.waiter], options=options))
        box.start()
        box.lines.expect("ready", START_TIMEOUT_S)
        _prepare(rig, box.init_pid())  # init_pid() also opens the pidfd before the clock
        if rig is not None:
            rig.check_crowd()
        sent = monotonic_ns()
        box.signal_init(signal.SIGTERM)
        gone = box.wait_init_gone(START_TIMEOUT_S)
    return {"stop_ms": _ns_to_ms(gone - sent)}


# -- 6. reaping -------------------------------------------------------------


def reaping(count: int) -> Callable[[Context, Init], Values]:
    """N zombies re-parented to PID 1 -> none left (measured by the app)."""

    def sample(ctx: Context, init: Init) -> Values:
        with _container(ctx, init, [ctx.helpers.orphans, str(count)]) as box:
            box.start()
            # The app bounds its own wait (60 s) and reports "timeout N".
            elapsed = box.lines.expect("reaped", 90.0)
            _expect_success(box)
        return {f"reap_{count}_ms": _ns_to_ms(elapsed)}

    return sample


# -- 7. escalation ----------------------------------------------------------


def escalation(pid1: bool) -> Callable[[Context, Init], Values]:
    """1,000 processes ignoring SIGTERM: deadline (TERM + grace) -> all gone."""
    mode = "pid1" if pid1 else "subreaper"

    def sample(ctx: Context, init: Init) -> Values:
        plan = ctx.plan
        options = ("--grace", f"{plan.grace_s:g}")
        app = [ctx.helpers.tree, str(plan.tree_size)]
        with _container(ctx, init, app, pid1=pid1, options=options) as box:
            box.start()
            box.lines.expect("ready", 60.0)
            pid = box.init_pid()
            wait_settled(pid)
            sent = monotonic_ns()
            box.signal_init(signal.SIGTERM)
            peak_kib, gone = _watch_until_gone(box, pid, plan.grace_s + 30.0)
        if not pid1:
            _check_no_strays()
        deadline = sent + int(plan.grace_s * 1e9)
        return {
            f"escalate_{mode}_ms": _ns_to_ms(gone - deadline),
            f"hwm_{mode}_mib": peak_kib / 1024,
        }

    return sample


def _watch_until_gone(box: Container, pid: int, timeout_s: float) -> tuple[int, int]:
    """Wait for the init to exit while sampling VmHWM (a high-water mark, so
    the last successful read is the peak); returns (peak KiB, exit stamp)."""
    peak = _hwm_kib(pid)
    deadline = time.monotonic() + timeout_s
    while not box.poll_init_gone(SAMPLE_STEP_S):
        if time.monotonic() > deadline:
            raise BenchError(f"init still alive {timeout_s:g}s after SIGTERM")
        peak = max(peak, _hwm_kib(pid))
    return peak, monotonic_ns()


def _hwm_kib(pid: int) -> int:
    try:
        return procfs.kib(procfs.status(pid), "VmHWM")
    except OSError:
        return 0


def _check_no_strays() -> None:
    """Anything the init left behind re-parents to the benchmark (subreaper)."""
    strays = reap_strays()
    if strays:
        raise BenchError(f"{strays} processes outlived the init")


# -- 8. a stalled log reader --------------------------------------------------
#
# The init's stderr is a pipe that is full before it starts and that nobody
# reads: a stalled container log driver.  pidone runs with --log-level debug
# here, so that every forwarded signal is one more log line it cannot write.


def _stalled_options(init: Init) -> tuple[str, ...]:
    return ("--log-level", "debug") if init.name == "pidone" else ()


def stalled_stop(ctx: Context, init: Init) -> Values:
    """As stop(), behind a stalled stderr: SIGTERM to PID 1 -> init gone."""
    options = _stalled_options(init)
    with _container(ctx, init, [ctx.helpers.waiter], options=options, stalled_stderr=True) as box:
        box.start()
        box.lines.expect("ready", START_TIMEOUT_S)
        wait_settled(box.init_pid())
        sent = monotonic_ns()
        box.signal_init(signal.SIGTERM)
        gone = box.wait_init_gone(START_TIMEOUT_S)
    return {"stalled_stop_ms": _ns_to_ms(gone - sent)}


def stalled_forwarding(ctx: Context, init: Init) -> Values:
    """As forwarding(paced=False), behind a stalled stderr."""
    options = _stalled_options(init)
    app = [ctx.helpers.sigecho]
    with _container(ctx, init, app, options=options, stalled_stderr=True) as box:
        box.start()
        box.lines.expect("ready", START_TIMEOUT_S)
        pid = box.init_pid()
        wait_settled(pid)
        latencies = [_one_signal(box, pid) for _ in range(ctx.plan.signals)]
        box.signal_init(signal.SIGTERM)
        box.wait_init_gone(START_TIMEOUT_S)
    return {
        "stalled_signal_p50_us": percentile(latencies, 50),
        "stalled_signal_p99_us": percentile(latencies, 99),
        "stalled_signal_max_us": max(latencies),
    }


def dropped_lines(ctx: Context, init: Init) -> Values:
    """pidone at debug behind a stalled stderr forwards N signals (N log lines).

    Each SIGUSR1 waits for the app's acknowledgement, so none coalesce and
    each is one ``signal_forwarded`` line; past the queue's bounds they are
    dropped.  Then: peak RSS, and the reader resumes to read the count of
    dropped lines from ``terminated``.
    """
    options = _stalled_options(init)
    app = [ctx.helpers.sigecho]
    with _container(ctx, init, app, options=options, stalled_stderr=True) as box:
        box.start()
        box.lines.expect("ready", START_TIMEOUT_S)
        pid = box.init_pid()
        wait_settled(pid)
        rss_before = procfs.kib(procfs.status(pid), "VmRSS")
        latencies = [_one_signal(box, pid) for _ in range(ctx.plan.dropped_lines)]
        status = procfs.status(pid)
        box.resume_stderr()
        box.signal_init(signal.SIGTERM)
        box.wait_init_gone(START_TIMEOUT_S)
        text = box.resumed_stderr(START_TIMEOUT_S).decode(errors="replace")
    final = [line for line in text.splitlines() if '"terminated"' in line]
    if not final:
        raise BenchError(f"no terminated line once the reader resumed: {text[-300:]!r}")
    return {
        "drop_rss_before_mib": rss_before / 1024,
        "drop_rss_mib": procfs.kib(status, "VmRSS") / 1024,
        "drop_hwm_mib": procfs.kib(status, "VmHWM") / 1024,
        "drop_lines": float(json.loads(final[-1])["log_lines_dropped"]),
        "drop_signal_p99_us": percentile(latencies, 99),
    }
