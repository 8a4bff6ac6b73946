"""--config FILE / PIDONE_CONFIG: a TOML file with every option, below env and flags."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from harness import CLEAN_ENV, ROOT, pidone_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from pidone import cli, configfile
from pidone.config import Command, Config, HttpCall, Probe, TcpCheck
from pidone.options import CONFIG_ENVVAR, OPTIONS
from pidone.settings import fast_parse

pytestmark = pytest.mark.timeout(120)

ENV = CLEAN_ENV


def write(tmp_path: Path, text: str, name: str = "pidone.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def both(args: list[str], env: dict[str, str] | None = None) -> Config:
    """The Config from the fast parser, checked equal to click's."""
    env = env or {}
    fast = fast_parse(args, env)
    with pytest.MonkeyPatch.context() as m:
        for opt in OPTIONS:
            m.delenv(opt.envvar, raising=False)
        m.delenv(CONFIG_ENVVAR, raising=False)
        for key, value in env.items():
            m.setenv(key, value)
        slow = cli.parse(args)
    assert isinstance(slow, Config), slow
    assert fast == slow
    return slow


# Values ----------------------------------------------------------------------------


def test_every_kind_of_value(tmp_path):
    path = write(
        tmp_path,
        """
grace = 12
pre-stop-delay = 1.5
drain = ["sh -c 'echo a'", "true"]
drain-http = "POST http://127.0.0.1:8080/drain"
shutdown-signal = [15, "USR1"]
stop-signal = "usr2"
remap-exit = "143:0"
log-format = "JSON"
hook-timeout = "2.5"
status-addr = "127.0.0.1:9000"

[probes.liveness]
target = "http://127.0.0.1:8080/healthz"
period = 5
timeout = 1
initial-delay = 0
failure-threshold = 3

[probes.readiness]
target = "tcp://127.0.0.1:8080"
success-threshold = 2
failure-threshold = "4"

[probes.startup]
target = "exec:test -e /tmp/ready"
""",
    )
    config = both(["--config", path, "app"])
    assert config == Config(
        argv=("app",),
        grace=12.0,
        pre_stop_delay=1.5,
        drains=(
            Command(("sh", "-c", "echo a")),
            Command(("true",)),
            HttpCall("POST", "http://127.0.0.1:8080/drain"),
        ),
        shutdown_signals=frozenset({signal.SIGTERM, signal.SIGUSR1}),
        stop_signal=signal.SIGUSR2,
        remap_exit=((143, 0),),
        log_format="json",
        hook_timeout=2.5,
        status_addr=("127.0.0.1", 9000),
        probes=(
            Probe("startup", Command(("test", "-e", "/tmp/ready"))),
            Probe(
                "readiness", TcpCheck("127.0.0.1", 8080), failure_threshold=4, success_threshold=2
            ),
            Probe("liveness", HttpCall("GET", "http://127.0.0.1:8080/healthz"), period=5.0),
        ),
    )


def test_a_single_string_is_a_one_item_array(tmp_path):
    single = write(tmp_path, "drain = \"sh -c 'x y'\"\n", "single.toml")
    array = write(tmp_path, "drain = [\"sh -c 'x y'\"]\n", "array.toml")
    assert both(["--config", single, "app"]).drains == (Command(("sh", "-c", "x y")),)
    assert both(["--config", array, "app"]) == both(["--config", single, "app"])
    empty = write(tmp_path, "drain = []\n", "empty.toml")
    assert both(["--config", empty, "app"]).drains == ()


def test_flat_probe_options_work_too(tmp_path):
    path = write(tmp_path, 'liveness-probe = "tcp://h:1"\nliveness-period = 2\n')
    assert both(["--config", path, "app"]).probes == (
        Probe("liveness", TcpCheck("h", 1), period=2.0),
    )


def test_floats_are_written_back_exactly():
    grace = next(o for o in OPTIONS if o.name == "grace")
    assert configfile._text(grace, 0.1) == "0.1"
    assert configfile._text(grace, 1e-7) == "1e-07"
    assert configfile._text(grace, 8) == "8"


# Precedence ------------------------------------------------------------------------


def test_flag_over_env_over_file_over_default(tmp_path):
    path = write(tmp_path, "grace = 3\npre-stop-delay = 1\nhook-timeout = 5\ndrain = 'a'\n")
    env = {"PIDONE_PRE_STOP_DELAY": "2", "PIDONE_HOOK_TIMEOUT": "6", CONFIG_ENVVAR: path}
    config = both(["--hook-timeout", "7", "app"], env)
    assert config.grace == 3.0  # file
    assert config.pre_stop_delay == 2.0  # env beats file
    assert config.hook_timeout == 7.0  # flag beats env and file
    assert config.log_level == "info"  # default
    assert config.drains == (Command(("a",)),)
    assert both(["--drain", "b", "app"], env).drains == (Command(("b",)),)


def test_config_flag_beats_config_env(tmp_path):
    one = write(tmp_path, "grace = 1\n", "one.toml")
    two = write(tmp_path, "grace = 2\n", "two.toml")
    assert both(["--config", two, "app"], {CONFIG_ENVVAR: one}).grace == 2.0
    assert both(["app"], {CONFIG_ENVVAR: one}).grace == 1.0
    assert both([f"--config={one}", "--config", two, "app"]).grace == 2.0  # last one wins


def test_precedence_as_a_user_sees_it(tmp_path):
    path = write(tmp_path, "grace = 3\npre-stop-delay = 1\nhook-timeout = 5\n")
    done = pidone_cli(
        "--check",
        "--hook-timeout",
        "7",
        "--",
        "app",
        env={"PIDONE_PRE_STOP_DELAY": "2", "PIDONE_HOOK_TIMEOUT": "6", CONFIG_ENVVAR: path},
    )
    assert done.returncode == 0, done.stderr
    rows = {
        line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line[:2] == "  "
    }
    assert rows["config"] == [path, "env", CONFIG_ENVVAR]
    assert rows["grace"] == ["3s", "file", f"{path}:1"]
    assert rows["pre-stop-delay"] == ["2s", "env", "PIDONE_PRE_STOP_DELAY"]
    assert rows["hook-timeout"] == ["7s", "flag"]
    assert rows["log-level"] == ["info", "default"]


# Mistakes --------------------------------------------------------------------------


def errors(path: str) -> list[str]:
    return configfile.read(path).errors


def test_unknown_keys_with_their_line_numbers(tmp_path):
    path = write(
        tmp_path,
        "# comment\ngrace = 8\ngracee = 3\n\n[probes.liveness]\n"
        'target = "tcp://h:1"\n  perod = 3\nsuccess-threshold = 1\n[probes.weird]\nx = 1\n'
        "[probes]\nreadiness.tiemout = 2\n",
    )
    assert errors(path) == [
        f"{path}:3: key 'gracee': unknown key (did you mean 'grace'?)",
        f"{path}:7: key 'probes.liveness.perod': unknown key (did you mean 'period'?)",
        (
            f"{path}:8: key 'probes.liveness.success-threshold': unknown key: "
            "a liveness probe has no success-threshold"
        ),
        f"{path}:9: key 'probes.weird': unknown key",
        f"{path}:12: key 'probes.readiness.tiemout': unknown key (did you mean 'timeout'?)",
    ]


def test_wrong_types(tmp_path):
    path = write(
        tmp_path,
        "grace = true\ndrain = 5\nstop-signal = [15]\nshutdown-signal = ['TERM', false]\n"
        "log-format = 1\nprobes = 'x'\npre-stop-delay = 1979-05-27\n",
    )
    assert errors(path) == [
        f"{path}:1: key 'grace': expected a number or a string, got a boolean",
        f"{path}:2: key 'drain': expected a string or an array of strings, got an integer",
        f"{path}:3: key 'stop-signal': expected a number or a string, got an array",
        (
            f"{path}:4: key 'shutdown-signal': array item 2: expected a number or a string, "
            "got a boolean"
        ),
        f"{path}:5: key 'log-format': expected a string, got an integer",
        f"{path}:6: key 'probes': expected a table of probes ([probes.liveness] ...), got a string",
        f"{path}:7: key 'pre-stop-delay': expected a number or a string, got a date/time",
    ]


def test_bad_values_go_through_the_command_line_parsers(tmp_path):
    path = write(tmp_path, "grace = -1\nhook-timeout = 0\ndrain-http = 'ftp://x'\n")
    assert errors(path) == [
        f"{path}:1: key 'grace': '-1' must be a finite number of seconds >= 0",
        f"{path}:2: key 'hook-timeout': '0' must be more than 0 seconds",
        f"{path}:3: key 'drain-http': 'ftp://x' is not an http:// or https:// URL with a host",
    ]
    nan = write(tmp_path, "grace = nan\n", "nan.toml")
    assert errors(nan) == [f"{nan}:1: key 'grace': 'nan' must be a finite number of seconds >= 0"]


def test_the_same_option_twice(tmp_path):
    path = write(
        tmp_path, 'liveness-probe = "tcp://h:1"\n[probes.liveness]\ntarget = "tcp://h:2"\n'
    )
    assert errors(path) == [
        (
            f"{path}:3: key 'probes.liveness.target': sets 'liveness-probe' again "
            "(already set by 'liveness-probe')"
        )
    ]


def test_keys_that_are_not_options_in_a_file(tmp_path):
    path = write(tmp_path, "config = 'other.toml'\ncheck = true\n")
    assert [e.split(": ", 2)[1:] for e in errors(path)] == [
        ["key 'config'", "unknown key"],
        ["key 'check'", "unknown key"],
    ]


def test_line_finder_handles_toml_shapes():
    text = (
        'a = """\ngrace = 1\n"""\n'  # a key-like line inside a multi-line string
        "grace = 2\n"
        '[ probes . "liveness" ]\n'
        "period = 3\n"
        "probes.readiness.timeout = 4\n"  # dotted key inside the [probes.liveness] table
        "[other]\n"
        "probes = { startup = { period = 5 } }\n"
    )
    assert configfile.find_line(text, ("grace",)) == 4
    assert configfile.find_line(text, ("probes", "liveness", "period")) == 6
    assert configfile.find_line(text, ("probes", "liveness", "probes", "readiness", "timeout")) == 7
    assert configfile.find_line(text, ("other", "probes", "startup", "period")) == 9
    assert configfile.find_line(text, ("nowhere",)) is None


def test_missing_file_and_invalid_toml(tmp_path):
    missing = str(tmp_path / "nope.toml")
    assert errors(missing) == [f"{missing}: cannot read config file: No such file or directory"]
    assert errors(str(tmp_path)) == [f"{tmp_path}: cannot read config file: Is a directory"]
    bad = write(tmp_path, "grace = 8\ndrain = [\n  'a'\n  'b'\n]\n", "bad.toml")
    (error,) = errors(bad)
    assert error.startswith(f"{bad}:4: invalid TOML: ")
    assert "line 4" in error
    with pytest.raises(configfile.ConfigFileError, match="invalid TOML"):
        configfile.load(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grace = 8\ngrace = true\n", ":2: invalid TOML: "),
        ("\n\ngrace = true\n", ":3: key 'grace': expected a number or a string, got a boolean"),
        (
            "drain = 5\n",
            ":1: key 'drain': expected a string or an array of strings, got an integer",
        ),
        (
            "[probes.liveness]\nperiod = 1\nbogus = 2\n",
            ":3: key 'probes.liveness.bogus': unknown key",
        ),
    ],
)
def test_a_bad_file_is_one_line_exit_2_and_nothing_starts(tmp_path, text, message):
    path = write(tmp_path, text)
    marker = tmp_path / "started"
    done = pidone_cli("--config", path, "--", "sh", "-c", f"touch {marker}")
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"pidone: error: {path}{message}")
    assert not marker.exists()


def test_a_missing_file_from_the_environment(tmp_path):
    missing = tmp_path / "nope.toml"
    done = pidone_cli("--", "true", env={CONFIG_ENVVAR: str(missing)})
    assert done.returncode == 2
    assert done.stderr == (
        f"pidone: error: {missing}: cannot read config file: No such file or directory\n"
    )


def test_a_good_file_is_used_for_a_real_run(tmp_path):
    path = write(tmp_path, "log-format = 'json'\nremap-exit = ['3:0']\n")
    done = pidone_cli("--config", path, "--", "sh", "-c", "exit 3")
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("{")


def test_help_shows_config_and_its_env_var():
    done = pidone_cli("--help")
    assert done.returncode == 0
    assert "--config FILE" in done.stdout
    assert CONFIG_ENVVAR in done.stdout
    assert "--check" in done.stdout


# The fast parser agrees with click, config file included ----------------------------

SCALARS = st.one_of(
    st.sampled_from(["8", "0.5", "-1", "", "TERM", "usr1", "3:0", "json", "DEBUG", "group"]),
    st.sampled_from(["sh -c 'x'", "'unbalanced", "http://h:1/x", "tcp://h:1", "exec:true"]),
    st.sampled_from(["/tmp", "/tmp/termlog", "127.0.0.1:9", "nan"]),
    st.integers(-2, 20),
    st.sampled_from([0.25, 1.5, 1e300, float("inf")]),
    st.booleans(),
)
GOOD_TEXTS = {
    "SECONDS": [0, 1.5, "2", 8, 0.25],
    "SIGNAL": ["TERM", 10, "usr2", "SIGHUP"],
    "N": [1, "3", 2],
    "COMMAND": ["sh -c 'x y'", "true"],
    "[METHOD ]URL": ["http://h:1/x", "POST https://h/"],
    "FROM:TO": ["3:0", "143:0"],
    "PATH": ["/tmp/termlog"],
    "TARGET": ["tcp://h:1", "exec:true", "http://h/"],
    "HOST:PORT": ["127.0.0.1:9"],
}


def good_values(metavar: str) -> list[object]:
    return GOOD_TEXTS.get(metavar) or list(metavar.split("|"))


def value_for(name: str) -> st.SearchStrategy[object]:
    """Mostly a value the option accepts (as a scalar or an array), sometimes anything."""
    opt = next((o for o in OPTIONS if o.name == name), None)
    if opt is None:
        return SCALARS
    good: st.SearchStrategy[object] = st.sampled_from(good_values(opt.metavar))
    if opt.multiple:
        good = st.one_of(good, st.lists(good, max_size=3))
    return mostly(good, st.one_of(SCALARS, st.lists(SCALARS, max_size=2)))


def mostly(
    good: st.SearchStrategy[object], bad: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    """``good`` nine times in ten: the fast parser must accept often for the test to bite."""
    return st.sampled_from(range(10)).flatmap(lambda i: bad if i == 9 else good)


def dict_of(names: st.SearchStrategy[str], value: object) -> st.SearchStrategy[dict[str, object]]:
    return st.lists(names, unique=True, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({key: value(key) for key in keys})  # type: ignore[operator]
    )


FILE_KEYS = mostly(st.sampled_from([o.name for o in OPTIONS]), st.sampled_from(["bogus", "config"]))
PROBE_KEYS = {
    "target": "TARGET",
    "period": "SECONDS",
    "timeout": "SECONDS",
    "success-threshold": "N",
}
PROBE_TABLES = dict_of(
    mostly(st.sampled_from(["liveness", "readiness", "startup"]), st.just("weird")),
    lambda _kind: dict_of(
        mostly(st.sampled_from([*PROBE_KEYS, "target"]), st.just("x")),
        lambda key: mostly(st.sampled_from(good_values(PROBE_KEYS.get(key, "x"))), SCALARS),
    ),
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == float("inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_text(top: dict[str, object], probes: dict[str, dict[str, object]]) -> str:
    lines = [f'"{key}" = {toml_value(value)}' for key, value in top.items()]
    for kind, table in probes.items():
        lines.append(f"[probes.{kind}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(
    top=dict_of(FILE_KEYS, value_for),
    probes=PROBE_TABLES,
    flags=st.lists(
        st.tuples(
            st.sampled_from([f"--{o.name}" for o in OPTIONS]), st.sampled_from(["2", "2", "x"])
        ),
        max_size=2,
    ),
    env=st.dictionaries(
        st.sampled_from([o.envvar for o in OPTIONS]), st.sampled_from(["3", "3", "nan"]), max_size=2
    ),
    via_env=st.booleans(),
)
def test_fast_parse_with_a_config_file_agrees_with_click(top, probes, flags, env, via_env):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pidone.toml")
        with open(path, "w") as file:
            file.write(toml_text(top, probes))
        args = [token for pair in flags for token in pair]
        env = dict(env)
        if via_env:
            env[CONFIG_ENVVAR] = path
        else:
            args += ["--config", path]
        args.append("app")
        fast = fast_parse(args, env)
        with pytest.MonkeyPatch.context() as m, open(os.devnull, "w") as null:
            for opt in OPTIONS:
                m.delenv(opt.envvar, raising=False)
            m.delenv(CONFIG_ENVVAR, raising=False)
            for key, value in env.items():
                m.setenv(key, value)
            m.setattr(sys, "stderr", null)
            slow = cli.parse(args)
        if fast is not None:
            assert slow == fast
        else:
            # fast steps aside only when something is wrong: click refuses it too.
            assert slow == 2


def test_the_example_file_is_valid_and_covers_every_option(tmp_path):
    example = ROOT / "examples" / "pidone.toml"
    loaded = configfile.read(str(example))
    assert loaded.errors == []
    # Uncommented, its example lines set every single option.
    lines = []
    for line in example.read_text().splitlines():
        uncommented = line.removeprefix("# ")
        table = uncommented.startswith(("[probes.", "[sidecars."))
        settable = table or " = " in uncommented.split("#")[0]
        lines.append(uncommented if settable and not uncommented.startswith(" ") else line)
    everything = write(tmp_path, "\n".join(lines) + "\n")
    loaded = configfile.read(everything)
    assert loaded.errors == []
    assert sorted(loaded.values) == sorted(opt.key for opt in OPTIONS)
    assert both(["--config", everything, "app"]).probes


def test_at_most_one_mib_is_read(tmp_path):
    """--config /dev/zero (or a huge file) is refused after 1 MiB, not read without end."""
    assert configfile.read("/dev/zero").errors == ["/dev/zero: config file is larger than 1 MiB"]
    exact = tmp_path / "exact.toml"
    filler = "#" * (configfile.MAX_BYTES - len("grace = 3\n") - 1) + "\n"
    exact.write_text("grace = 3\n" + filler)
    assert exact.stat().st_size == configfile.MAX_BYTES
    assert configfile.read(str(exact)).values == {"grace": "3"}
    over = tmp_path / "over.toml"
    over.write_text("grace = 3\n" + filler + "\n")
    assert configfile.read(str(over)).errors == [f"{over}: config file is larger than 1 MiB"]


def test_config_dev_zero_is_one_line_exit_2_and_nothing_starts(tmp_path):
    """The whole program: one line, exit 2, the app never started."""
    marker = tmp_path / "started"
    done = pidone_cli("--config", "/dev/zero", "--", "touch", str(marker))
    assert done.returncode == 2
    assert done.stderr == "pidone: error: /dev/zero: config file is larger than 1 MiB\n"
    assert not marker.exists()


def test_sidecar_tables_become_the_sidecar_options_in_file_order(tmp_path):
    """[sidecars.NAME] tables: the file's order is the start order; numbers are allowed."""
    path = write(
        tmp_path,
        "[sidecars.proxy]\n"
        "command = \"nginx -g 'daemon off;'\"\n"
        'ready = "tcp://127.0.0.1:8080"\n'
        "stop-signal = 3\n"
        "restart-delay = 2\n"
        "[sidecars.logs]\n"
        'command = "fluent-bit"\n'
        "[sidecars.db-proxy]\n"
        'command = ["cloud-sql-proxy", "--port", "5432", "my project"]\n',
    )
    config = both(["--config", path, "app"])
    assert [(s.name, s.argv[0]) for s in config.sidecars] == [
        ("proxy", "nginx"),
        ("logs", "fluent-bit"),
        ("db-proxy", "cloud-sql-proxy"),
    ]
    # An array is the command's words, as a Dockerfile's exec form: no splitting.
    assert config.sidecars[2].argv == ("cloud-sql-proxy", "--port", "5432", "my project")
    proxy = config.sidecars[0]
    assert (proxy.stop_signal, proxy.restart_delay) == (signal.SIGQUIT, 2.0)
    assert proxy.ready is not None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[sidecars.proxy]\nready = "tcp://h:1"\n', "needs a command"),
        ('[sidecars.proxy]\ncommand = "x"\nwhen = 1\n', "when"),
        ('[sidecars.Proxy]\ncommand = "x"\n', "Proxy"),
        ('sidecar = ["proxy=x"]\n[sidecars.proxy]\ncommand = "y"\n', "again"),
        ("[sidecars.proxy]\ncommand = 5\n", "expected a string or an array of strings"),
        ('[sidecars.proxy]\ncommand = ["nginx", 5]\n', "array of strings"),
        ('[sidecars.proxy]\ncommand = "x"\nready = 8080\n', "expected a string"),
    ],
)
def test_bad_sidecar_tables_are_refused_in_one_line(tmp_path, text, complaint):
    loaded = configfile.read(write(tmp_path, text))
    assert len(loaded.errors) == 1
    assert complaint in loaded.errors[0]
