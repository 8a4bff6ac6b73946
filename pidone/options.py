"""The option table: every option pidone takes, declared once, with its kind.

Nothing here parses a command line.  :mod:`pidone.settings` resolves the
table against argv, the environment and a config file; :mod:`pidone.cli`
turns it into the click command behind ``--help``, ``--version`` and the
error messages; :mod:`pidone.configfile` reads the same names from TOML.
An option's *kind* says which pure parser of :mod:`pidone.config` reads its
text, whether a config file may give it as a TOML number, and how ``--check``
shows its value: every other module asks the kind, never the parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from pidone.config import (
    LOG_LEVELS,
    PROBES,
    parse_bool,
    parse_choice,
    parse_command,
    parse_count,
    parse_duration,
    parse_http_call,
    parse_path,
    parse_positive_duration,
    parse_probe_target,
    parse_remap,
    parse_shutdown_signal,
    parse_sidecar,
    parse_sidecar_duration,
    parse_sidecar_ready,
    parse_sidecar_signal,
    parse_signal,
    parse_status_addr,
)
from pidone.user import parse_user

Kind = Literal[
    "choice",  # one of Option.choices, any case
    "duration",  # seconds >= 0
    "interval",  # seconds > 0, at most a year (periods, timeouts, the watchdog)
    "count",  # a whole number >= 1
    "signal",  # a catchable signal, by name or number
    "shutdown-signal",  # a signal pidone may take itself
    "remap",  # FROM:TO exit codes
    "command",  # split like a shell, run without one
    "http",  # [METHOD ]URL
    "path",  # a file to write
    "probe",  # http(s)://, tcp:// or exec:
    "address",  # HOST:PORT
    "flag",  # no value on the command line; true/false elsewhere
    "sidecar",  # NAME=COMMAND
    "sidecar-ready",  # NAME=TARGET, a probe target
    "sidecar-signal",  # NAME=SIGNAL
    "sidecar-duration",  # NAME=SECONDS
    "user",  # USER[:GROUP], by name or number, resolved to ids (pidone.user)
]
# Kinds a config file may give as TOML numbers (all others take strings).
NUMERIC_KINDS: frozenset[Kind] = frozenset(
    {"duration", "interval", "count", "signal", "shutdown-signal"}
)
_PARSERS: dict[Kind, Callable[[str], object]] = {
    "duration": parse_duration,
    "interval": parse_positive_duration,
    "count": parse_count,
    "signal": parse_signal,
    "shutdown-signal": parse_shutdown_signal,
    "remap": parse_remap,
    "command": parse_command,
    "http": parse_http_call,
    "path": parse_path,
    "probe": parse_probe_target,
    "address": parse_status_addr,
    "flag": parse_bool,
    "sidecar": parse_sidecar,
    "sidecar-ready": parse_sidecar_ready,
    "sidecar-signal": parse_sidecar_signal,
    "sidecar-duration": parse_sidecar_duration,
    "user": parse_user,
}


class Option(NamedTuple):
    name: str
    kind: Kind
    metavar: str
    help: str
    default: str | None = None  # raw text, parsed like a user's value
    multiple: bool = False
    choices: tuple[str, ...] = ()  # for kind "choice"

    @property
    def envvar(self) -> str:
        return "PIDONE_" + self.name.upper().replace("-", "_")

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def flag(self) -> bool:
        """Takes no value on the command line: present means "true"."""
        return self.kind == "flag"

    def parse(self, text: str) -> object:
        """The value of one text; ValueError with a message meant for a person."""
        if self.kind == "choice":
            return parse_choice(*self.choices)(text)
        return _PARSERS[self.kind](text)


def _choice(name: str, choices: tuple[str, ...], help_text: str, default: str) -> Option:
    return Option(name, "choice", "|".join(choices), help_text, default, choices=choices)


OPTIONS: tuple[Option, ...] = (
    _choice(
        "log-format",
        ("auto", "json", "console"),
        "auto: console when stderr is a terminal, else one JSON object per line.",
        "auto",
    ),
    _choice("log-level", LOG_LEVELS, "Least severe level written.", "info"),
    _choice(
        "signal-to",
        ("child", "group"),
        "Forward signals to the app only, or to its whole process group.",
        "child",
    ),
    Option(
        "remap-exit",
        "remap",
        "FROM:TO",
        "Replace exit code FROM by TO (repeatable; applied last).",
        multiple=True,
    ),
    Option(
        "shutdown-signal",
        "shutdown-signal",
        "SIGNAL",
        "Signal that starts the graceful shutdown (repeatable)  [default: TERM]",
        multiple=True,
    ),
    Option("stop-signal", "signal", "SIGNAL", "Signal sent to the app to stop it.", "TERM"),
    Option(
        "grace",
        "duration",
        "SECONDS",
        "Hard deadline, from the shutdown signal, for the delay, drains and the app's "
        "stop; then everything left is SIGKILLed. 0: SIGKILL at once.",
        "8",
    ),
    Option(
        "pre-stop-delay",
        "duration",
        "SECONDS",
        "Wait this long after the shutdown signal before draining (lets load balancers "
        "deregister the container).",
        "0",
    ),
    Option(
        "drain",
        "command",
        "COMMAND",
        "Command to run before the stop signal (repeatable, in order; split like a shell, "
        "run without one).",
        multiple=True,
    ),
    Option(
        "drain-http",
        "http",
        "[METHOD ]URL",
        "HTTP request to send before the stop signal, after the drain commands "
        "(repeatable; 2xx/3xx is success).",
        multiple=True,
    ),
    Option(
        "termination-log",
        "path",
        "PATH",
        "Write a short report here at exit  [default: /dev/termination-log when writable]",
    ),
    Option(
        "init",
        "command",
        "COMMAND",
        "Command to run to completion before the app starts (repeatable, in order); the "
        "first that fails ends pidone with its exit code.",
        multiple=True,
    ),
    Option(
        "post-start",
        "command",
        "COMMAND",
        "Command to run right after the app starts, beside it (repeatable, in order); "
        "if one fails or times out the app is stopped.",
        multiple=True,
    ),
    Option(
        "post-start-http",
        "http",
        "[METHOD ]URL",
        "HTTP request to send after the post-start commands (repeatable).",
        multiple=True,
    ),
    Option(
        "hook-timeout",
        "interval",
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
                "probe",
                "TARGET",
                f"{kind.capitalize()} probe: http(s)://HOST:PORT/PATH (200-399), "
                "tcp://HOST:PORT (connection accepted) or exec:COMMAND (exit 0).",
            ),
            Option(
                f"{kind}-initial-delay",
                "duration",
                "SECONDS",
                "Wait this long after the app starts before the first probe.",
                "0",
            ),
            Option(f"{kind}-period", "interval", "SECONDS", "Probe this often.", "10"),
            Option(
                f"{kind}-timeout",
                "interval",
                "SECONDS",
                "A probe taking longer fails.",
                "1",
            ),
            Option(
                f"{kind}-failure-threshold",
                "count",
                "N",
                "This many failures in a row count as failed.",
                "3",
            ),
        )
    ),
    Option(
        "readiness-success-threshold",
        "count",
        "N",
        "This many successes in a row count as ready again.",
        "1",
    ),
    Option(
        "notify",
        "flag",
        "",
        "Give the app NOTIFY_SOCKET (systemd's sd_notify protocol); it counts as ready only "
        "after it sends READY=1.",
        "false",
    ),
    Option(
        "watchdog",
        "interval",
        "SECONDS",
        "With --notify: the app must send WATCHDOG=1 at least this often, or it is treated as "
        "a liveness failure (WATCHDOG_USEC is set for it).",
    ),
    _choice(
        "restart",
        ("never", "on-failure", "always"),
        "Start the app again when it ends (never: pidone exits with it).",
        "never",
    ),
    Option(
        "restart-delay",
        "duration",
        "SECONDS",
        "First delay before a restart; doubles with each restart in a row.",
        "10",
    ),
    Option("restart-delay-max", "duration", "SECONDS", "The longest restart delay.", "300"),
    Option(
        "restart-reset",
        "duration",
        "SECONDS",
        "A run this long without failing resets the delay.",
        "600",
    ),
    Option(
        "user",
        "user",
        "USER[:GROUP]",
        "Run the app, and the hooks, drains and exec probes, as this user (name or uid) and "
        "group (default: the user's primary group), as gosu does. Init commands and pidone "
        "itself keep pidone's user.",
    ),
    Option(
        "no-new-privileges",
        "flag",
        "",
        "The app (and its hooks, drains and exec probes) cannot gain privileges: setuid "
        "binaries and file capabilities stop working (PR_SET_NO_NEW_PRIVS).",
        "false",
    ),
    Option(
        "status-addr",
        "address",
        "HOST:PORT",
        "Serve /livez, /readyz and /status here (off by default).",
    ),
    Option(
        "sidecar",
        "sidecar",
        "NAME=COMMAND",
        "A process started before the app, in order, and stopped after it, in reverse "
        "order (repeatable; NAME is [a-z0-9-]+, not app or init-N). Restarted with "
        "backoff if it exits.",
        multiple=True,
    ),
    Option(
        "sidecar-ready",
        "sidecar-ready",
        "NAME=TARGET",
        "The sidecar is ready once this passes: http(s)://, tcp:// or exec: as for "
        "probes. The next process starts only then (repeatable).",
        multiple=True,
    ),
    Option(
        "sidecar-stop-signal",
        "sidecar-signal",
        "NAME=SIGNAL",
        "The signal that stops that sidecar (repeatable)  [default: TERM]",
        multiple=True,
    ),
    Option(
        "sidecar-restart-delay",
        "sidecar-duration",
        "NAME=SECONDS",
        "That sidecar's first restart delay (repeatable)  [default: --restart-delay]",
        multiple=True,
    ),
    Option(
        "sidecar-restart-delay-max",
        "sidecar-duration",
        "NAME=SECONDS",
        "That sidecar's longest restart delay (repeatable)  [default: --restart-delay-max]",
        multiple=True,
    ),
    Option(
        "prefix-output",
        "flag",
        "",
        "Relay the output of the app, the sidecars and the init commands through pidone, "
        "each line prefixed with its name; never blocks pidone (what cannot be written is "
        "dropped and counted).",
        "false",
    ),
    Option(
        "sidecar-ready-timeout",
        "interval",
        "SECONDS",
        "A sidecar not running and ready this long after its start fails the start.",
        "60",
    ),
)
BY_NAME = {opt.name: opt for opt in OPTIONS}

# --config FILE: read before the other options, whose defaults it supplies.
CONFIG_ENVVAR = "PIDONE_CONFIG"

# Repeatable options take several values from one environment variable, one a line.
ENV_SEPARATOR = "\n"


def split_env(text: str) -> list[str]:
    """A repeatable option's values from its variable: one a line, blank lines skipped
    (a YAML ``|`` block ends with a newline)."""
    return [line for line in text.split(ENV_SEPARATOR) if line.strip()]
