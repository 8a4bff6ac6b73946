"""The option table, and the lean parser that handles the everyday command line.

Every option is declared once, here.  :mod:`pidone.cli` turns the table into
the click command that owns ``--help``, ``--version`` and every error message.
But ``import click`` alone costs about 20 ms, paid before the app can start,
so the common case, a well-formed command line, is parsed here instead, with
the same parsers and the same rules.  Anything this parser is not sure about
(an unknown option, a bad value, ``--help``, no COMMAND) makes it step aside
and click parses the whole command line again, so every message a user sees
comes from click.  tests/test_options.py checks that both agree on whatever
the lean parser accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pidone.config import (
    LOG_LEVELS,
    PROBES,
    Config,
    Probe,
    parse_bool,
    parse_choice,
    parse_count,
    parse_duration,
    parse_exec_drain,
    parse_http_drain,
    parse_path,
    parse_positive_duration,
    parse_probe_target,
    parse_remap,
    parse_shutdown_signal,
    parse_signal,
    parse_status_addr,
)
from pidone.user import parse_user


class Option(NamedTuple):
    name: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    default: str | None = None  # raw text, parsed like a user's value
    multiple: bool = False
    flag: bool = False  # takes no value on the command line: present means "true"

    @property
    def envvar(self) -> str:
        return "PIDONE_" + self.name.upper().replace("-", "_")

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "log-format",
        parse_choice("auto", "json", "console"),
        "auto|json|console",
        "auto: console when stderr is a terminal, else one JSON object per line.",
        "auto",
    ),
    Option(
        "log-level",
        parse_choice(*LOG_LEVELS),
        "|".join(LOG_LEVELS),
        "Least severe level written.",
        "info",
    ),
    Option(
        "signal-to",
        parse_choice("child", "group"),
        "child|group",
        "Forward signals to the app only, or to its whole process group.",
        "child",
    ),
    Option(
        "remap-exit",
        parse_remap,
        "FROM:TO",
        "Replace exit code FROM by TO (repeatable; applied last).",
        multiple=True,
    ),
    Option(
        "shutdown-signal",
        parse_shutdown_signal,
        "SIGNAL",
        "Signal that starts the graceful shutdown (repeatable)  [default: TERM]",
        multiple=True,
    ),
    Option("stop-signal", parse_signal, "SIGNAL", "Signal sent to the app to stop it.", "TERM"),
    Option(
        "grace",
        parse_duration,
        "SECONDS",
        "Hard deadline, from the shutdown signal, for the delay, drains and the app's "
        "stop; then everything left is SIGKILLed. 0: SIGKILL at once.",
        "8",
    ),
    Option(
        "pre-stop-delay",
        parse_duration,
        "SECONDS",
        "Wait this long after the shutdown signal before draining (lets load balancers "
        "deregister the container).",
        "0",
    ),
    Option(
        "drain",
        parse_exec_drain,
        "COMMAND",
        "Command to run before the stop signal (repeatable, in order; split like a shell, "
        "run without one).",
        multiple=True,
    ),
    Option(
        "drain-http",
        parse_http_drain,
        "[METHOD ]URL",
        "HTTP request to send before the stop signal, after the drain commands "
        "(repeatable; 2xx/3xx is success).",
        multiple=True,
    ),
    Option(
        "termination-log",
        parse_path,
        "PATH",
        "Write a short report here at exit  [default: /dev/termination-log when writable]",
    ),
    Option(
        "init",
        parse_exec_drain,
        "COMMAND",
        "Command to run to completion before the app starts (repeatable, in order); the "
        "first that fails ends pidone with its exit code.",
        multiple=True,
    ),
    Option(
        "post-start",
        parse_exec_drain,
        "COMMAND",
        "Command to run right after the app starts, beside it (repeatable, in order); "
        "if one fails or times out the app is stopped.",
        multiple=True,
    ),
    Option(
        "post-start-http",
        parse_http_drain,
        "[METHOD ]URL",
        "HTTP request to send after the post-start commands (repeatable).",
        multiple=True,
    ),
    Option(
        "hook-timeout",
        parse_positive_duration,
        "SECONDS",
        "Time limit of each post-start hook.",
        "30",
    ),
    *(
        option
        for kind in PROBES
        for option in (
            Option(
                f"{kind}-probe",
                parse_probe_target,
                "TARGET",
                f"{kind.capitalize()} probe: http(s)://HOST:PORT/PATH (200-399), "
                "tcp://HOST:PORT (connection accepted) or exec:COMMAND (exit 0).",
            ),
            Option(
                f"{kind}-initial-delay",
                parse_duration,
                "SECONDS",
                "Wait this long after the app starts before the first probe.",
                "0",
            ),
            Option(f"{kind}-period", parse_positive_duration, "SECONDS", "Probe this often.", "10"),
            Option(
                f"{kind}-timeout",
                parse_positive_duration,
                "SECONDS",
                "A probe taking longer fails.",
                "1",
            ),
            Option(
                f"{kind}-failure-threshold",
                parse_count,
                "N",
                "This many failures in a row count as failed.",
                "3",
            ),
        )
    ),
    Option(
        "readiness-success-threshold",
        parse_count,
        "N",
        "This many successes in a row count as ready again.",
        "1",
    ),
    Option(
        "notify",
        parse_bool,
        "",
        "Give the app NOTIFY_SOCKET (systemd's sd_notify protocol); it counts as ready only "
        "after it sends READY=1.",
        "false",
        flag=True,
    ),
    Option(
        "watchdog",
        parse_positive_duration,
        "SECONDS",
        "With --notify: the app must send WATCHDOG=1 at least this often, or it is treated as "
        "a liveness failure (WATCHDOG_USEC is set for it).",
    ),
    Option(
        "restart",
        parse_choice("never", "on-failure", "always"),
        "never|on-failure|always",
        "Start the app again when it ends (never: pidone exits with it).",
        "never",
    ),
    Option(
        "restart-delay",
        parse_duration,
        "SECONDS",
        "First delay before a restart; doubles with each restart in a row.",
        "10",
    ),
    Option("restart-delay-max", parse_duration, "SECONDS", "The longest restart delay.", "300"),
    Option(
        "restart-reset",
        parse_duration,
        "SECONDS",
        "A run this long without failing resets the delay.",
        "600",
    ),
    Option(
        "user",
        parse_user,
        "USER[:GROUP]",
        "Run the app, and the hooks, drains and exec probes, as this user (name or uid) and "
        "group (default: the user's primary group), as gosu does. Init commands and pidone "
        "itself keep pidone's user.",
    ),
    Option(
        "no-new-privileges",
        parse_bool,
        "",
        "The app (and its hooks, drains and exec probes) cannot gain privileges: setuid "
        "binaries and file capabilities stop working (PR_SET_NO_NEW_PRIVS).",
        "false",
        flag=True,
    ),
    Option(
        "status-addr",
        parse_status_addr,
        "HOST:PORT",
        "Serve /livez, /readyz and /status here (off by default).",
    ),
)
BY_NAME = {opt.name: opt for opt in OPTIONS}

# Repeatable options take several values from one environment variable, one a line.
ENV_SEPARATOR = "\n"


def split_env(text: str) -> list[str]:
    """A repeatable option's values from its variable: one a line, blank lines skipped
    (a YAML ``|`` block ends with a newline)."""
    return [line for line in text.split(ENV_SEPARATOR) if line.strip()]


def build_config(values: Mapping[str, Any], argv: Sequence[str]) -> Config:
    """Config from parsed option values keyed by ``Option.key``.

    Raises ValueError for rules between options.
    """
    if values["watchdog"] is not None and not values["notify"]:
        raise ValueError("--watchdog needs --notify (the app pings over the notify socket)")
    return Config(
        argv=tuple(argv),
        log_format=values["log_format"],
        log_level=values["log_level"],
        signal_to=values["signal_to"],
        remap_exit=tuple(values["remap_exit"]),
        shutdown_signals=frozenset(values["shutdown_signal"] or (parse_signal("TERM"),)),
        stop_signal=values["stop_signal"],
        grace=values["grace"],
        pre_stop_delay=values["pre_stop_delay"],
        drains=(*values["drain"], *values["drain_http"]),
        termination_log=values["termination_log"],
        inits=tuple(values["init"]),
        post_start=(*values["post_start"], *values["post_start_http"]),
        hook_timeout=values["hook_timeout"],
        probes=tuple(
            Probe(
                kind,
                values[f"{kind}_probe"],
                initial_delay=values[f"{kind}_initial_delay"],
                period=values[f"{kind}_period"],
                timeout=values[f"{kind}_timeout"],
                failure_threshold=values[f"{kind}_failure_threshold"],
                success_threshold=values["readiness_success_threshold"]
                if kind == "readiness"
                else 1,
            )
            for kind in PROBES
            if values[f"{kind}_probe"] is not None
        ),
        status_addr=values["status_addr"],
        notify=values["notify"],
        watchdog=values["watchdog"],
        restart=values["restart"],
        restart_delay=values["restart_delay"],
        restart_delay_max=values["restart_delay_max"],
        restart_reset=values["restart_reset"],
        user=values["user"],
        no_new_privileges=values["no_new_privileges"],
    )


# --config FILE: read before the other options, whose defaults it supplies.
CONFIG_ENVVAR = "PIDONE_CONFIG"
# Flags (no value) the click command knows besides the options above.
FLAGS = ("--check", "--help", "-h", "--version")


def fast_parse(args: Sequence[str], environ: Mapping[str, str]) -> Config | None:
    """The Config for a well-formed command line, or None to let click decide."""
    split = _split(args)
    if split is None:
        return None
    given, command = split
    configs = given.pop("config", None)
    path = configs[-1] if configs else environ.get(CONFIG_ENVVAR) or None
    file_values: Mapping[str, str | list[str]] = {}
    try:
        if path is not None:
            from pidone import configfile

            file_values = configfile.load(path)
        return build_config(_values(given, environ, file_values), command)
    except ValueError:  # configfile.ConfigFileError included
        return None


def _split(args: Sequence[str]) -> tuple[dict[str, list[str]], Sequence[str]] | None:
    """Option texts by name, and the app's argv; None for anything unusual."""
    given: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return (given, args[i + 1 :]) if i + 1 < len(args) else None
        if not arg.startswith("-") or arg == "-":
            return given, args[i:]
        name, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or (name not in BY_NAME and name != "config"):
            return None  # short options (-h), --check and unknown ones are click's to explain
        if name in BY_NAME and BY_NAME[name].flag:
            if eq:
                return None  # click explains that a flag takes no value
            given.setdefault(name, []).append("true")
            i += 1
            continue
        if not eq:
            i += 1
            if i == len(args):
                return None
            value = args[i]
        given.setdefault(name, []).append(value)
        i += 1
    return None  # no COMMAND


def _values(
    given: Mapping[str, list[str]],
    environ: Mapping[str, str],
    file_values: Mapping[str, str | list[str]],
) -> dict[str, Any]:
    """Each option's parsed value: command line, else environment, else file, else default."""
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = given.get(opt.name)
        if raw is None and environ.get(opt.envvar):
            env = environ[opt.envvar]
            raw = split_env(env) if opt.multiple else [env]
        if raw is None and opt.key in file_values:
            from_file = file_values[opt.key]
            raw = from_file if isinstance(from_file, list) else [from_file]
        if opt.multiple:
            values[opt.key] = tuple(opt.parse(text) for text in raw or ())
        elif raw is not None:
            values[opt.key] = opt.parse(raw[-1])  # the last one wins, as in click
        else:
            values[opt.key] = None if opt.default is None else opt.parse(opt.default)
    return values


def scan(args: Sequence[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """The options before COMMAND as (option, value) pairs, and COMMAND; never fails.

    Splits the way click does: an option of the table (or ``--config``) takes
    the next argument as its value, ``--name=value`` carries its own; flags and
    unknown options take none.  The value is None when there is none (a value
    option at the very end).  For ``--check``, which reports every mistake.
    """
    pairs: list[tuple[str, str | None]] = []
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
        elif arg.startswith("--") and arg[2:] in BY_NAME and BY_NAME[arg[2:]].flag:
            pairs.append((arg, "true"))
        elif arg.startswith("--") and (arg[2:] in BY_NAME or arg[2:] == "config"):
            i += 1
            pairs.append((arg, args[i] if i < len(args) else None))
        else:
            pairs.append((arg, None))
        i += 1
    return pairs, []


def wants_check(args: Sequence[str]) -> bool:
    """``--check`` is among the options (and neither --help nor --version is)."""
    names = {name for name, _ in scan(args)[0]}
    return "--check" in names and not names & {"--help", "-h", "--version"}
