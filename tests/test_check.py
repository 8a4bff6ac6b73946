"""pidone --check: every setting with its source, the shutdown plan, every error at once."""

from __future__ import annotations

import io
import signal
from pathlib import Path

import pytest
from harness import CLEAN_ENV, pidone_cli

from pidone import check, cli
from pidone.config import Command, Config, HttpCall
from pidone.lifecycle import Phase, RunDrain, Shutdown, SignalApp
from pidone.options import CONFIG_ENVVAR
from pidone.settings import resolve, wants_check

pytestmark = pytest.mark.timeout(60)

ENV = CLEAN_ENV


def rows(stdout: str) -> dict[str, list[str]]:
    """The settings table: option -> [value, source...]."""
    table = stdout.split("settings:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line.split()[1:] for line in table.splitlines() if line[2] != " "}


def timeline(stdout: str) -> list[str]:
    plan = stdout.split("shutdown plan", 1)[1].split("\n\n", 1)[0]
    return [" ".join(line.split()) for line in plan.splitlines()[1:]]


# The plan ------------------------------------------------------------------------


def steps(config: Config) -> list[tuple[float, float | None, str]]:
    return [
        (round(s.start, 6), s.duration and round(s.duration, 6), s.what) for s in check.plan(config)
    ]


def test_plan_grace_10_delay_2_two_drains():
    config = Config(
        argv=("app",),
        grace=10.0,
        pre_stop_delay=2.0,
        drains=(Command(("a",)), HttpCall("POST", "http://h/d")),
    )
    assert steps(config) == [
        (0.0, None, "shutdown signal received"),
        (0.0, 2.0, "pre-stop delay"),
        (2.0, 3.0, "drain 1/2: a"),  # window 10 - 2 = 8; (8 - 2) / 2
        (5.0, 3.0, "drain 2/2: POST http://h/d"),  # (8 - 5) / 1
        (8.0, 2.0, "stop signal SIGTERM to the app; its time to exit (reserve 2s)"),
        (10.0, 2.0, "kill deadline: SIGKILL to everything still running"),
        (12.0, None, "pidone exits at the latest"),
    ]


def test_plan_matches_the_state_machine_when_drains_use_their_whole_share():
    config = Config(
        argv=("app",),
        grace=3.0,
        pre_stop_delay=0.5,
        drains=(Command(("a",)), Command(("b",)), Command(("c",))),
    )
    machine = Shutdown(3.0, signal.SIGTERM, drain_count=3, pre_stop_delay=0.5)
    actions = machine.on_shutdown_signal(0.0)
    assert actions == []
    starts, now = [], 0.5
    actions = machine.on_deadline(now)
    while not any(isinstance(a, SignalApp) for a in actions):
        (run,) = [a for a in actions if isinstance(a, RunDrain)]
        starts.append((now, run.deadline - now))
        now = run.deadline
        actions = machine.on_deadline(now)
    assert machine.phase is Phase.STOPPING
    planned = [(s.start, s.duration) for s in check.plan(config) if s.what.startswith("drain ")]
    assert len(planned) == len(starts) == 3
    for (start, share), (expected_start, expected_share) in zip(planned, starts, strict=True):
        assert start == pytest.approx(expected_start)
        assert share == pytest.approx(expected_share)
    (stop,) = [s for s in check.plan(config) if s.what.startswith("stop signal")]
    assert stop.start == pytest.approx(now)
    assert stop.start + stop.duration == pytest.approx(3.0)


def test_plan_short_grace_cut_delay_and_zero_grace():
    cut = Config(argv=("app",), grace=4.0, pre_stop_delay=5.0, drains=(Command(("a",)),))
    assert steps(cut)[1:4] == [
        (0.0, 3.0, "pre-stop delay (cut from 5s)"),  # reserve min(2, 4/4) = 1
        (3.0, 0.0, "drains 1-1 skipped: no time left"),
        (3.0, 1.0, "stop signal SIGTERM to the app; its time to exit (reserve 1s)"),
    ]
    plain = Config(argv=("app",), grace=8.0, signal_to="group", stop_signal=signal.SIGUSR1)
    assert steps(plain)[1] == (
        0.0,
        8.0,
        "stop signal SIGUSR1 to the app's process group; its time to exit (reserve 2s)",
    )
    zero = Config(argv=("app",), grace=0.0, drains=(Command(("a",)),))
    assert [s[2] for s in steps(zero)][1] == "grace 0: SIGKILL to everything at once, no drains"
    assert "grace is 0: the pre-stop delay and the drains never run" in check.warnings(zero)


# The command line ----------------------------------------------------------------


def test_check_shows_sources_and_the_timeline(tmp_path):
    path = tmp_path / "pidone.toml"
    path.write_text("# shutdown\ngrace = 10\ndrain = ['sh -c \"echo bye\"']\n")
    marker = tmp_path / "started"
    done = pidone_cli(
        "--pre-stop-delay",
        "2",
        "--check",
        "--config",
        str(path),
        "--",
        "sh",
        "-c",
        f"touch {marker}",
        env={"PIDONE_DRAIN_HTTP": "POST http://127.0.0.1:8080/drain"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert not marker.exists()
    assert done.stdout.startswith("pidone --check: configuration OK\n")
    table = rows(done.stdout)
    assert table["config"] == [str(path), "flag"]
    assert table["grace"] == ["10s", "file", f"{path}:2"]
    assert table["pre-stop-delay"] == ["2s", "flag"]
    assert table["drain"] == ["sh", "-c", "'echo", "bye'", "file", f"{path}:3"]
    assert table["drain-http"] == [
        "POST",
        "http://127.0.0.1:8080/drain",
        "env",
        "PIDONE_DRAIN_HTTP",
    ]
    assert table["stop-signal"] == ["SIGTERM", "default"]
    assert table["shutdown-signal"] == ["SIGTERM", "default"]
    assert f"command: sh -c touch {marker}" in done.stdout
    assert timeline(done.stdout) == [
        "+ 0.000s shutdown signal received",
        "+ 0.000s 2.000s pre-stop delay",
        "+ 2.000s 3.000s drain 1/2: sh -c 'echo bye'",
        "+ 5.000s 3.000s drain 2/2: POST http://127.0.0.1:8080/drain",
        "+ 8.000s 2.000s stop signal SIGTERM to the app; its time to exit (reserve 2s)",
        "+ 10.000s 2.000s kill deadline: SIGKILL to everything still running",
        "+ 12.000s pidone exits at the latest",
    ]


def test_check_without_command_and_with_the_config_from_env(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[probes.readiness]\ntarget = 'tcp://127.0.0.1:8080'\nsuccess-threshold = 2\n")
    done = pidone_cli("--check", env={CONFIG_ENVVAR: str(path)})
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["config"] == [str(path), "env", CONFIG_ENVVAR]
    assert table["readiness-probe"] == ["tcp://127.0.0.1:8080", "file", f"{path}:2"]
    assert table["readiness-success-threshold"] == ["2", "file", f"{path}:3"]
    assert "command: (none)" in done.stdout
    assert "no COMMAND given: only the options were checked" in done.stdout


def test_check_lists_every_error_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("grace = true\ndrain = 5\n[probes.liveness]\nperod = 3\n")
    marker = tmp_path / "started"
    done = pidone_cli(
        "--bogus",
        "--check",
        "--config",
        str(path),
        "--stop-signal",
        "KILL",
        "--drain",
        "'x",
        "--",
        "sh",
        "-c",
        f"touch {marker}",
        env={"PIDONE_LOG_LEVEL": "loud"},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert not marker.exists()
    assert done.stderr.splitlines() == [
        "pidone: error: No such option: '--bogus'.",
        f"pidone: error: {path}:1: key 'grace': expected a number or a string, got a boolean",
        (
            f"pidone: error: {path}:2: key 'drain': expected a string or an array of strings, "
            "got an integer"
        ),
        (
            f"pidone: error: {path}:4: key 'probes.liveness.perod': unknown key "
            "(did you mean 'period'?)"
        ),
        (
            "pidone: error: Invalid value for PIDONE_LOG_LEVEL (--log-level): "
            "'loud' is not one of debug, info, warning, error"
        ),
        "pidone: error: Invalid value for '--stop-signal': SIGKILL cannot be used here",
        (
            "pidone: error: Invalid value for '--drain': \"'x\" does not parse as a command: "
            "No closing quotation"
        ),
        "pidone --check: 7 errors",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--grace"], "Option '--grace' requires an argument."),
        (["--check=yes", "app"], "Option '--check' does not take a value."),
        (["--config", "/nonexistent.toml"], "/nonexistent.toml: cannot read config file: "),
        (["--remap-exit", "300:1", "app"], "Invalid value for '--remap-exit': '300:1': exit codes"),
    ],
)
def test_check_single_errors(args, error):
    out, err = io.StringIO(), io.StringIO()
    assert check.run(["--check", *args], {}, out, err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().splitlines()[0].startswith(f"pidone: error: {error}")


def test_check_is_handled_by_cli_parse_too(capsys):
    assert cli.parse(["--check", "--grace", "5", "--", "true"]) == 0
    assert rows(capsys.readouterr().out)["grace"] == ["5s", "flag"]


def test_help_wins_over_check():
    assert not wants_check(["--check", "--help"])
    assert not wants_check(["--grace", "--check", "app"])  # --check is --grace's value here
    assert not wants_check(["app", "--check"])  # the app's own option
    assert not wants_check(["--", "--check"])
    assert wants_check(["--bogus", "--check", "--grace=1"])
    done = pidone_cli("--check", "--help")
    assert done.returncode == 0
    assert "Usage: pidone" in done.stdout
    assert "--check" in done.stdout


def test_check_notes_a_cut_delay_and_a_missing_command():
    out = io.StringIO()
    code = check.run(
        ["--check", "--grace", "4", "--pre-stop-delay", "9", "--", "no-such-app-x"], {}, out
    )
    assert code == 0
    text = out.getvalue()
    assert "pre-stop-delay 9s is cut to 3s: the app keeps a reserve of 1s of the 4s grace" in text
    assert "COMMAND 'no-such-app-x' is not on this machine's PATH" in text


def test_check_config_equals_the_real_parse(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text("grace = 5\ndrain = ['a', 'b']\nremap-exit = '3:0'\n")
    args = ["--config", str(path), "--stop-signal", "USR1", "--", "app", "x"]
    resolved = resolve(["--check", *args], {"PIDONE_PRE_STOP_DELAY": "1"})
    assert resolved.errors == []
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PIDONE_PRE_STOP_DELAY", "1")
        m.delenv(CONFIG_ENVVAR, raising=False)
        assert resolved.config == cli.parse(args)


def test_an_empty_variable_counts_as_not_set_and_check_warns(tmp_path):
    """PIDONE_GRACE= : the default applies (README), and --check says so."""
    env = {"PIDONE_GRACE": "", "PIDONE_DRAIN": ""}
    assert resolve(["app"], env).config == Config(argv=("app",))
    assert cli.parse(["app"], env) == Config(argv=("app",))
    out = io.StringIO()
    assert check.run(["--check", "app"], env, out) == 0
    text = out.getvalue()
    assert rows(text)["grace"] == ["8s", "default"]
    assert "PIDONE_GRACE is set but empty: taken as not set" in text
    assert "PIDONE_DRAIN is set but empty: taken as not set" in text
