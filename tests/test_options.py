"""The lean parser and the click command agree on every command line the lean one accepts."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pidone import cli
from pidone.config import Config, ExecDrain, HttpDrain
from pidone.options import CONFIG_ENVVAR, OPTIONS
from pidone.settings import fast_parse

NAMES = [f"--{opt.name}" for opt in OPTIONS]
VALUES = [
    "8",
    "0.5",
    "-1",
    "",
    "nan",
    "TERM",
    "sigusr1",
    "12",
    "KILL",
    "3:0",
    "300:1",
    "auto",
    "JSON",
    "console",
    "debug",
    "group",
    "child",
    "true",
    "sh -c 'echo hi'",
    "'unbalanced",
    "http://127.0.0.1:9/x",
    "POST https://h/",
    "ftp://x",
    "/tmp/termlog",
    "/tmp",
]
TOKENS = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(VALUES),
    st.sampled_from(["--", "-h", "--bogus", "--grace=2", "--drain=true", "-x"]),
)
COMMANDS = st.lists(st.sampled_from(["app", "--grace", "-v", "--", "x y"]), min_size=0, max_size=3)
ENV = st.dictionaries(
    st.sampled_from([opt.envvar for opt in OPTIONS]),
    st.sampled_from([*VALUES, "true\nfalse"]),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(opts=st.lists(TOKENS, max_size=6), command=COMMANDS, env=ENV)
def test_fast_parse_accepts_only_what_click_accepts_identically(opts, command, env):
    args = [*opts, *command]
    fast = fast_parse(args, env)
    if fast is None:
        return  # click decides; its own behaviour is tested elsewhere
    with pytest.MonkeyPatch.context() as m:
        for opt in OPTIONS:
            m.delenv(opt.envvar, raising=False)
        m.delenv(CONFIG_ENVVAR, raising=False)  # config files: see test_configfile.py
        for key, value in env.items():
            m.setenv(key, value)
        slow = cli.parse(args)
    assert slow == fast


def test_fast_parse_builds_the_full_config():
    config = fast_parse(
        [
            "--grace=3",
            "--drain",
            "sh -c 'x y'",
            "--drain-http",
            "POST http://h:1/d",
            "--stop-signal",
            "usr2",
            "--",
            "app",
            "--grace",
            "9",
        ],
        {"PIDONE_REMAP_EXIT": "3:0\n4:1", "PIDONE_GRACE": "7"},
    )
    assert config == Config(
        argv=("app", "--grace", "9"),
        grace=3.0,
        drains=(ExecDrain(("sh", "-c", "x y")), HttpDrain("POST", "http://h:1/d")),
        stop_signal=signal.SIGUSR2,
        remap_exit=((3, 0), (4, 1)),
    )


def test_fast_parse_steps_aside_for_help_errors_and_missing_command():
    for args in (
        ["-h", "app"],
        ["--help"],
        ["--version"],
        ["--grace", "x", "app"],
        [],
        ["--grace", "1"],
        ["--bogus", "app"],
    ):
        assert fast_parse(args, {}) is None, args
