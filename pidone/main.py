"""The entry point, read as a table of contents: command line -> Config -> boot -> supervise.

pidone's start-up path is the app's: nothing is imported before the app
runs that the start does not need (see :mod:`pidone.boot`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pidone.boot import boot
from pidone.settings import resolve, wants_check


def main(args: Sequence[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["rehearse"]:  # a mode of its own; `pidone -- rehearse` runs an app so named
        from pidone.rehearse import main as rehearse

        sys.exit(rehearse(argv[1:]))
    if wants_check(argv):  # validate and explain; nothing is started
        from pidone import check

        sys.exit(check.run(argv, os.environ))
    config = resolve(argv, os.environ).startable()
    if config is None:  # help, version or a mistake: click's to word
        from pidone import cli

        parsed = cli.parse(argv, os.environ)
        if isinstance(parsed, int):
            sys.exit(parsed)
        config = parsed
    started = boot(config)
    from pidone import supervisor  # the app runs: now the rest may load

    code = supervisor.supervise(started)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    # os._exit: no interpreter teardown to wait on (a drain thread may still
    # be stuck in a socket); every child is reaped already.
    os._exit(code)
