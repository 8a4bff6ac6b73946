"""The resolver and the click command agree on every command line the resolver accepts.

The values are generated from the option table: each option's *kind* picks
its good and bad texts, and each value comes from the command line, the
environment or a config file.  So every Config field is exercised (probes,
status addresses, restart values included), and valid command lines are the
rule, not the exception.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pidone import cli
from pidone.config import Command, Config, HttpCall
from pidone.options import CONFIG_ENVVAR, NUMERIC_KINDS, OPTIONS, Kind, Option
from pidone.settings import fast_parse, resolve

# Good texts of each kind; the first of each differs from every default.
GOOD: dict[Kind, list[str]] = {
    "duration": ["2.5", "0", "8", "1e2", " 3 ", "0.001"],
    "interval": ["0.5", "2", "60", "1e-3"],
    "count": ["2", "1", "5", " 7"],
    "signal": ["USR1", "sigusr2", "hup", "rtmin+3", "RTMAX-1", "15", str(int(signal.SIGINT))],
    "shutdown-signal": ["USR2", "sigterm", "INT", "rtmin+1", str(int(signal.SIGQUIT))],
    "remap": ["3:0", "143:0", "0:255", "1:1"],
    "command": ["sh -c 'echo hi'", "true", "sleep 0", "'a b' c"],
    "http": ["POST http://127.0.0.1:9/x", "https://h/", "put http://[::1]:8080/p"],
    "path": ["/tmp/termlog", "relative/log"],
    "probe": ["tcp://127.0.0.1:8080", "exec:true", "http://h/healthz", "https://[::1]:8443/"],
    "address": ["127.0.0.1:8081", "[::1]:9000", "localhost:1", "0.0.0.0:65535"],
    "flag": ["true"],
    "sidecar": ["a=sleep 9", "b=true", "c-1='x y'", "d=true"],
    "sidecar-ready": ["a=tcp://127.0.0.1:80", "b=exec:true", "c-1=http://h/ready", "d=notify"],
    "sidecar-signal": ["a=QUIT", "b=int", "c-1=15"],
    "sidecar-duration": ["a=2", "b=0.5", "c-1=0"],
    # Users every Debian system has (pidone runs as root here: it may switch to them).
    "user": ["nobody", "root", "0:0", "65534:65534", "root:root", "nobody:0"],
}
# Texts each kind refuses (the resolver steps aside; click must refuse them too).
BAD: dict[Kind, list[str]] = {
    "duration": ["-1", "nan", "1_0", "\uff11", "1s", "", "inf"],
    "interval": ["0", "1e9", "x"],
    "count": ["0", "1.5", "-2"],
    "signal": ["KILL", "0", "nope", "rtmin+99"],
    "shutdown-signal": ["CHLD", "SEGV", "STOP"],
    "remap": ["300:0", "1:", "7"],
    "command": ["'x", "   ", ""],
    "http": ["ftp://h/", "FOO http://h/", "http://h:0/"],
    "path": ["", "/tmp"],
    "probe": ["udp://h:1", "tcp://h", "exec:"],
    "address": ["h", "h:0", ":80"],
    "flag": ["maybe"],
    "user": ["pidone-no-such-user", "root:", "", "root:pidone-no-such-group", "424242"],
    "choice": ["bogus", ""],
    "sidecar": ["A=x", "a", "a=", "a b=x", "=x"],
    "sidecar-ready": ["Nope=tcp://h:1", "a=udp://h:1", "a"],
    "sidecar-signal": ["a=KILL", "a=", "a=nope"],
    "sidecar-duration": ["a=-1", "a=1_0", "a"],
}
ENV_FLAG = ["true", "false", "1", "0", "yes", "off", "ON"]


def good_texts(opt: Option) -> list[str]:
    if opt.kind == "choice":
        rest = [c for c in opt.choices if c != opt.default]
        return [*rest, opt.choices[0].upper(), *opt.choices]
    return GOOD[opt.kind]


def toml(opt: Option, text: str) -> str:
    """``text`` as a TOML value: a number where the kind allows one and it reads as one."""
    if opt.flag:
        return "true" if text.strip().lower() in ("true", "1", "yes", "on") else "false"
    if opt.kind in NUMERIC_KINDS and text.strip().isdigit():
        return text.strip()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


Where = tuple[str, Option, list[str]]  # ("flag" | "flag=" | "env" | "file", option, texts)


@st.composite
def placed(draw: st.DrawFn, opt: Option, bad: bool) -> Where:
    """One option, its texts, and where they are given."""
    where = draw(st.sampled_from(["flag", "flag=", "env", "file"]))
    pool = BAD[opt.kind] if bad else good_texts(opt)
    if opt.flag and where.startswith("flag"):
        return where, opt, [] if not bad else ["x"]  # present; "x": a value a flag refuses
    if opt.flag and not bad:
        pool = ENV_FLAG
    count = draw(st.integers(1, 3)) if opt.multiple else 1
    # A sidecar's name is given once (a rule between values, not of one value).
    unique = opt.kind.startswith("sidecar") and not bad
    texts = draw(st.lists(st.sampled_from(pool), min_size=count, max_size=count, unique=unique))
    return where, opt, texts


@st.composite
def inputs(draw: st.DrawFn, bad_rate: int) -> list[Where]:
    """A random set of options, each given somewhere; one in ``bad_rate`` is bad (0: none)."""
    chosen = draw(st.lists(st.sampled_from(OPTIONS), unique=True, min_size=1, max_size=12))
    placements = [
        draw(placed(opt, bad=bool(bad_rate) and draw(st.integers(1, bad_rate)) == 1))
        for opt in chosen
    ]
    names_one = [opt for _, opt, _ in placements if opt.kind.startswith("sidecar-")]
    if names_one:  # each NAME=VALUE option names a sidecar
        placements = [p for p in placements if p[1].name != "sidecar"]
        placements.append(
            ("flag", next(o for o in OPTIONS if o.name == "sidecar"), GOOD["sidecar"])
        )
    if any(opt.name == "watchdog" for _, opt, _ in placements):  # needs --notify
        placements = [p for p in placements if p[1].name != "notify"]
        placements.append(("flag", next(o for o in OPTIONS if o.name == "notify"), []))
    return placements


def materialise(placements: list[Where], tmp: str) -> tuple[list[str], dict[str, str]]:
    """The command line (with COMMAND) and environment that give ``placements``."""
    args: list[str] = []
    env: dict[str, str] = {}
    file_lines: list[str] = []
    for where, opt, texts in placements:
        if where.startswith("flag"):
            if opt.flag:
                args += [f"--{opt.name}"] if not texts else [f"--{opt.name}={texts[0]}"]
            for text in texts if not opt.flag else ():
                args += [f"--{opt.name}={text}"] if where == "flag=" else [f"--{opt.name}", text]
        elif where == "env":
            env[opt.envvar] = "\n".join(texts)
        else:
            values = [toml(opt, text) for text in texts]
            shown = f"[{', '.join(values)}]" if opt.multiple else values[0]
            file_lines.append(f"{opt.name} = {shown}")
    if file_lines:
        path = os.path.join(tmp, "pidone.toml")
        with open(path, "w") as file:
            file.write("\n".join(file_lines) + "\n")
        args += ["--config", path]
    return [*args, "--", "app", "--grace", "x"], env


def click_parse(args: list[str], env: Mapping[str, str]) -> Config | int:
    with open(os.devnull, "w") as null, pytest.MonkeyPatch.context() as m:
        m.setattr("sys.stderr", null)
        return cli.parse(args, env)


@settings(max_examples=300, deadline=None)
@given(placements=inputs(bad_rate=0))
def test_every_valid_setting_is_accepted_and_click_agrees(placements):
    """Valid values from anywhere: the resolver takes them all, click reads the same Config."""
    with tempfile.TemporaryDirectory() as tmp:
        args, env = materialise(placements, tmp)
        fast = fast_parse(args, env)
        assert fast is not None, resolve(args, env).errors
        assert click_parse(args, env) == fast


@settings(max_examples=300, deadline=None)
@given(placements=inputs(bad_rate=4))
def test_the_resolver_accepts_only_what_click_accepts_identically(placements):
    """Some values bad: the resolver steps aside exactly when click refuses."""
    with tempfile.TemporaryDirectory() as tmp:
        args, env = materialise(placements, tmp)
        fast = fast_parse(args, env)
        slow = click_parse(args, env)
        if fast is None:
            assert slow == 2, resolve(args, env).errors
        else:
            assert slow == fast


def test_the_generated_values_reach_every_config_field():
    """The first good text of every option moves every Config field off its default."""
    with tempfile.TemporaryDirectory() as tmp:
        args, env = materialise(
            [("flag", opt, [] if opt.flag else [good_texts(opt)[0]]) for opt in OPTIONS], tmp
        )
        config = fast_parse(args, env)
    assert config is not None
    default = Config(argv=())
    unchanged = [
        field
        for field in Config._fields
        if field != "argv" and getattr(config, field) == getattr(default, field)
    ]
    assert unchanged == []
    assert {probe.kind for probe in config.probes} == {"startup", "readiness", "liveness"}


def test_the_bad_texts_of_each_kind_are_refused():
    """The bad texts above are bad for every option of their kind (the test relies on it)."""
    for opt in OPTIONS:
        for text in BAD[opt.kind]:
            with pytest.raises(ValueError):
                opt.parse(text)
        for text in good_texts(opt):
            opt.parse(text)


# Odd command lines: shapes rather than values.
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
    """Odd shapes of command line (short options, a missing value, ``--`` anywhere)."""
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
        drains=(Command(("sh", "-c", "x y")), HttpCall("POST", "http://h:1/d")),
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


def test_click_reads_the_environment_it_is_given(monkeypatch):
    """click and the resolver read one environment: the one handed over, not os.environ."""
    monkeypatch.setenv("PIDONE_GRACE", "nan")
    monkeypatch.delenv(CONFIG_ENVVAR, raising=False)
    assert cli.parse(["app"], {"PIDONE_GRACE": "5"}) == Config(argv=("app",), grace=5.0)
    assert fast_parse(["app"], {"PIDONE_GRACE": "5"}) == Config(argv=("app",), grace=5.0)


SETTINGS_MODULES = ("options", "settings", "configfile", "cli", "check", "config")


def test_the_settings_modules_import_each_other_without_a_cycle():
    """The table, the resolver, the file reader, click and --check form no import cycle."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "pidone"
    edges: dict[str, set[str]] = {}
    for name in SETTINGS_MODULES:
        tree = ast.parse((root / f"{name}.py").read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "pidone":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pidone."):
                found.add((node.module or "").removeprefix("pidone."))
        edges[name] = found & set(SETTINGS_MODULES)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for target in edges[name]:
                visit(target, (*path, name))
            done.add(name)

    for name in SETTINGS_MODULES:
        visit(name, ())
    assert "cli" not in edges["settings"]  # click stays off the everyday path


def test_the_everyday_start_never_imports_click(tmp_path):
    """click costs ~20 ms before the app starts: only help and errors may load it."""
    import subprocess
    import sys

    from harness import CLEAN_ENV

    path = tmp_path / "pidone.toml"
    path.write_text("grace = 3\n[probes.liveness]\ntarget = 'tcp://127.0.0.1:1'\n")
    code = (
        "import sys; from pidone import main; from pidone.settings import resolve; "
        f"config = resolve(['--config', {str(path)!r}, '--drain', 'true', 'app'], "
        "{'PIDONE_STOP_SIGNAL': 'USR1'}).startable(); "
        "assert config is not None and config.grace == 3; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'click'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=CLEAN_ENV, check=True
    )
    assert done.stdout == "[]\n"
