"""The one settings resolver: argv + environment + config file -> Config or errors.

Every option of :data:`pidone.options.OPTIONS` gets its value here, with the
place it came from, by one rule: the command line, else the environment,
else the config file, else the default.  The everyday start, ``--check``
and the click command behind ``--help`` and the error messages all start
from :func:`resolve`:

- a start takes :attr:`Settings.config` when there is nothing to explain
  (no error, no ``--help``/``--version``/``--check``, a COMMAND): the
  common case, and the only one that must be fast.  ``import click`` alone
  costs about 20 ms, so this module never imports it;
- otherwise :mod:`pidone.cli` hands the command line to click, fed the same
  environment and the same file, so every message a user sees is click's
  (tests/test_options.py checks that both agree on all the resolver accepts);
- ``--check`` prints :attr:`Settings.settings` (value and source of each
  option) or every one of :attr:`Settings.errors`.

The command line is split the way click splits it: an option of the table
(or ``--config``) takes the next argument as its value, ``--name=value``
carries its own, flags take none, and the first argument that is not an
option (or everything after ``--``) is COMMAND, the app's argv, untouched.

An empty ``PIDONE_*`` variable counts as not set (click's rule, and the
README's): compose files and Helm templates write ``PIDONE_GRACE=${GRACE}``
with GRACE unset as an empty value and mean "not set".  ``--check`` warns
about each one, since an empty value can also be a mistake.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

from pidone.config import (
    PROBES,
    Check,
    Command,
    Config,
    LogFormat,
    LogLevel,
    Notify,
    Probe,
    ProbeKind,
    RestartPolicy,
    SignalTarget,
    Step,
    build_sidecars,
)
from pidone.options import BY_NAME, CONFIG_ENVVAR, OPTIONS, Option, split_env

if TYPE_CHECKING:
    from pidone.configfile import Loaded
    from pidone.user import Credentials

Source = Literal["default", "file", "env", "flag"]
Request = Literal["--check", "--help", "--version"]
# Options the click command knows besides the table: they ask for something
# other than a start, and take no value.
REQUESTS: dict[str, Request] = {
    "--check": "--check",
    "--help": "--help",
    "-h": "--help",
    "--version": "--version",
}


class Setting(NamedTuple):
    """One option's effective value and where it came from."""

    option: Option
    value: object  # parsed (see Option.kind); a tuple for repeatable options
    source: Source
    where: str = ""  # the variable for "env", FILE[:LINE] for "file"

    def describe_source(self) -> str:
        """``default``, ``flag``, ``env NAME`` or ``file PATH:LINE``."""
        return f"{self.source} {self.where}" if self.where else self.source


class ConfigFile(NamedTuple):
    path: str
    source: Literal["flag", "env"]

    def describe_source(self) -> str:
        return "flag" if self.source == "flag" else f"env {CONFIG_ENVVAR}"


class Settings(NamedTuple):
    """Everything the resolver found out about one command line and its surroundings."""

    settings: tuple[Setting, ...]  # one per option of the table, in its order
    command: tuple[str, ...]  # the app's argv; empty when none was given
    config_file: ConfigFile | None
    requests: frozenset[Request]  # --check, --help, --version as given
    errors: list[str]  # one line each, every mistake found
    config: Config | None  # None when there are errors
    empty_env: tuple[str, ...]  # PIDONE_* variables set but empty: taken as not set

    def startable(self) -> Config | None:
        """The Config to start the app with, or None when click has something to say."""
        if self.requests or not self.command:
            return None
        return self.config


Pair = tuple[str, str | None]  # an option as written, and its value (None: none given)


def split(args: Sequence[str]) -> tuple[list[Pair], list[str]]:
    """The options before COMMAND as (option, value) pairs, and COMMAND; never fails."""
    pairs: list[Pair] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return pairs, list(args[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            return pairs, list(args[i:])
        name, eq, value = arg.partition("=")
        if eq and name.startswith("--"):
            pairs.append((name, value))
        elif _takes_value(arg):
            i += 1
            pairs.append((arg, args[i] if i < len(args) else None))
        else:  # flags, requests, and what click will call unknown
            pairs.append((arg, None))
        i += 1
    return pairs, []


def _takes_value(arg: str) -> bool:
    name = arg[2:] if arg.startswith("--") else ""
    return name == "config" or (name in BY_NAME and not BY_NAME[name].flag)


def wants_check(args: Sequence[str]) -> bool:
    """``--check`` is among the options (and neither --help nor --version is)."""
    names = {REQUESTS.get(name) for name, _ in split(args)[0]}
    return "--check" in names and not names & {"--help", "--version"}


def fast_parse(args: Sequence[str], environ: Mapping[str, str]) -> Config | None:
    """The Config for a well-formed command line, or None to let click decide."""
    return resolve(args, environ).startable()


def resolve(args: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Every option's value and source, and every mistake: flags, environment, file."""
    errors: list[str] = []
    pairs, command = split(args)
    given, requests = _given(pairs, errors)
    config_file: ConfigFile | None = None
    if "config" in given:
        config_file = ConfigFile(given["config"][-1], "flag")
    elif environ.get(CONFIG_ENVVAR):
        config_file = ConfigFile(environ[CONFIG_ENVVAR], "env")
    loaded: Loaded | None = None
    if config_file is not None:
        from pidone import configfile  # tomllib only when a file is given

        loaded = configfile.read(config_file.path)
        errors.extend(loaded.errors)
    settings = tuple(_setting(opt, given, environ, loaded, errors) for opt in OPTIONS)
    config = None
    if not errors:
        try:
            config = build_config({s.option.key: s.value for s in settings}, command)
        except ValueError as exc:
            errors.append(str(exc))
    empty = [name for name in (CONFIG_ENVVAR, *ENVVARS) if environ.get(name) == ""]
    return Settings(
        settings,
        tuple(command),
        config_file,
        frozenset(requests),
        errors,
        config,
        tuple(empty),
    )


ENVVARS = tuple(opt.envvar for opt in OPTIONS)


def _setting(
    opt: Option,
    given: Mapping[str, list[str]],
    environ: Mapping[str, str],
    loaded: Loaded | None,
    errors: list[str],
) -> Setting:
    """One option's value and source; a text that does not parse goes to ``errors``."""
    texts, source, where = _texts(opt, given, environ, loaded)
    if not opt.multiple:
        texts = texts[-1:]  # the last one wins, as in click
    parsed: list[object] = []
    for text in texts:
        try:
            parsed.append(opt.parse(text))
        except ValueError as exc:
            errors.append(f"Invalid value for {_name(opt, source, where)}: {exc}")
    value = tuple(parsed) if opt.multiple else (parsed[-1] if parsed else None)
    return Setting(opt, value, source, where)


def _given(pairs: list[Pair], errors: list[str]) -> tuple[dict[str, list[str]], set[Request]]:
    """Option texts from the command line by option name, and the requests; mistakes
    go to ``errors``, worded as click words them."""
    given: dict[str, list[str]] = {}
    requests: set[Request] = set()
    for name, value in pairs:
        bare = name[2:] if name.startswith("--") else ""
        option = BY_NAME.get(bare)
        if name in REQUESTS or (option is not None and option.flag):
            if value is not None:
                errors.append(f"Option {name!r} does not take a value.")
            elif name in REQUESTS:
                requests.add(REQUESTS[name])
            else:
                given.setdefault(bare, []).append("true")
        elif option is None and bare != "config":
            errors.append(f"No such option: {name!r}.")
        elif value is None:
            errors.append(f"Option {name!r} requires an argument.")
        else:
            given.setdefault(bare, []).append(value)
    return given, requests


def _texts(
    opt: Option,
    given: Mapping[str, list[str]],
    environ: Mapping[str, str],
    loaded: Loaded | None,
) -> tuple[list[str], Source, str]:
    """The option's effective texts, where they came from: flag > env > file > default."""
    if opt.name in given:
        return given[opt.name], "flag", ""
    env = environ.get(opt.envvar)
    if env:  # empty: not set (see the module's docstring)
        return (split_env(env) if opt.multiple else [env]), "env", opt.envvar
    if loaded is not None and opt.key in loaded.values:
        value = loaded.values[opt.key]
        line = loaded.line(opt.key)
        where = f"{loaded.path}:{line}" if line is not None else loaded.path
        return (value if isinstance(value, list) else [value]), "file", where
    return ([] if opt.default is None else [opt.default]), "default", ""


def _name(opt: Option, source: Source, where: str) -> str:
    """How an error names the value's place."""
    if source == "env":
        return f"{where} (--{opt.name})"
    if source == "flag":
        return f"'--{opt.name}'"
    return where if source == "file" else f"default of --{opt.name}"


def build_config(values: Mapping[str, object], argv: Sequence[str]) -> Config:
    """Config from parsed option values keyed by ``Option.key``.

    Each value has the type its option's kind parses to (pidone.options), which
    the casts below name.  Raises ValueError for rules between options.
    """
    if values["watchdog"] is not None and not values["notify"]:
        raise ValueError("--watchdog needs --notify (the app pings over the notify socket)")
    shutdown_signals = cast("tuple[int, ...]", values["shutdown_signal"])
    return Config(
        argv=tuple(argv),
        log_format=cast("LogFormat", values["log_format"]),
        log_level=cast("LogLevel", values["log_level"]),
        signal_to=cast("SignalTarget", values["signal_to"]),
        remap_exit=cast("tuple[tuple[int, int], ...]", tuple(_many(values, "remap_exit"))),
        shutdown_signals=frozenset(shutdown_signals or (signal.SIGTERM,)),
        stop_signal=cast("int", values["stop_signal"]),
        grace=cast("float", values["grace"]),
        pre_stop_delay=cast("float", values["pre_stop_delay"]),
        drains=cast("tuple[Step, ...]", (*_many(values, "drain"), *_many(values, "drain_http"))),
        termination_log=cast("str | None", values["termination_log"]),
        inits=cast("tuple[Command, ...]", tuple(_many(values, "init"))),
        post_start=cast(
            "tuple[Step, ...]",
            (*_many(values, "post_start"), *_many(values, "post_start_http")),
        ),
        hook_timeout=cast("float", values["hook_timeout"]),
        probes=tuple(
            _probe(values, kind) for kind in PROBES if values[f"{kind}_probe"] is not None
        ),
        status_addr=cast("tuple[str, int] | None", values["status_addr"]),
        notify=cast("bool", values["notify"]),
        prefix_output=cast("bool", values["prefix_output"]),
        watchdog=cast("float | None", values["watchdog"]),
        restart=cast("RestartPolicy", values["restart"]),
        restart_delay=cast("float", values["restart_delay"]),
        restart_delay_max=cast("float", values["restart_delay_max"]),
        restart_reset=cast("float", values["restart_reset"]),
        sidecars=build_sidecars(
            cast("tuple[tuple[str, Command], ...]", _many(values, "sidecar")),
            cast("tuple[tuple[str, Check | Notify], ...]", _many(values, "sidecar_ready")),
            cast("tuple[tuple[str, int], ...]", _many(values, "sidecar_stop_signal")),
            cast("tuple[tuple[str, float], ...]", _many(values, "sidecar_restart_delay")),
            cast("tuple[tuple[str, float], ...]", _many(values, "sidecar_restart_delay_max")),
        ),
        sidecar_ready_timeout=cast("float", values["sidecar_ready_timeout"]),
        user=cast("Credentials | None", values["user"]),
        no_new_privileges=cast("bool", values["no_new_privileges"]),
    )


def _many(values: Mapping[str, object], key: str) -> tuple[object, ...]:
    return cast("tuple[object, ...]", values[key])


def _probe(values: Mapping[str, object], kind: ProbeKind) -> Probe:
    return Probe(
        kind,
        cast("Check", values[f"{kind}_probe"]),
        initial_delay=cast("float", values[f"{kind}_initial_delay"]),
        period=cast("float", values[f"{kind}_period"]),
        timeout=cast("float", values[f"{kind}_timeout"]),
        failure_threshold=cast("int", values[f"{kind}_failure_threshold"]),
        success_threshold=cast("int", values["readiness_success_threshold"])
        if kind == "readiness"
        else 1,
    )
