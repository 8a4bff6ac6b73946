"""The whole-life machine: init commands, runs, backoff, the end; pure, no processes."""

from __future__ import annotations

import signal

from pidone.config import Command, Config
from pidone.lifecycle import (
    Exit,
    Finish,
    Life,
    Phase,
    RestartLater,
    SignalApp,
    SignalRest,
    StartApp,
    StartInit,
)

TERM = signal.SIGTERM


def life(**kw: object) -> Life:
    return Life(Config(argv=("app",), **kw))  # type: ignore[arg-type]


def test_inits_run_in_order_then_the_app_with_a_fresh_stop_budget():
    lf = life(inits=(Command(("a",)), Command(("b",))), drains=(Command(("d",)),))
    assert lf.first() == StartInit(0)
    assert lf.shutdown.drain_count == 0  # nothing to drain while an init command runs
    assert lf.on_init_exit(0) == [StartInit(1)]
    assert lf.on_init_exit(0) == [StartApp()]
    assert lf.stage == "app"
    assert lf.shutdown.drain_count == 1


def test_failed_init_command_is_the_reason_and_its_code_is_pidones():
    lf = life(inits=(Command(("a",)),))
    assert lf.on_init_exit(3) is None
    assert lf.on_exit(1.0, 3, None) == [SignalRest(TERM)]
    assert lf.on_nothing_left(1.1) == [Finish()]
    assert lf.on_run_over(1.1, oom=False) == [Exit()]
    assert (lf.reason(), lf.exit_code()) == ("InitFailed", 3)


def test_only_the_first_shutdown_signal_starts_the_stop_a_second_forces_it():
    lf = life(grace=10.0)
    assert lf.on_shutdown_signal(1.0, TERM) == ("started", [SignalApp(TERM)])
    take, actions = lf.on_shutdown_signal(2.0, TERM)
    assert take == "again"
    assert lf.shutdown.forced
    assert lf.shutdown.phase is Phase.KILLING
    assert actions


def test_signal_during_a_stop_pidone_began_joins_it():
    lf = life(grace=10.0)
    assert lf.on_stop_request(1.0, "LivenessProbeFailed", "liveness_probe_failed")
    assert lf.on_shutdown_signal(2.0, TERM) == ("joined", [])
    assert lf.on_stop_request(3.0, "StartupProbeFailed", "startup_probe_failed") is None
    assert lf.outcome.failure == "LivenessProbeFailed"  # the first reason stands


def test_failed_run_is_restarted_after_the_backoff_and_a_signal_then_ends_it():
    lf = life(restart="on-failure", restart_delay=1.0)
    lf.on_started(0.0)
    lf.on_exit(5.0, 1, None)
    lf.on_nothing_left(5.0)
    assert lf.on_run_over(5.0, oom=False) == [RestartLater(1.0)]
    assert lf.next_deadline() == 6.0
    assert lf.on_deadline(5.5) == []
    assert lf.on_deadline(6.0) == [StartApp()]
    assert lf.outcome.app_code is None  # a new run starts with a clean outcome
    lf.on_exit(7.0, 1, None)
    lf.on_nothing_left(7.0)
    assert lf.on_run_over(7.0, oom=False) == [RestartLater(2.0)]
    assert lf.on_shutdown_signal(7.5, TERM) == ("ended_backoff", [Exit()])
    assert lf.done


def test_a_stop_from_outside_is_never_undone_by_a_restart():
    lf = life(restart="always", restart_delay=0.0)
    lf.on_stop_request(1.0, "LivenessProbeFailed", "liveness_probe_failed")
    lf.on_shutdown_signal(1.5, TERM)
    lf.on_exit(2.0, 143, TERM)
    lf.on_nothing_left(2.0)
    assert lf.on_run_over(2.0, oom=False) == [Exit()]


def test_oom_seen_at_the_end_of_the_run_is_the_reason():
    lf = life()
    lf.on_exit(1.0, 137, signal.SIGKILL)
    lf.on_nothing_left(1.0)
    lf.on_run_over(1.0, oom=True)
    assert (lf.reason(), lf.exit_code()) == ("OOMKilled", 137)


def test_app_that_cannot_start_ends_at_once_unless_init_leftovers_remain():
    lf = life()
    assert lf.on_start_failed(0.0, "not found", 127, leftovers=False) == [Exit()]
    assert (lf.reason(), lf.exit_code()) == ("StartError", 127)
    lf = life()
    assert lf.on_start_failed(0.0, "not found", 127, leftovers=True) == [SignalRest(TERM)]
    assert not lf.done


def test_exit_code_is_remapped_at_the_end():
    lf = life(remap_exit=((143, 0),))
    lf.on_exit(1.0, 143, TERM)
    assert lf.exit_code() == 0


# -- sidecars -------------------------------------------------------------------------


def with_sidecars(*, started: bool = False, **kw: object) -> Life:
    """A gated sidecar ``a`` and an ungated ``b``; with ``started``, both up and the app next."""
    from pidone.config import Sidecar

    sidecars = (Sidecar("a", ("a",), Command(("true",))), Sidecar("b", ("b",)))
    lf = life(sidecars=sidecars, **kw)
    if started:
        lf.on_sidecar_started(0.0, 0)
        lf.on_sidecar_ready(0)
        lf.on_sidecar_started(0.0, 1)
    return lf


def test_each_sidecar_gates_the_next_start_and_the_app_comes_last():
    from pidone.sidecars import StartSidecar

    lf = with_sidecars()
    assert lf.first() == StartSidecar(0)
    assert lf.on_sidecar_started(0.0, 0) == []  # a has a ready check: wait for it
    assert lf.on_sidecar_ready(0) == [StartSidecar(1)]
    assert lf.on_sidecar_started(0.1, 1) == [StartApp()]  # b has none: running is enough
    assert lf.stage == "app"
    assert lf.shutdown.drain_count == 0


def test_sidecars_stop_after_the_app_in_reverse_order_inside_the_grace():
    from pidone.sidecars import StopSidecar

    lf = with_sidecars(started=True, grace=10.0)
    lf.on_shutdown_signal(1.0, TERM)
    lf.on_exit(2.0, 0, None)
    assert lf.on_nothing_left(2.0) == [Finish()]
    assert lf.on_run_over(2.0, oom=False) == [StopSidecar(1, TERM)]
    assert lf.next_deadline() == 11.0  # the one grace, from the signal
    assert lf.on_sidecar_exit(2.5, 1, 0) == [StopSidecar(0, TERM)]
    assert lf.on_sidecar_exit(3.0, 0, 0) == [SignalRest(TERM)]
    assert lf.on_nothing_left(3.0) == [Exit()]
    assert (lf.reason(), lf.exit_code()) == ("Completed", 0)


def test_sidecars_left_at_the_deadline_are_killed_and_the_reason_says_so():
    from pidone.lifecycle import KillAll

    lf = with_sidecars(started=True, grace=5.0)
    lf.on_shutdown_signal(1.0, TERM)
    lf.on_exit(1.5, 0, None)
    lf.on_nothing_left(1.5)
    lf.on_run_over(1.5, oom=False)
    assert lf.on_deadline(6.0) == [KillAll()]
    lf.on_killed(2)
    assert lf.on_sidecar_exit(6.1, 1, 137) == []
    assert lf.on_sidecar_exit(6.1, 0, 137) == []
    assert lf.on_nothing_left(6.1) == [Exit()]
    assert (lf.reason(), lf.exit_code()) == ("Killed", 0)  # the app's code


def test_a_sidecar_exiting_while_the_app_runs_is_restarted_with_backoff():
    from pidone.sidecars import RestartSidecarLater, StartSidecar

    lf = with_sidecars(started=True, restart_delay=1.0)
    assert lf.on_sidecar_exit(5.0, 1, 1) == [RestartSidecarLater(1, 1.0)]
    assert lf.next_deadline() == 6.0
    assert lf.on_deadline(6.0) == [StartSidecar(1)]
    assert lf.stage == "app"  # the app was never touched


def test_a_sidecar_failing_before_the_app_starts_stops_the_others_and_is_the_reason():
    from pidone.sidecars import StopSidecar

    lf = with_sidecars(grace=4.0)
    lf.on_sidecar_started(0.0, 0)
    lf.on_sidecar_ready(0)
    lf.on_sidecar_started(0.1, 1)
    lf.stage = "sidecars"  # as if b were gated too and still not ready
    assert lf.on_sidecar_exit(0.2, 1, 3) == [StopSidecar(0, TERM)]
    assert lf.next_deadline() == 4.2
    assert (lf.reason(), lf.exit_code()) == ("SidecarFailed", 3)


def test_a_sidecar_never_ready_within_its_bound_fails_the_start_with_code_1():
    from pidone.sidecars import SidecarNotReady, StopSidecar

    lf = with_sidecars(sidecar_ready_timeout=2.0)
    lf.on_sidecar_started(0.0, 0)
    assert lf.next_deadline() == 2.0
    assert lf.on_deadline(1.9) == []
    assert lf.on_deadline(2.0) == [SidecarNotReady(0, 2.0), StopSidecar(0, TERM)]
    assert (lf.reason(), lf.exit_code()) == ("SidecarFailed", 1)
