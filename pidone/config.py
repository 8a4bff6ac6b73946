"""The configuration: one frozen object, built once from the command line.

Every parser here is pure and raises ``ValueError`` with a message meant for
a person; the CLI turns those into one-line usage errors before anything is
started.  This module runs before the app is launched, so it imports only
the standard library's cheapest modules: the records are NamedTuples, not
dataclasses (``import dataclasses`` pulls in ``inspect``: ~12 ms here), and
shlex and urllib are imported only when a drain needs them.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeVar

if TYPE_CHECKING:
    from pidone.user import Credentials

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
SignalTarget = Literal["child", "group"]
RestartPolicy = Literal["never", "on-failure", "always"]
ProbeKind = Literal["startup", "readiness", "liveness"]

LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# Signals an init can never meaningfully be asked to send or to act on.
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class Command(NamedTuple):
    """A command to run: a drain, an init command, a hook, an exec probe, a sidecar.

    Split like a shell, run without one (no shell unless the user wrote one).
    """

    argv: tuple[str, ...]

    def describe(self) -> str:
        import shlex

        return shlex.join(self.argv)


class HttpCall(NamedTuple):
    """One HTTP request (a drain, a hook, a probe); 2xx and 3xx count as success."""

    method: str
    url: str

    def describe(self) -> str:
        return f"{self.method} {self.url}"


class TcpCheck(NamedTuple):
    """A probe that succeeds when a TCP connection is accepted."""

    host: str
    port: int

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


Step = Command | HttpCall  # what a drain or a post-start hook may be
Check = Command | HttpCall | TcpCheck
PROBES: tuple[ProbeKind, ...] = ("startup", "readiness", "liveness")


class Probe(NamedTuple):
    """A Kubernetes-style probe, with Kubernetes' defaults."""

    kind: str  # a ProbeKind; typed str until probes.py keys its tables by ProbeKind
    check: Check
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


T = TypeVar("T")
# A sidecar that says itself when it is ready, over sd_notify.
Notify = Literal["notify"]
NOTIFY: Notify = "notify"


class Sidecar(NamedTuple):
    """A process started before the app and stopped after it (a Kubernetes native sidecar)."""

    name: str
    argv: tuple[str, ...]
    # Checked until it passes before the next process starts; NOTIFY: its own sd_notify
    # socket, ready at READY=1.
    ready: Check | Notify | None = None
    stop_signal: int = signal.SIGTERM
    restart_delay: float | None = None  # None: --restart-delay
    restart_delay_max: float | None = None  # None: --restart-delay-max


SIDECAR_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _named(text: str, what: str, parse: Callable[[str], T]) -> tuple[str, T]:
    """``NAME=VALUE`` for one sidecar: the name checked, the value read by ``parse``."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise ValueError(f"{text!r} is not NAME={what}")
    if not 0 < len(name) <= 63 or not set(name) <= SIDECAR_NAME_CHARS:
        raise ValueError(f"{text!r}: the name {name!r} is not [a-z0-9-]+ (at most 63)")
    if name == "app" or (name.startswith("init-") and name[5:].isdigit()):
        # Output lines are named so (--prefix-output): a sidecar's would pass for them.
        raise ValueError(f"{text!r}: the name {name!r} is the app's or an init command's")
    try:
        return name, parse(rest)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def parse_sidecar(text: str) -> tuple[str, Command]:
    """``NAME=COMMAND``: the command split like a shell, run without one."""
    return _named(text, "COMMAND", parse_command)


def _ready_target(text: str) -> Check | Notify:
    return NOTIFY if text.strip() == NOTIFY else parse_probe_target(text)


def describe_ready(ready: Check | Notify | None) -> str | None:
    """A sidecar's ready check as the log and ``--check`` name it (None: running is enough)."""
    return ready if ready is None or isinstance(ready, str) else ready.describe()


def parse_sidecar_ready(text: str) -> tuple[str, Check | Notify]:
    """``NAME=TARGET`` with a probe target (http(s)://, tcp://, exec:) or ``notify``."""
    return _named(text, "TARGET", _ready_target)


def parse_sidecar_signal(text: str) -> tuple[str, int]:
    """``NAME=SIGNAL``: the signal that stops that sidecar."""
    return _named(text, "SIGNAL", parse_signal)


def parse_sidecar_duration(text: str) -> tuple[str, float]:
    """``NAME=SECONDS``."""
    return _named(text, "SECONDS", parse_duration)


def _per_sidecar(option: str, names: Sequence[str], given: Sequence[tuple[str, T]]) -> dict[str, T]:
    """One value per named sidecar, each naming one that exists."""
    found: dict[str, T] = {}
    for name, value in given:
        if name not in names:
            raise ValueError(f"--{option}: no sidecar is named {name!r}")
        if name in found:
            raise ValueError(f"--{option}: {name!r} is given twice")
        found[name] = value
    return found


def build_sidecars(
    commands: Sequence[tuple[str, Command]],
    ready: Sequence[tuple[str, Check | Notify]],
    stop_signals: Sequence[tuple[str, int]] = (),
    delays: Sequence[tuple[str, float]] = (),
    delays_max: Sequence[tuple[str, float]] = (),
) -> tuple[Sidecar, ...]:
    """Sidecars in their start order; a name is unique, and the other options name one."""
    names = [name for name, _ in commands]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"--sidecar: the name {name!r} is used twice")
    checks = _per_sidecar("sidecar-ready", names, ready)
    signals = _per_sidecar("sidecar-stop-signal", names, stop_signals)
    delay = _per_sidecar("sidecar-restart-delay", names, delays)
    delay_max = _per_sidecar("sidecar-restart-delay-max", names, delays_max)
    return tuple(
        Sidecar(
            name,
            step.argv,
            checks.get(name),
            signals.get(name, signal.SIGTERM),
            delay.get(name),
            delay_max.get(name),
        )
        for name, step in commands
    )


class Config(NamedTuple):
    argv: tuple[str, ...]
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    signal_to: SignalTarget = "child"
    remap_exit: tuple[tuple[int, int], ...] = ()
    shutdown_signals: frozenset[int] = frozenset({signal.SIGTERM})
    stop_signal: int = signal.SIGTERM
    grace: float = 8.0
    pre_stop_delay: float = 0.0
    drains: tuple[Step, ...] = ()
    termination_log: str | None = None
    inits: tuple[Command, ...] = ()
    post_start: tuple[Step, ...] = ()
    hook_timeout: float = 30.0
    probes: tuple[Probe, ...] = ()
    status_addr: tuple[str, int] | None = None
    notify: bool = False
    watchdog: float | None = None
    restart: RestartPolicy = "never"
    restart_delay: float = 10.0
    restart_delay_max: float = 300.0
    restart_reset: float = 600.0
    sidecars: tuple[Sidecar, ...] = ()
    sidecar_ready_timeout: float = 60.0
    prefix_output: bool = False
    user: Credentials | None = None  # --user: the app, hooks, drains and exec probes run as
    no_new_privileges: bool = False

    def remap(self, code: int) -> int:
        for src, dst in self.remap_exit:
            if code == src:
                return dst
        return code


def parse_duration(text: str) -> float:
    """Seconds as a finite, non-negative decimal number (fractions allowed)."""
    raw = text.strip()
    # float() would also take "1_0" (as 10) and non-ASCII digits: not durations.
    if not raw.isascii() or "_" in raw:
        raise ValueError(f"{text!r} is not a number of seconds")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def parse_signal(text: str) -> int:
    """A signal by name (TERM, SIGTERM, sigterm, RTMIN+3) or by number."""
    raw = text.strip()
    if raw.isascii() and raw.isdigit():
        number = int(raw)
        if number not in signal.valid_signals():
            raise ValueError(f"{raw} is not a valid signal number")
    else:
        name = raw.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        found = _signal_by_name(name)
        if found is None:
            raise ValueError(f"{text!r} is not a known signal name")
        number = found
    if number in _UNCATCHABLE:
        raise ValueError(f"{signal.Signals(number).name} cannot be used here")
    return number


def _signal_by_name(name: str) -> int | None:
    for base in ("SIGRTMIN", "SIGRTMAX"):
        if name.startswith(base) and name != base:
            offset_text = name[len(base) :]
            if not offset_text[1:].isdigit() or offset_text[0] not in "+-":
                return None
            number = int(getattr(signal, base)) + int(offset_text)
            rt_range = range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
            return number if number in rt_range else None
    member = getattr(signal.Signals, name, None)
    return int(member) if member is not None else None


def parse_shutdown_signal(text: str) -> int:
    """A signal pidone takes itself: not SIGCHLD, not a fault signal."""
    from pidone.signals import NOT_FORWARDED

    number = parse_signal(text)
    if number in NOT_FORWARDED:
        raise ValueError(f"{signal_name(number)} cannot start a shutdown")
    return number


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIGRTMIN+{number - signal.SIGRTMIN}"


def parse_remap(text: str) -> tuple[int, int]:
    """``FROM:TO``, both exit codes in 0..255."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not FROM:TO (two exit codes 0-255)")
    src, dst = (int(p) for p in parts)
    if src > 255 or dst > 255:
        raise ValueError(f"{text!r}: exit codes must be within 0-255")
    return src, dst


def parse_command(text: str) -> Command:
    import shlex

    if "\0" in text:
        raise ValueError(f"{text!r} contains a NUL byte")
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} does not parse as a command: {exc}") from None
    if not argv:
        raise ValueError(f"{text!r} is an empty command")
    return Command(tuple(argv))


def parse_http_call(text: str) -> HttpCall:
    """``[METHOD ]URL`` with an http or https URL that names a host."""
    from urllib.parse import urlsplit

    parts = text.split()
    if len(parts) == 1:
        method, url = "GET", parts[0]
    elif len(parts) == 2:
        method, url = parts[0].upper(), parts[1]
    else:
        raise ValueError(f"{text!r} is not '[METHOD ]URL'")
    if method not in HTTP_METHODS:
        raise ValueError(f"{parts[0]!r} is not an HTTP method ({', '.join(HTTP_METHODS)})")
    try:
        split = urlsplit(url)
        port_ok = split.port is None or split.port > 0
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
    if split.scheme not in ("http", "https") or not split.hostname or not port_ok:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    return HttpCall(method, url)


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A parser accepting one of ``choices``, in any case."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


def parse_path(text: str) -> str:
    """A file path to write to: not empty, not an existing directory."""
    if not text:
        raise ValueError("empty path")
    if "\0" in text:
        raise ValueError(f"{text!r} contains a NUL byte")
    if os.path.isdir(text):
        raise ValueError(f"{text!r} is a directory")
    return text


# Periods, timeouts and the watchdog are counted in microseconds by some peers
# (WATCHDOG_USEC) and in socket timeouts by others: a year is plenty.
MAX_INTERVAL = 365 * 86400.0


def parse_positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than 0 seconds")
    if value > MAX_INTERVAL:
        raise ValueError(f"{text!r} is more than {MAX_INTERVAL:g} seconds (a year)")
    return value


def parse_count(text: str) -> int:
    """A whole number >= 1 (probe thresholds)."""
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"{text!r} is not a whole number >= 1")
    return int(raw)


def _parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not {what} (HOST:PORT, port 1-65535)")
    return host, int(port)


def parse_status_addr(text: str) -> tuple[str, int]:
    host, port = _parse_host_port(text.strip(), "an address")
    try:
        host.encode("idna")  # what the resolver will need; too long a label fails here
    except UnicodeError:
        raise ValueError(f"{text!r}: {host!r} is not a valid host name") from None
    return host, port


def parse_probe_target(text: str) -> Check:
    """``http(s)://host:port/path``, ``tcp://host:port`` or ``exec:COMMAND``."""
    raw = text.strip()
    if raw.startswith(("http://", "https://")):
        return parse_http_call(raw)
    if raw.startswith("tcp://"):
        return TcpCheck(*_parse_host_port(raw[len("tcp://") :], "a tcp:// target"))
    if raw.startswith("exec:"):
        return parse_command(raw[len("exec:") :])
    raise ValueError(f"{text!r} is not http://..., https://..., tcp://HOST:PORT or exec:COMMAND")


def parse_bool(text: str) -> bool:
    """For flags set through the environment or a config file."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false, 1/0, yes/no, on/off)")
