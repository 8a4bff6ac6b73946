"""``pidone rehearse``: prove, under HTTP load, that an app stops within its grace losing nothing.

Selected by ``rehearse`` as the first argument (main.py hands over before it
parses anything else); nothing of this package is imported when pidone runs
an app.  The modules:

- :mod:`.cli`      the rehearsal's options; the rest goes to pidone untouched
- :mod:`.loadgen`  keep-alive HTTP/1.1 load and the classification of every request
- :mod:`.run`      pidone started as the ENTRYPOINT would, signalled, watched
- :mod:`.verdict`  the rules, the JSON report and the console summary
- :mod:`.svg`      the picture
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str]) -> int:
    """``pidone rehearse ARGS`` (``argv`` without ``rehearse``) -> exit code."""
    from pidone.rehearse import cli

    try:
        opts = cli.parse(list(argv))
        if opts.help:
            sys.stdout.write(cli.HELP)
            return EXIT_PASS
        return _rehearse(opts)
    except cli.UsageError as exc:
        sys.stderr.write(f"pidone rehearse: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # SIGTERM, from _stop_on_sigterm
        return int(exc.code or 0)


def _stop_on_sigterm() -> None:
    """A cancelled CI job SIGTERMs the rehearsal: unwind, so that pidone is killed too."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _rehearse(opts: object) -> int:
    from pidone.rehearse import run, svg, verdict
    from pidone.rehearse.cli import Options, UsageError

    assert isinstance(opts, Options)
    env = dict(os.environ)
    if opts.signal is not None:
        try:
            run.parse_signal(opts.signal)
        except ValueError as exc:
            raise UsageError(f"--signal: {exc}") from None
    for path, what in ((opts.report, "--report"), (opts.svg, "--svg")):
        if path is not None:
            _writable(path, what)
    settings = run.check(opts.pidone_args, env)
    _stop_on_sigterm()
    outcome = run.Rehearsal(opts, settings, env).run()
    fails = verdict.failures(opts, outcome)
    _print("\n".join(verdict.summary(opts, outcome, fails)))
    data = verdict.report(opts, outcome, fails)
    if opts.report is not None:
        with open(opts.report, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
    if opts.svg is not None:
        with open(opts.svg, "w", encoding="utf-8") as fh:
            fh.write(svg.render(data, verdict.markers(opts, outcome)))
    return EXIT_FAIL if fails else EXIT_PASS


def _print(text: str) -> None:
    """The summary, to a reader that may have gone (``| head``): the verdict still counts."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again while flushing at exit: point stdout at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _writable(path: str, what: str) -> None:
    """Refuse a report path that cannot be written before anything starts."""
    from pidone.rehearse.cli import UsageError

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UsageError(f"{what} {path!r}: directory {directory!r} is not writable")
