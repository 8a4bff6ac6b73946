"""The pure parsing layer, property-based: no input makes it raise, and what it
accepts is always a valid configuration.

Everything here runs in-process (no pidone is started); the end-to-end side of
bad input (one line, exit 2, the app never starts) is in test_hardening.py.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import signal
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidone import cli
from pidone.config import (
    HTTP_METHODS,
    Command,
    Config,
    HttpCall,
    parse_command,
    parse_duration,
    parse_http_call,
    parse_remap,
    parse_signal,
    signal_name,
)

pytestmark = pytest.mark.timeout(120)

CATCHABLE = sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP})

OPTIONS = [
    "--grace",
    "--pre-stop-delay",
    "--drain",
    "--drain-http",
    "--stop-signal",
    "--shutdown-signal",
    "--signal-to",
    "--remap-exit",
    "--termination-log",
    "--log-format",
    "--log-level",
    "--version",
    "--help",
    "-h",
    "--",
    "--bogus",
    "-x",
    "--grace=",
    "--grace=1",
    "--stop-signal=KILL",
]
VALUES = [
    "",
    " ",
    "-1",
    "0",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "1e10",
    "TERM",
    "SIGKILL",
    "9",
    "STOP",
    "rtmin+3",
    "RTMAX-1",
    "rtmin+99",
    "999",
    "3:0",
    "300:0",
    "a:b",
    "::",
    "'unbalanced",
    'sh -c "echo hi"',
    "http://127.0.0.1:9/",
    "POST https://x/y",
    "FOO http://x/",
    "ftp://x/",
    "http://[::1",
    "json",
    "console",
    "xml",
    "debug",
    "child",
    "group",
    "true",
    "/",
    "\x00",
    "é",
    "٣",
    "\n",
]
TOKENS = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(VALUES),
    st.text(max_size=12),
    st.builds(lambda o, v: f"{o}={v}", st.sampled_from(OPTIONS[:12]), st.sampled_from(VALUES)),
)


@contextlib.contextmanager
def clean_env() -> Iterator[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIDONE_")}
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def assert_valid(config: Config) -> None:
    assert config.argv
    assert math.isfinite(config.grace)
    assert config.grace >= 0
    assert math.isfinite(config.pre_stop_delay)
    assert config.pre_stop_delay >= 0
    assert config.stop_signal in CATCHABLE
    assert config.shutdown_signals
    assert config.shutdown_signals <= set(CATCHABLE)
    assert config.log_format in ("auto", "json", "console")
    assert config.log_level in ("debug", "info", "warning", "error")
    assert config.signal_to in ("child", "group")
    for src, dst in config.remap_exit:
        assert 0 <= src <= 255
        assert 0 <= dst <= 255
    for step in config.drains:
        if isinstance(step, Command):
            assert step.argv
        else:
            assert step.method in HTTP_METHODS
            assert step.url.startswith(("http://", "https://"))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(args=st.lists(TOKENS, max_size=8), with_command=st.booleans())
def test_parse_never_raises_and_only_accepts_valid_configs(args, with_command):
    argv = [*args, "--", "true"] if with_command else args
    with clean_env(), contextlib.redirect_stdout(io.StringIO()):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            result = cli.parse(argv)
    if isinstance(result, Config):
        assert_valid(result)
    else:
        assert isinstance(result, int)
        assert result in (0, 2)
        if result == 2:
            assert "Traceback" not in err.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    var=st.sampled_from(
        [
            "PIDONE_GRACE",
            "PIDONE_PRE_STOP_DELAY",
            "PIDONE_STOP_SIGNAL",
            "PIDONE_SHUTDOWN_SIGNAL",
            "PIDONE_DRAIN",
            "PIDONE_DRAIN_HTTP",
            "PIDONE_REMAP_EXIT",
            "PIDONE_LOG_FORMAT",
            "PIDONE_LOG_LEVEL",
            "PIDONE_SIGNAL_TO",
            "PIDONE_TERMINATION_LOG",
        ]
    ),
    value=st.one_of(st.sampled_from(VALUES), st.text(max_size=20)),
)
def test_environment_values_never_make_parse_raise(var, value):
    if "\x00" in value:
        value = value.replace("\x00", "")  # the environment cannot hold NUL
    with (
        clean_env(),
        mock.patch.dict(os.environ, {var: value}),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        result = cli.parse(["--", "true"])
    if isinstance(result, Config):
        assert_valid(result)
    else:
        assert result == 2


# -- the pure parsers: ValueError or a valid value, nothing else --------------


@given(st.text())
def test_parse_duration_returns_a_finite_non_negative_float_or_value_error(text):
    try:
        value = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
        assert message
    else:
        assert math.isfinite(value)
        assert value >= 0


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_parse_duration_reads_back_every_valid_duration(value):
    assert parse_duration(repr(value)) == value


@given(st.text())
def test_parse_signal_returns_a_catchable_signal_or_value_error(text):
    try:
        number = parse_signal(text)
    except ValueError as exc:
        message = str(exc)
        assert message
    else:
        assert number in CATCHABLE


@pytest.mark.parametrize("number", CATCHABLE)
def test_every_catchable_signal_parses_by_name_and_number(number):
    name = signal_name(number)
    assert parse_signal(name) == number
    assert parse_signal(name.lower().removeprefix("sig")) == number
    assert parse_signal(str(number)) == number


@given(st.text())
def test_parse_remap_returns_two_exit_codes_or_value_error(text):
    try:
        src, dst = parse_remap(text)
    except ValueError as exc:
        message = str(exc)
        assert message
    else:
        assert 0 <= src <= 255
        assert 0 <= dst <= 255


@given(st.integers(0, 255), st.integers(0, 255))
def test_parse_remap_reads_back_every_valid_pair(src, dst):
    assert parse_remap(f"{src}:{dst}") == (src, dst)


@given(st.integers(), st.integers())
def test_parse_remap_refuses_codes_outside_0_255(src, dst):
    if 0 <= src <= 255 and 0 <= dst <= 255:
        return
    with pytest.raises(ValueError):
        parse_remap(f"{src}:{dst}")


@given(st.text())
def test_parse_exec_drain_returns_a_non_empty_argv_or_value_error(text):
    try:
        step = parse_command(text)
    except ValueError as exc:
        message = str(exc)
        assert message
    else:
        assert step.argv


@given(st.lists(st.text(min_size=1).filter(lambda s: "\x00" not in s), min_size=1, max_size=5))
def test_parse_exec_drain_round_trips_through_its_description(argv):
    step = Command(tuple(argv))
    assert parse_command(step.describe()) == step
    assert shlex.split(step.describe()) == argv


@given(st.text())
def test_parse_http_drain_returns_an_http_url_or_value_error(text):
    try:
        step = parse_http_call(text)
    except ValueError as exc:
        message = str(exc)
        assert message
    else:
        assert step.method in HTTP_METHODS
        assert step.url.startswith(("http://", "https://"))


@given(
    method=st.sampled_from(HTTP_METHODS),
    scheme=st.sampled_from(["http", "https"]),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5})?", fullmatch=True),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.from_regex(r"(/[A-Za-z0-9._~-]{0,10}){0,3}", fullmatch=True),
)
def test_parse_http_drain_round_trips_through_its_description(method, scheme, host, port, path):
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    step = HttpCall(method, url)
    assert parse_http_call(step.describe()) == step


@pytest.mark.parametrize(
    "text",
    ["FOO http://x/", "get", "ftp://x/", "http://", "http://:80/", "http://x:0/", "a b c"],
)
def test_parse_http_drain_refuses(text):
    with pytest.raises(ValueError):
        parse_http_call(text)
