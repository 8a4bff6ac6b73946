"""``pidone --check``: validate the configuration and explain it, start nothing.

Meant for CI: run an image's ENTRYPOINT with ``--check`` added and it either
prints the effective settings (each with where it came from: default, file,
env or flag) and the shutdown plan as a timeline, exit code 0, or lists
*every* mistake it found, one line each, exit code 2.

The values, their sources and the errors come from the resolver a real start
uses (:func:`pidone.settings.resolve`): what ``--check`` accepts is what
starts.  The timeline follows the budget rules of :mod:`pidone.lifecycle`.
Nothing here is on the start-up path of an app, so this module may import
whatever it likes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TextIO

from pidone.config import Command, Config, HttpCall, TcpCheck, describe_ready, signal_name
from pidone.lifecycle import KILL_WAIT, app_reserve
from pidone.options import Kind, Option
from pidone.settings import Settings, resolve


class Step(NamedTuple):
    """One line of the shutdown timeline, in seconds from the shutdown signal."""

    start: float
    duration: float | None
    what: str


def run(
    args: Sequence[str],
    environ: Mapping[str, str],
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Check ``args`` (the command line, with ``--check`` in it); the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    resolved = resolve(args, environ)
    if resolved.errors:
        for error in resolved.errors:
            print(f"pidone: error: {error}", file=err)
        count = len(resolved.errors)
        print(f"pidone --check: {count} error{'s' if count > 1 else ''}", file=err)
        return 2
    out.write(report(resolved))
    out.flush()
    return 0


# The shutdown plan -----------------------------------------------------------------


def plan(config: Config) -> list[Step]:
    """The shutdown as a timeline, worst case: every drain uses its whole share.

    Same rules as :class:`pidone.lifecycle.Shutdown`: the pre-stop delay and
    the drains share the window ``grace - app_reserve(grace)``; each drain gets
    an equal share of what is left of it when it starts; the stop signal goes
    out when the drains are done; at ``grace`` everything left is SIGKILLed.
    """
    grace = config.grace
    stop = signal_name(config.stop_signal)
    steps = [Step(0.0, None, "shutdown signal received")]
    if grace <= 0:
        steps.append(Step(0.0, None, "grace 0: SIGKILL to everything at once, no drains"))
        steps.append(Step(0.0, KILL_WAIT, "reap what was killed; pidone exits at the latest"))
        return steps
    reserve = app_reserve(grace)
    window = grace - reserve
    now = 0.0
    if config.pre_stop_delay > 0 or config.drains:
        delay = min(config.pre_stop_delay, window)
        if config.pre_stop_delay > 0:
            cut = f" (cut from {config.pre_stop_delay:g}s)" if delay < config.pre_stop_delay else ""
            steps.append(Step(0.0, delay, f"pre-stop delay{cut}"))
        now = delay
        count = len(config.drains)
        for index, drain in enumerate(config.drains):
            remaining = count - index
            if now >= window:
                steps.append(Step(now, 0.0, f"drains {index + 1}-{count} skipped: no time left"))
                break
            share = (window - now) / remaining
            steps.append(Step(now, share, f"drain {index + 1}/{count}: {drain.describe()}"))
            now += share
    to = "the app" if config.signal_to == "child" else "the app's process group"
    steps.append(
        Step(
            now,
            grace - now,
            f"stop signal {stop} to {to}; its time to exit (reserve {reserve:g}s)",
        )
    )
    if config.sidecars:
        order = " -> ".join(
            f"{sc.name} ({signal_name(sc.stop_signal)})" for sc in reversed(config.sidecars)
        )
        steps.append(
            Step(
                now,
                grace - now,
                f"once the app has exited: sidecars {order}, each after the one before has "
                "exited, in what is left of the grace (worst case: none, SIGKILL at the deadline)",
            )
        )
    steps.append(Step(grace, KILL_WAIT, "kill deadline: SIGKILL to everything still running"))
    steps.append(Step(grace + KILL_WAIT, None, "pidone exits at the latest"))
    return steps


def start_order(config: Config) -> list[str]:
    """What starts, in order, and what each waits for."""
    lines = [
        f"init {i + 1}: {step.describe()} (must exit 0)" for i, step in enumerate(config.inits)
    ]
    timeout = f"{config.sidecar_ready_timeout:g}s"
    for sidecar in config.sidecars:
        ready = describe_ready(sidecar.ready)
        gate = "running" if ready is None else f"ready ({ready})"
        command = shlex.join(sidecar.argv)
        lines.append(f"sidecar {sidecar.name}: {command}; waits until {gate}, at most {timeout}")
    lines.append(f"app: {shlex.join(config.argv) if config.argv else '(none)'}")
    return lines


def warnings(config: Config) -> list[str]:
    """Settings that are valid but probably not what was meant."""
    found: list[str] = []
    grace = config.grace
    if grace <= 0 and (config.pre_stop_delay > 0 or config.drains):
        found.append("grace is 0: the pre-stop delay and the drains never run")
    elif grace > 0:
        window = grace - app_reserve(grace)
        if config.pre_stop_delay > window:
            found.append(
                f"pre-stop-delay {config.pre_stop_delay:g}s is cut to {window:g}s: the app keeps "
                f"a reserve of {app_reserve(grace):g}s of the {grace:g}s grace"
            )
        if config.drains and config.pre_stop_delay >= window:
            found.append("the pre-stop delay uses the whole drain window: no drain will run")
    if not config.argv:
        found.append("no COMMAND given: only the options were checked")
    elif os.sep not in config.argv[0] and shutil.which(config.argv[0]) is None:
        found.append(
            f"COMMAND {config.argv[0]!r} is not on this machine's PATH "
            "(fine if it exists where pidone will run)"
        )
    return found


# The report ------------------------------------------------------------------------


def report(resolved: Settings) -> str:
    """The text ``--check`` prints for a valid configuration."""
    config = resolved.config
    assert config is not None
    lines = ["pidone --check: configuration OK", "", "settings:"]
    rows: list[tuple[str, str, str]] = []
    if resolved.config_file is not None:
        rows.append(("config", resolved.config_file.path, resolved.config_file.describe_source()))
    for setting in resolved.settings:
        shown = _show(setting.option, setting.value)
        rows.append((setting.option.name, shown[0], setting.describe_source()))
        rows.extend(("", more, "") for more in shown[1:])
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(48, max(len(value) for _, value, _ in rows))
    for name, value, source in rows:
        lines.append(f"  {name:<{name_width}}  {value:<{value_width}}  {source}".rstrip())
    command = " ".join(resolved.command) if resolved.command else "(none)"
    lines += ["", f"command: {command}", ""]
    if config.inits or config.sidecars:
        lines += ["start order:", *(f"  {line}" for line in start_order(config)), ""]
    lines.append(
        f"shutdown plan (grace {config.grace:g}s; worst case: each drain uses its whole share):"
    )
    for step in plan(config):
        length = "" if step.duration is None else f"{step.duration:.3f}s"
        lines.append(f"  +{step.start:8.3f}s  {length:>9}  {step.what}")
    found = [
        f"{name} is set but empty: taken as not set" for name in resolved.empty_env
    ] + warnings(config)
    if found:
        lines += ["", "warnings:"]
        lines += [f"  {warning}" for warning in found]
    return "\n".join(lines) + "\n"


def _show(opt: Option, value: object) -> list[str]:
    """The value as text: one line, or one per value for repeatable options."""
    if opt.name == "shutdown-signal" and not value:
        return ["SIGTERM"]
    if isinstance(value, tuple) and opt.multiple:
        show = _named if opt.kind.startswith("sidecar") else _one  # (NAME, value) pairs
        return [show(opt, item) for item in value] or ["-"]
    if value is None:
        if opt.name == "termination-log":
            return ["- (/dev/termination-log when writable)"]
        return ["-"]
    return [_one(opt, value)]


def _named(opt: Option, value: object) -> str:
    assert isinstance(value, tuple)
    kind: Kind = _SIDECAR_VALUE_KINDS.get(opt.kind, "command")
    return f"{value[0]}={_one(Option(opt.name, kind, opt.metavar, opt.help), value[1])}"


# What the value of a NAME=VALUE sidecar option is shown as.
_SIDECAR_VALUE_KINDS: dict[str, Kind] = {
    "sidecar-ready": "probe",
    "sidecar-signal": "signal",
    "sidecar-duration": "duration",
}


def _one(opt: Option, value: object) -> str:
    if opt.kind in ("signal", "shutdown-signal") and isinstance(value, int):
        return signal_name(value)
    if opt.kind in ("duration", "interval") and isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, Command) and opt.kind == "probe":
        return "exec:" + value.describe()
    if isinstance(value, Command | HttpCall | TcpCheck):
        return value.describe()
    if opt.kind in ("remap", "address") and isinstance(value, tuple):
        return f"{value[0]}:{value[1]}"  # FROM:TO, HOST:PORT
    return str(value)
