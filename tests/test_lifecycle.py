"""The shutdown state machine, without a single process: events in, actions out."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pidone.lifecycle import (
    KILL_WAIT,
    CancelDrain,
    Finish,
    KillAll,
    Phase,
    RunDrain,
    Shutdown,
    SignalApp,
    SignalRest,
    app_reserve,
)

TERM = signal.SIGTERM


def test_reserve_is_two_seconds_or_a_quarter_of_short_graces():
    assert app_reserve(30) == 2.0
    assert app_reserve(8) == 2.0
    assert app_reserve(4) == 1.0
    assert app_reserve(0) == 0.0


def test_without_drains_the_stop_signal_goes_out_at_once_and_kill_at_the_deadline():
    s = Shutdown(grace=5, stop_signal=TERM)
    assert s.on_shutdown_signal(100.0) == [SignalApp(TERM)]
    assert s.phase is Phase.STOPPING
    assert s.next_deadline() == 105.0
    assert s.on_deadline(104.9) == []
    assert s.on_deadline(105.0) == [KillAll()]
    assert s.escalated
    assert s.next_deadline() == 105.0 + KILL_WAIT


def test_graceful_exit_finishes_the_moment_nothing_is_left():
    s = Shutdown(grace=5, stop_signal=TERM)
    s.on_shutdown_signal(0.0)
    assert s.on_app_exit(0.5) == [SignalRest(TERM)]
    assert s.on_nothing_left(0.6) == [Finish()]
    assert s.phase is Phase.DONE
    assert not s.escalated


def test_leftovers_get_the_stop_signal_once():
    s = Shutdown(grace=5, stop_signal=TERM)
    s.on_shutdown_signal(0.0)
    assert s.on_app_exit(0.5) == [SignalRest(TERM)]
    assert s.on_app_exit(0.6) == []


def test_drains_run_in_order_each_with_a_fair_share_then_the_stop_signal():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=2)
    # drain window: 10 - 2 = 8 s, two drains: the first may use half.
    assert s.on_shutdown_signal(0.0) == [RunDrain(0, 4.0)]
    # It finishes at 1 s: the second gets all of what is left of the window.
    assert s.on_drain_done(1.0, 0) == [RunDrain(1, 8.0)]
    assert s.on_drain_done(2.0, 1) == [SignalApp(TERM)]
    assert s.next_deadline() == 10.0


def test_a_hung_drain_is_cancelled_at_its_share_and_the_next_one_still_runs():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=2)
    s.on_shutdown_signal(0.0)
    assert s.next_deadline() == 4.0
    assert s.on_deadline(4.0) == [CancelDrain(0), RunDrain(1, 8.0)]
    assert s.on_deadline(8.0) == [CancelDrain(1), SignalApp(TERM)]
    # A late report of the cancelled drain changes nothing.
    assert s.on_drain_done(8.1, 0) == []


def test_pre_stop_delay_comes_first_and_out_of_the_same_budget():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=1, pre_stop_delay=3)
    assert s.on_shutdown_signal(0.0) == []
    assert s.next_deadline() == 3.0
    assert s.on_deadline(3.0) == [RunDrain(0, 8.0)]


def test_pre_stop_delay_never_eats_the_apps_reserve():
    s = Shutdown(grace=4, stop_signal=TERM, pre_stop_delay=60)
    s.on_shutdown_signal(0.0)
    assert s.next_deadline() == 3.0  # 4 s grace, 1 s reserve
    assert s.on_deadline(3.0) == [SignalApp(TERM)]


def test_second_shutdown_signal_forces_the_end():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=1)
    s.on_shutdown_signal(0.0)
    assert s.on_shutdown_signal(1.0) == [CancelDrain(0), KillAll()]
    assert s.forced
    assert s.phase is Phase.KILLING


def test_grace_zero_kills_at_once_without_drains():
    s = Shutdown(grace=0, stop_signal=TERM, drain_count=3, pre_stop_delay=5)
    assert s.on_shutdown_signal(0.0) == [KillAll()]


def test_app_exit_on_its_own_gives_leftovers_the_grace():
    s = Shutdown(grace=3, stop_signal=TERM)
    assert s.on_app_exit(10.0) == [SignalRest(TERM)]
    assert s.cause == "app_exit"
    assert s.next_deadline() == 13.0
    # The first outside shutdown signal asks for what is already happening.
    assert s.on_shutdown_signal(11.0) == []
    assert s.on_deadline(13.0) == [KillAll()]


def test_app_exit_during_drain_cancels_it_and_moves_on():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=2)
    s.on_shutdown_signal(0.0)
    assert s.on_app_exit(1.0) == [CancelDrain(0), SignalRest(TERM)]
    assert s.phase is Phase.STOPPING


def test_killing_finishes_when_everything_is_reaped_or_after_kill_wait():
    s = Shutdown(grace=1, stop_signal=TERM)
    s.on_shutdown_signal(0.0)
    s.on_deadline(1.0)
    assert s.on_nothing_left(1.1) == []  # the app has not been reaped yet
    s.on_app_exit(1.1)
    assert s.on_nothing_left(1.1) == [Finish()]
    stuck = Shutdown(grace=1, stop_signal=TERM)
    stuck.on_shutdown_signal(0.0)
    stuck.on_deadline(1.0)
    assert stuck.on_deadline(1.0 + KILL_WAIT) == [Finish()]


def test_history_records_each_phase_with_its_times():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=1)
    s.on_shutdown_signal(0.0)
    s.on_drain_done(2.0, 0)
    s.on_app_exit(3.0)
    s.on_nothing_left(3.0)
    assert [(r.phase, r.start, r.end) for r in s.history] == [
        (Phase.DRAINING, 0.0, 2.0),
        (Phase.STOPPING, 2.0, 3.0),
    ]


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["signal", "app_exit", "drain_done", "nothing_left", "deadline"]),
        st.floats(min_value=0, max_value=5, allow_nan=False),
        st.integers(min_value=0, max_value=4),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    grace=st.floats(min_value=0, max_value=100, allow_nan=False),
    delay=st.floats(min_value=0, max_value=100, allow_nan=False),
    drains=st.integers(min_value=0, max_value=4),
    events=EVENTS,
)
def test_no_event_sequence_breaks_the_budget(grace, delay, drains, events):  # noqa: C901
    """Whatever happens, waits are never negative and nothing is scheduled past the end."""
    s = Shutdown(grace=grace, stop_signal=TERM, drain_count=drains, pre_stop_delay=delay)
    now = 0.0
    for kind, step, index in events:
        now += step
        if kind == "deadline" and s.next_deadline() is not None:
            now = max(now, s.next_deadline())
        if kind == "signal":
            actions = s.on_shutdown_signal(now)
        elif kind == "app_exit":
            actions = s.on_app_exit(now)
        elif kind == "drain_done":
            actions = s.on_drain_done(now, index)
        elif kind == "nothing_left":
            actions = s.on_nothing_left(now)
        else:
            actions = s.on_deadline(now)
        for action in actions:
            if isinstance(action, RunDrain):
                assert s.started_at is not None
                assert s.deadline is not None
                assert now <= action.deadline <= s.deadline - app_reserve(grace) + 1e-9
        nxt = s.next_deadline()
        if nxt is not None and s.phase is not Phase.KILLING:
            assert s.deadline is not None
            assert nxt <= s.deadline + 1e-9
        if s.deadline is not None and s.phase is not Phase.DONE:
            assert nxt is None or nxt >= s.started_at


@pytest.mark.parametrize("grace", [0.5, 1, 8, 30])
def test_drain_window_plus_reserve_is_the_grace(grace):
    s = Shutdown(grace=grace, stop_signal=TERM, drain_count=1)
    s.on_shutdown_signal(0.0)
    assert s.drain_end == pytest.approx(grace - app_reserve(grace))


def test_stop_request_runs_the_normal_sequence_with_its_cause():
    s = Shutdown(grace=10, stop_signal=TERM, drain_count=1)
    assert s.on_stop_request(0.0, "liveness_probe_failed") == [RunDrain(0, 8.0)]
    assert s.cause == "liveness_probe_failed"
    # The first outside signal asks for what is happening already; a second forces.
    assert s.on_shutdown_signal(1.0) == []
    assert s.on_shutdown_signal(2.0) == [CancelDrain(0), KillAll()]


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_good_run():
    from pidone.lifecycle import Backoff

    b = Backoff(delay=10, maximum=300, reset_after=600)
    assert [b.next_delay(1) for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert b.next_delay(600) == 10
    assert b.next_delay(5) == 20
    assert b.total == 9


@pytest.mark.parametrize(
    ("policy", "cause", "code", "failed", "expected"),
    [
        ("never", "app_exit", 1, False, False),
        ("on-failure", "app_exit", 0, False, False),
        ("on-failure", "app_exit", 3, False, True),
        ("on-failure", "liveness_probe_failed", 0, True, True),
        ("always", "app_exit", 0, False, True),
        ("always", "signal", 1, False, False),
    ],
)
def test_restart_policy_decides_from_cause_code_and_failure(policy, cause, code, failed, expected):
    from pidone.lifecycle import should_restart

    assert should_restart(policy, cause, code, failed) is expected


def test_backoff_survives_thousands_of_restarts_in_a_row():
    from pidone.lifecycle import Backoff

    b = Backoff(delay=0.1, maximum=1, reset_after=600)
    delays = [b.next_delay(0) for _ in range(3000)]
    assert delays[-1] == 1
