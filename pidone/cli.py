"""The click command: the face of pidone for ``--help``, ``--version`` and every usage error.

The command is generated from :data:`pidone.options.OPTIONS`, the one place
options are declared.  A well-formed command line never gets here: the
resolver (:mod:`pidone.settings`) gives its Config straight away.  This
module is imported for help, for the version, and to turn any mistake into
one line naming the option and the value, with exit code 2, before anything
is started.

click reads the same inputs as the resolver: the environment it is handed
(never ``os.environ`` behind its back: see ``_Option``), and the same config
file through :func:`pidone.configfile.load`, made the context's
``default_map`` by the eager ``--config``, so its values rank below the
command line and the environment and above the defaults.  ``--check`` is
shown here but handled by :mod:`pidone.check`, which reports every mistake
instead of the first.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import click

from pidone import __version__
from pidone.config import Config
from pidone.options import CONFIG_ENVVAR, ENV_SEPARATOR, OPTIONS, Option, split_env
from pidone.settings import build_config, wants_check


def _environ(ctx: click.Context) -> Mapping[str, str]:
    """The environment the resolver read, handed to click as the context's ``obj``."""
    environ = ctx.find_root().obj
    return environ if isinstance(environ, Mapping) else os.environ


class _Option(click.Option):
    """A click option that reads its variable from the resolver's environment."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        if not isinstance(self.envvar, str):
            return None
        return _environ(ctx).get(self.envvar) or None  # empty: not set, as in the resolver


class _Parsed(click.ParamType):  # type: ignore[type-arg]  # generic only in click's stubs
    """A click type backed by one of config's pure parsers."""

    envvar_list_splitter = ENV_SEPARATOR

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return split_env(rv)

    def __init__(self, option: Option) -> None:
        self.name = option.metavar
        self._parse = option.parse

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# What click's decorators wrap: the command function, then the command.
_Decorated = Callable[..., object]


def _click_option(option: Option) -> Callable[[_Decorated], _Decorated]:
    if option.flag:
        return click.option(
            f"--{option.name}",
            cls=_Option,
            is_flag=True,
            flag_value="true",
            default=None,
            callback=functools.partial(_flag_value, option),
            help=f"{option.help}  [env var: {option.envvar}]",
        )
    return click.option(
        f"--{option.name}",
        cls=_Option,
        envvar=option.envvar,
        show_envvar=True,
        type=_Parsed(option),
        multiple=option.multiple,
        default=option.default,
        show_default=option.default is not None,
        metavar=option.metavar,
        help=option.help,
    )


def _flag_value(
    option: Option, ctx: click.Context, param: click.Parameter, value: str | None
) -> object:
    """A flag: present on the command line, else the environment, the file, the default.

    click reads a flag's environment variable leniently (any unknown word is
    "false"); pidone refuses a value it does not understand, as everywhere.
    """
    source = ctx.get_parameter_source(param.name or "")
    text = value
    environ = _environ(ctx)
    if source is not click.core.ParameterSource.COMMANDLINE and environ.get(option.envvar):
        text = environ[option.envvar]
    if text is None:
        text = option.default or "false"  # a flag's default is always given; off if not
    try:
        return option.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
    if path is None:
        return
    from pidone import configfile

    try:
        ctx.default_map = configfile.load(path)
    except configfile.ConfigFileError as exc:
        raise click.UsageError(str(exc), ctx) from None


def _command(ctx: click.Context, /, **values: object) -> Config:
    """Run COMMAND as the app of a container, as its PID 1.

    Forwards signals, reaps zombies, passes out the app's exit code (128+N for
    signal N, 127 not found, 126 not executable), and on the shutdown signal
    runs a graceful, bounded stop.

    `pidone rehearse --help`: rehearse that stop under HTTP load and get a
    verdict (for CI). An app named rehearse runs with `pidone -- rehearse`.
    """
    argv = cast("tuple[str, ...]", values.pop("command"))  # nargs=-1: a tuple of texts
    values.pop("check")  # parse() hands --check to pidone.check before click sees it
    if not argv:
        click.echo(ctx.get_usage(), err=True)
        click.echo("Error: missing COMMAND", err=True)
        ctx.exit(2)
    try:
        return build_config(values, argv)
    except ValueError as exc:  # a rule between options, e.g. --watchdog without --notify
        raise click.UsageError(str(exc), ctx) from None


def _build() -> click.Command:
    func: _Decorated = click.pass_context(_command)
    func = click.argument(
        "command", nargs=-1, type=click.UNPROCESSED, metavar="[--] COMMAND [ARG]..."
    )(func)
    func = click.version_option(
        __version__, "--version", prog_name="pidone", message="%(prog)s %(version)s"
    )(func)
    func = click.option(
        "--check",
        is_flag=True,
        help="Validate the configuration (COMMAND optional), print the effective settings, "
        "where each came from and the shutdown plan, and exit: 0, or 2 listing every error. "
        "Nothing is started.",
    )(func)
    for option in reversed(OPTIONS):
        func = _click_option(option)(func)
    func = click.option(
        "--config",
        cls=_Option,
        envvar=CONFIG_ENVVAR,
        show_envvar=True,
        metavar="FILE",
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="TOML file with any of the options below, under the same names (probes as "
        "[probes.KIND] tables, sidecars as [sidecars.NAME] tables). The command line and "
        "the environment take precedence.",
    )(func)
    settings = {
        "allow_interspersed_args": False,
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
    }
    return click.command(name="pidone", context_settings=settings)(func)


command = _build()


def parse(args: Sequence[str], environ: Mapping[str, str] | None = None) -> Config | int:
    """The Config, or the exit code after --help, --version, --check or a usage error."""
    environ = os.environ if environ is None else environ
    if wants_check(args):
        from pidone import check

        return check.run(args, environ)
    try:
        result = command.main(
            args=list(args), prog_name="pidone", standalone_mode=False, obj=environ
        )
    except click.UsageError as exc:
        # One line naming the option and the bad value; no usage block, no traceback.
        click.echo(f"pidone: error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 2
    return result if isinstance(result, Config | int) else 0
