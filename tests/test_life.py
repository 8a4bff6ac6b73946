"""The whole-life machine: init commands, runs, backoff, the end; pure, no processes."""

from __future__ import annotations

import signal

from pidone.config import Config, ExecDrain
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
    lf = life(inits=(ExecDrain(("a",)), ExecDrain(("b",))), drains=(ExecDrain(("d",)),))
    assert lf.first() == StartInit(0)
    assert lf.shutdown.drain_count == 0  # nothing to drain while an init command runs
    assert lf.on_init_exit(0) == [StartInit(1)]
    assert lf.on_init_exit(0) == [StartApp()]
    assert lf.stage == "app"
    assert lf.shutdown.drain_count == 1


def test_failed_init_command_is_the_reason_and_its_code_is_pidones():
    lf = life(inits=(ExecDrain(("a",)),))
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
