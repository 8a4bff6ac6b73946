"""The command line: options and environment variables -> one frozen Config.

Every mistake a user can type is caught here, reported as one line naming
the option and the value, with exit code 2, before anything is started.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from pidone import __version__
from pidone.config import (
    LOG_LEVELS,
    Config,
    DrainStep,
    parse_duration,
    parse_exec_drain,
    parse_http_drain,
    parse_remap,
    parse_signal,
)


class _Parsed(click.ParamType):  # type: ignore[type-arg]  # generic only in click's stubs
    """A click type backed by one of config's pure parsers."""

    # Repeatable options read from the environment split on newlines, not on
    # spaces: a drain command has spaces in it.
    envvar_list_splitter = "\n"

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Parsed("seconds", parse_duration)
SIGNAL = _Parsed("signal", parse_signal)
REMAP = _Parsed("from:to", parse_remap)
COMMAND = _Parsed("command", parse_exec_drain)
HTTP = _Parsed("[method ]url", parse_http_drain)


def _env(name: str) -> str:
    return "PIDONE_" + name.upper().replace("-", "_")


def _option(name: str, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option(f"--{name}", envvar=_env(name), show_envvar=True, **kwargs)


@click.command(
    context_settings={
        "allow_interspersed_args": False,
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
    },
    no_args_is_help=False,
)
@_option(
    "log-format",
    type=click.Choice(["auto", "json", "console"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="auto: console when stderr is a terminal, else one JSON object per line.",
)
@_option(
    "log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@_option(
    "signal-to",
    type=click.Choice(["child", "group"], case_sensitive=False),
    default="child",
    show_default=True,
    help="Forward signals to the app only, or to its whole process group.",
)
@_option(
    "remap-exit",
    type=REMAP,
    multiple=True,
    metavar="FROM:TO",
    help="Replace exit code FROM by TO (repeatable; applied last).",
)
@_option(
    "shutdown-signal",
    type=SIGNAL,
    multiple=True,
    metavar="SIGNAL",
    help="Signal that starts the graceful shutdown (repeatable)  [default: TERM]",
)
@_option(
    "stop-signal",
    type=SIGNAL,
    default="TERM",
    show_default=True,
    metavar="SIGNAL",
    help="Signal sent to the app to stop it.",
)
@_option(
    "grace",
    type=DURATION,
    default="8",
    show_default=True,
    metavar="SECONDS",
    help="Hard deadline, from the shutdown signal, for the delay, drains and the app's "
    "stop; then everything left is SIGKILLed. 0: SIGKILL at once.",
)
@_option(
    "pre-stop-delay",
    type=DURATION,
    default="0",
    show_default=True,
    metavar="SECONDS",
    help="Wait this long after the shutdown signal before draining (lets load "
    "balancers deregister the container).",
)
@_option(
    "drain",
    type=COMMAND,
    multiple=True,
    metavar="COMMAND",
    help="Command to run before the stop signal (repeatable, in order; split like a "
    "shell, run without one).",
)
@_option(
    "drain-http",
    type=HTTP,
    multiple=True,
    metavar="[METHOD ]URL",
    help="HTTP request to send before the stop signal, after the drain commands "
    "(repeatable; 2xx/3xx is success).",
)
@_option(
    "termination-log",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Write a short report here at exit  [default: /dev/termination-log when writable]",
)
@click.version_option(__version__, "--version", prog_name="pidone", message="%(prog)s %(version)s")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[--] COMMAND [ARG]...")
@click.pass_context
def command(ctx: click.Context, /, **opts: Any) -> Config:
    """Run COMMAND as the app of a container, as its PID 1.

    Forwards signals, reaps zombies, passes out the app's exit code (128+N for
    signal N, 127 not found, 126 not executable), and on the shutdown signal
    runs a graceful, bounded stop.
    """
    if not opts["command"]:
        click.echo(ctx.get_usage(), err=True)
        click.echo("Error: missing COMMAND", err=True)
        ctx.exit(2)
    drains: tuple[DrainStep, ...] = (*opts["drain"], *opts["drain_http"])
    return Config(
        argv=tuple(opts["command"]),
        log_format=opts["log_format"].lower(),
        log_level=opts["log_level"].lower(),
        signal_to=opts["signal_to"].lower(),
        remap_exit=tuple(opts["remap_exit"]),
        shutdown_signals=frozenset(opts["shutdown_signal"] or {parse_signal("TERM")}),
        stop_signal=opts["stop_signal"],
        grace=opts["grace"],
        pre_stop_delay=opts["pre_stop_delay"],
        drains=drains,
        termination_log=opts["termination_log"],
    )


def parse(args: Sequence[str] | None = None) -> Config | int:
    """The Config, or the exit code after --help, --version or a usage error."""
    try:
        result = command.main(args=args, prog_name="pidone", standalone_mode=False)
    except click.UsageError as exc:
        # One line naming the option and the bad value; no usage block, no traceback.
        click.echo(f"pidone: error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 2
    if isinstance(result, Config):
        return result
    return result if isinstance(result, int) else 0


def main(args: Sequence[str] | None = None) -> NoReturn:
    config = parse(args)
    if isinstance(config, int):
        sys.exit(config)
    from pidone import loop

    code = loop.main(config)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    # os._exit: no interpreter teardown to wait on (a drain thread may still
    # be stuck in a socket); every child is reaped already.
    os._exit(code)
