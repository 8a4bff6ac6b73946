"""The rehearsal's own options: parsed here, everything else goes to pidone untouched.

``pidone rehearse [REHEARSAL OPTIONS] [PIDONE OPTIONS] -- COMMAND [ARG]...``

The rehearsal options come first; the first argument that is not one of them
starts pidone's options, which are passed on exactly as given (pidone itself
validates them, through ``--check``).  A mistake in a rehearsal option is one
line on stderr and exit code 2, like every usage error of pidone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pidone.rehearse.loadgen import Target, parse_target

USAGE = "Usage: pidone rehearse [REHEARSAL OPTIONS] [PIDONE OPTIONS] -- COMMAND [ARG]..."

HELP = f"""{USAGE}

  Rehearse a container's shutdown under HTTP load and give a verdict: does
  COMMAND, run by pidone with these PIDONE OPTIONS exactly as the image's
  ENTRYPOINT would, stop within its grace without losing a request?

  pidone runs as PID 1 of a fresh PID namespace when it can (root and
  unshare), else as a subreaper. Once the app is ready and has been under
  load for --warmup seconds, the rehearsal sends pidone the shutdown signal,
  as a container runtime would, keeps the load going as a load balancer
  would, and judges what happened to every request and to pidone.

  Exit code: 0 pass, 1 fail, 2 bad usage.

Rehearsal options (before any pidone option):
  --load [METHOD ]URL       Endpoint to put under load (repeatable; required).
                            http:// only. Connections are shared out among
                            the endpoints in turn.
  --concurrency N           Persistent keep-alive connections. [default: 8]
  --rate R                  Requests per second in total. [default: as many
                            as the connections carry]
  --ready URL               Ready when this answers below 500. [default: the
                            app's own readiness when pidone has a readiness
                            or startup probe or --notify, else the first
                            --load endpoint]
  --ready-timeout SECONDS   Give up waiting for readiness. [default: 30]
  --warmup SECONDS          Load before the shutdown signal. [default: 2]
  --deregister-delay SECONDS
                            The load balancer's delay: until this long after
                            the signal, new connections are still opened;
                            after it, only open keep-alive connections carry
                            requests. [default: 1]
  --timeout SECONDS         The runtime's limit (docker stop -t, Kubernetes'
                            terminationGracePeriodSeconds): pidone still
                            running then is SIGKILLed, and fails. [default: 10]
  --signal SIGNAL           Shutdown signal to send. [default: pidone's first
                            --shutdown-signal]
  --expect-exit CODE        Exit code of pidone that passes (repeatable).
                            [default: 0 and 128 + the stop signal]
  --strict                  idle_closed requests fail the rehearsal too.
  --mode auto|pid1|subreaper
                            pidone as PID 1 of a new PID namespace (needs
                            root and unshare) or as a subreaper child.
                            [default: auto: pid1 when possible]
  --report FILE.json        Write the machine-readable report here.
  --svg FILE.svg            Draw the requests over time and pidone's phases.
  -h, --help                Show this message and exit.

Request classes: ok (status < 500), error_status (>= 500), refused (new
connection refused), idle_closed (idempotent request on a reused keep-alive
connection closed before any byte of the response; retried once before the
deregistration), lost (anything else without a complete response).
"""


class UsageError(Exception):
    """One line for the user; exit code 2."""


@dataclass
class Options:
    loads: list[Target] = field(default_factory=list)
    concurrency: int = 8
    rate: float | None = None
    ready: Target | None = None
    ready_timeout: float = 30.0
    warmup: float = 2.0
    deregister_delay: float = 1.0
    timeout: float = 10.0
    signal: str | None = None
    expect_exit: list[int] = field(default_factory=list)
    strict: bool = False
    mode: str = "auto"
    report: str | None = None
    svg: str | None = None
    pidone_args: list[str] = field(default_factory=list)  # pidone options, then --, then COMMAND
    help: bool = False


_FLAGS = ("--strict", "--help", "-h")


def parse(argv: list[str]) -> Options:
    """argv after ``rehearse`` -> Options; UsageError with one line on a mistake."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name in _FLAGS and not eq:
            if name == "--strict":
                opts.strict = True
            else:
                opts.help = True
            i += 1
            continue
        if name not in _SETTERS:
            break
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
        _set(opts, name, value)
    if opts.help:
        return opts
    return _rest(opts, argv[i:])


def _rest(opts: Options, rest: list[str]) -> Options:
    """What follows the rehearsal options: pidone's options, --, the command."""
    command_at = rest.index("--") if "--" in rest else len(rest)
    misplaced = [a for a in rest[:command_at] if a.partition("=")[0] in _SETTERS or a in _FLAGS]
    if misplaced:
        raise UsageError(f"{misplaced[0]}: rehearsal options come before pidone's options")
    if not opts.loads:
        raise UsageError("--load URL is required (the endpoint to put under load)")
    if command_at >= len(rest) - 1:
        raise UsageError("no COMMAND: give the app after --, as in the image's ENTRYPOINT + CMD")
    opts.pidone_args = rest
    return opts


def _set(opts: Options, name: str, value: str) -> None:
    try:
        _SETTERS[name](opts, value)
    except ValueError as exc:
        raise UsageError(f"{name} {value!r}: {exc}") from None


def _append_load(opts: Options, value: str) -> None:
    opts.loads.append(parse_target(value))


def _append_exit(opts: Options, value: str) -> None:
    opts.expect_exit.append(_exit_code(value))


_SETTERS: dict[str, Callable[[Options, str], None]] = {
    "--load": _append_load,
    "--ready": lambda o, v: setattr(o, "ready", parse_target(v)),
    "--concurrency": lambda o, v: setattr(o, "concurrency", _count(v)),
    "--rate": lambda o, v: setattr(o, "rate", _seconds(v, positive=True)),
    "--ready-timeout": lambda o, v: setattr(o, "ready_timeout", _seconds(v, positive=True)),
    "--warmup": lambda o, v: setattr(o, "warmup", _seconds(v)),
    "--deregister-delay": lambda o, v: setattr(o, "deregister_delay", _seconds(v)),
    "--timeout": lambda o, v: setattr(o, "timeout", _seconds(v, positive=True)),
    "--signal": lambda o, v: setattr(o, "signal", v),
    "--expect-exit": _append_exit,
    "--mode": lambda o, v: setattr(o, "mode", _mode(v)),
    "--report": lambda o, v: setattr(o, "report", v),
    "--svg": lambda o, v: setattr(o, "svg", v),
}


def _seconds(text: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError("must be a positive number" if positive else "must be 0 or more")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10000:
        raise ValueError("must be a whole number from 1 to 10000")
    return int(text)


def _exit_code(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise ValueError("must be an exit code from 0 to 255")
    return int(text)


def _mode(text: str) -> str:
    if text not in ("auto", "pid1", "subreaper"):
        raise ValueError("must be auto, pid1 or subreaper")
    return text
