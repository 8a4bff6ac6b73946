"""One rehearsal: start pidone as the ENTRYPOINT would, load it, signal it, watch it stop.

pidone is a black box here, seen only through its command line, its JSON log
and its status endpoint: ``python -m pidone --check`` tells the effective
settings (the same resolution of flags, ``PIDONE_*`` variables and
``--config`` as a real start, and pidone's own error lines when they are
wrong), then ``python -m pidone [PIDONE OPTIONS] --log-format json -- COMMAND``
runs for real -- as PID 1 of a fresh PID namespace (``unshare --pid --fork
--mount-proc``) when we are root and have unshare, else as a subreaper child.
Only two options are added: ``--log-format json`` (last, so it wins) to read
the ``terminated`` line, and ``--status-addr`` on a free loopback port when
the app's readiness is pidone's (probes, ``--notify``) and none was given.

Everything happens in one selector loop: the load generator's sockets,
pidone's stdout and stderr (drained continuously, so neither pidone nor the
app ever blocks on a full pipe) and a pidfd that becomes readable the moment
pidone exits.  Timers are the few moments of the plan: warm-up over,
deregistration, the runtime's timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pidone.rehearse.cli import Options, UsageError
from pidone.rehearse.loadgen import LoadGenerator, Records, Target, parse_target

PR_SET_CHILD_SUBREAPER = 36
READY_POLL = 0.1  # between readiness checks
SETTLE = 1.0  # after pidone's exit: requests still in flight get this long to end
APP_TAIL = 40  # lines of the app's own output kept for the report


@dataclass
class Settings:
    """What ``pidone --check`` says about the options the rehearsal needs to know."""

    shutdown_signal: int = signal.SIGTERM
    stop_signal: int = signal.SIGTERM
    own_readiness: bool = False  # a readiness or startup probe, or --notify
    status_addr: str | None = None


@dataclass
class Outcome:
    """Everything the rehearsal saw; the verdict and the pictures are made from it."""

    mode: str
    signal: int
    stop_signal: int
    ready_via: str
    targets: list[Target]
    records: Records = field(default_factory=Records)
    t0: float | None = None  # monotonic time of the shutdown signal
    load_started: float | None = None
    ready_at: float | None = None
    never_ready: str | None = None  # why, when the app never became ready
    exited_early: bool = False  # pidone exited before the shutdown signal
    exit_at: float | None = None  # monotonic time pidone exited
    exit_code: int | None = None
    timed_out: bool = False  # the rehearsal had to SIGKILL pidone at --timeout
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (monotonic, event)
    app_output: deque[str] = field(default_factory=lambda: deque(maxlen=APP_TAIL))
    reconnects: int = 0
    retries: int = 0
    wall0: float | None = None  # wall-clock time of the signal, to place pidone's timestamps

    def event(self, name: str) -> dict[str, Any] | None:
        found = [e for _, e in self.events if e.get("event") == name]
        return found[-1] if found else None

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.event("terminated")

    def when(self, event: dict[str, Any]) -> float | None:
        """An event's moment in seconds from the signal, from pidone's own timestamp."""
        stamp = event.get("timestamp")
        if not isinstance(stamp, str) or self.wall0 is None:
            return None
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
        return moment - self.wall0


def parse_signal(text: str) -> int:
    name = text.strip().upper()
    if name.isdigit():
        return int(signal.Signals(int(name)))
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"{text!r} is not a signal") from None


def _pidone() -> list[str]:
    """How to run this same pidone: the standalone build (scripts/build-standalone) is
    itself the executable; an installed or checked-out one is ``python -m pidone``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "pidone"]


# -- pidone --check ---------------------------------------------------------------

_SETTING = re.compile(r"^  (\S+)\s+(.*?)\s{2,}(\S.*)$")


def check(pidone_args: list[str], env: dict[str, str]) -> Settings:
    """Let pidone validate its options; UsageError carrying its own error lines."""
    try:
        done = subprocess.run(
            [*_pidone(), "--check", *pidone_args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"could not run pidone --check: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        # pidone's own lines ("pidone: error: ..."), without its "--check: N errors" tally.
        errors = [
            line.removeprefix("pidone: error: ").rstrip(".")
            for line in lines
            if "error" in line.lower() and not line.startswith("pidone --check:")
        ] or lines[:1]
        text = "; ".join(errors) or f"pidone --check failed ({done.returncode})"
        raise UsageError(f"pidone: {text}")
    values: dict[str, str] = {}
    in_settings = False
    for line in done.stdout.splitlines():
        if line.strip() == "settings:":
            in_settings = True
            continue
        if in_settings and not line.strip():
            break
        match = _SETTING.match(line) if in_settings else None
        if match:
            values.setdefault(match.group(1), match.group(2).strip())
    settings = Settings()
    with contextlib.suppress(ValueError):
        settings.shutdown_signal = parse_signal(values.get("shutdown-signal", "TERM").split()[0])
    with contextlib.suppress(ValueError):
        settings.stop_signal = parse_signal(values.get("stop-signal", "TERM").split()[0])
    probes = [values.get("readiness-probe", "-"), values.get("startup-probe", "-")]
    settings.own_readiness = any(p not in ("-", "") for p in probes) or (
        values.get("notify", "False") == "True"
    )
    addr = values.get("status-addr", "-")
    settings.status_addr = None if addr in ("-", "") else addr
    return settings


# -- the run ------------------------------------------------------------------------


def can_be_pid1() -> bool:
    """Root, unshare, and the right to use it (a container without CAP_SYS_ADMIN has not)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def become_subreaper() -> None:
    """Orphans of a pidone the rehearsal had to kill come to us, to be killed too."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Rehearsal:
    def __init__(self, opts: Options, settings: Settings, env: dict[str, str]) -> None:
        self.opts = opts
        self.settings = settings
        self.env = env
        split = opts.pidone_args.index("--")
        pidone_opts, command = opts.pidone_args[:split], opts.pidone_args[split + 1 :]
        extra = ["--log-format", "json"]
        ready: Target | None = opts.ready
        ready_via = "url"
        if ready is None and settings.own_readiness:
            addr = settings.status_addr
            if addr is None:
                addr = f"127.0.0.1:{free_port()}"
                extra += ["--status-addr", addr]
            host, _, port = addr.rpartition(":")
            host = host.strip("[]")
            if host in ("", "0.0.0.0", "::"):  # noqa: S104 - reading pidone's setting, not binding
                host = "127.0.0.1"
            ready = parse_target(f"GET http://{host}:{port}/readyz")
            ready_via = "pidone"
        self.ready = ready or opts.loads[0]
        possible = can_be_pid1() if opts.mode != "subreaper" else False
        self.mode = opts.mode if opts.mode != "auto" else "pid1" if possible else "subreaper"
        if self.mode == "pid1" and not possible:
            raise UsageError("--mode pid1 needs root and a working unshare --pid")
        argv = [*_pidone(), *pidone_opts, *extra, "--", *command]
        if self.mode == "pid1":
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        self.argv = argv
        sig = parse_signal(opts.signal) if opts.signal else settings.shutdown_signal
        self.out = Outcome(
            mode=self.mode,
            signal=sig,
            stop_signal=settings.stop_signal,
            ready_via=ready_via if opts.ready is None else "url",
            targets=opts.loads,
        )
        self.selector = selectors.DefaultSelector()
        try:
            self.gen = LoadGenerator(opts.loads, opts.concurrency, opts.rate, self.selector)
        except OSError as exc:  # a host name that does not resolve
            raise UsageError(f"--load: {exc}") from None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidone_pid: int | None = None
        self._partial: dict[int, bytes] = {}
        self._pipes_open = 0
        self._no_pidfd = False

    # -- plumbing -------------------------------------------------------------

    def _start(self) -> None:
        become_subreaper()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for stream, is_err in ((self.proc.stdout, False), (self.proc.stderr, True)):
            assert stream is not None
            fd = stream.fileno()
            os.set_blocking(fd, False)
            self._partial[fd] = b""
            self._pipes_open += 1
            self.selector.register(fd, selectors.EVENT_READ, self._reader(fd, is_err=is_err))
        self.pidone_pid = self._find_pidone()
        try:
            pidfd = os.pidfd_open(self.pidone_pid)
        except (OSError, AttributeError):  # kernel < 5.3: poll for the exit instead
            self._no_pidfd = True
        else:
            self.selector.register(pidfd, selectors.EVENT_READ, self._on_exit(pidfd))

    def _find_pidone(self) -> int:
        """pidone's pid as we see it: unshare's only child in pid1 mode."""
        assert self.proc is not None
        if self.mode != "pid1":
            return self.proc.pid
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(path, encoding="ascii") as fh:
                    kids = fh.read().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.002)  # unshare forks at once; there is nothing to wait on
        return self.proc.pid  # unshare itself: signalling it is the best left

    def _reader(self, fd: int, *, is_err: bool) -> Callable[[int], None]:
        def read(_mask: int) -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            now = time.monotonic()
            if not data:
                self.selector.unregister(fd)
                self._pipes_open -= 1
                data, self._partial[fd] = self._partial[fd] + b"\n", b""
            *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
            for raw in lines:
                if raw:
                    self._line(now, raw.decode("utf-8", "replace"), is_err=is_err)

        return read

    def _line(self, now: float, text: str, *, is_err: bool) -> None:
        if is_err and text.startswith("{"):
            with contextlib.suppress(ValueError):
                event = json.loads(text)
                if isinstance(event, dict) and "event" in event and "level" in event:
                    self.out.events.append((now, event))
                    return
        self.out.app_output.append(text)

    def _on_exit(self, pidfd: int) -> Callable[[int], None]:
        def exited(_mask: int) -> None:
            self.out.exit_at = time.monotonic()
            self.selector.unregister(pidfd)
            os.close(pidfd)

        return exited

    def _poll(self, until: float) -> None:
        left = max(0.0, until - time.monotonic())
        if self._no_pidfd:
            left = min(left, 0.02)
        self.gen.poll(left)
        if self._no_pidfd and self.out.exit_at is None and self._exited():
            self.out.exit_at = time.monotonic()

    def _exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:  # pid1 mode: pidone is not our child; exited, it is a zombie until unshare reaps it
            with open(f"/proc/{self.pidone_pid}/stat", encoding="ascii") as fh:
                return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
        except OSError:
            return True

    # -- the plan -------------------------------------------------------------

    def run(self) -> Outcome:
        out = self.out
        try:
            self._start()
        except OSError as exc:
            raise UsageError(f"cannot start pidone: {exc}") from None
        try:
            if self._wait_ready():
                out.load_started = time.monotonic()
                self.gen.start()
                end = out.load_started + self.opts.warmup
                while out.exit_at is None and time.monotonic() < end:
                    self._poll(end)
                out.exited_early = out.exit_at is not None
            if out.exit_at is None:
                self._shutdown()
        except BaseException:
            # Interrupted (Ctrl-C, a CI job cancelled): no pidone may outlive the rehearsal.
            self._kill_now()
            raise
        self._finish()
        return out

    def _kill_now(self) -> None:
        if self.pidone_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pidone_pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._reap()

    def _wait_ready(self) -> bool:
        out = self.out
        deadline = time.monotonic() + self.opts.ready_timeout
        while out.exit_at is None:
            now = time.monotonic()
            if now >= deadline:
                out.never_ready = (
                    f"the app was not ready within {self.opts.ready_timeout:g}s "
                    f"({self.ready.describe()})"
                )
                return False
            if self._ready_once(min(1.0, deadline - now)):
                out.ready_at = time.monotonic()
                return True
            self._poll(min(time.monotonic() + READY_POLL, deadline))
        out.never_ready = "pidone exited before the app was ready"
        out.exited_early = True
        return False

    def _ready_once(self, timeout: float) -> bool:
        """One readiness request, blocking at most ``timeout`` (pipes wait that long at worst)."""
        import http.client

        target = self.ready
        conn = http.client.HTTPConnection(target.host, target.port, timeout=max(timeout, 0.05))
        try:
            path = target.request.split(b" ", 2)[1].decode("ascii")
            conn.request(target.method, path, headers={"User-Agent": "pidone-rehearse"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        return status < 500 if self.out.ready_via == "url" else 200 <= status < 300

    def _shutdown(self) -> None:
        out = self.out
        assert self.pidone_pid is not None
        out.t0 = t0 = time.monotonic()
        out.wall0 = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pidone_pid, out.signal)
        deregister_at = t0 + self.opts.deregister_delay
        timeout_at = t0 + self.opts.timeout
        while out.exit_at is None:
            now = time.monotonic()
            if self.gen.new_connections and now >= deregister_at:
                self.gen.deregister()
            if now >= timeout_at:
                self._kill_pidone()
                break
            nxt = deregister_at if self.gen.new_connections else timeout_at
            self._poll(min(nxt, timeout_at))

    def _kill_pidone(self) -> None:
        """The runtime's timeout: SIGKILL pidone, as docker stop / the kubelet would."""
        self.out.timed_out = True
        assert self.pidone_pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pidone_pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while self.out.exit_at is None and time.monotonic() < end:
            self._poll(end)
        self.out.exit_at = self.out.exit_at or time.monotonic()
        # A runtime kills the whole container at once.  As PID 1 of its namespace, pidone's
        # death did that; as a subreaper it left orphans (now ours): kill them now, before
        # they answer requests a dead container could not.
        self._end_processes()

    def _finish(self) -> None:
        out = self.out
        self.gen.stop()
        settle = time.monotonic() + SETTLE
        while (self.gen.inflight() or self._pipes_open) and time.monotonic() < settle:
            self._poll(settle)
        self.gen.abandon()
        self._reap()
        out.reconnects = self.gen.reconnects
        out.retries = self.gen.retries
        out.records = self.gen.records
        term = out.terminated
        assert self.proc is not None
        code = self.proc.returncode
        if out.timed_out:
            out.exit_code = 128 + signal.SIGKILL  # what the runtime reports (unshare says 1)
        elif term is not None and isinstance(term.get("exit_code"), int):
            out.exit_code = int(term["exit_code"])
        elif code is not None:
            out.exit_code = code if code >= 0 else 128 - code

    def _reap(self) -> None:
        """pidone, unshare and anything they left behind end here; then the pipes close."""
        self._end_processes()
        assert self.proc is not None
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _end_processes(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # Only after the rehearsal SIGKILLed a subreaper pidone can anything be
        # left: its orphans are ours (we are a subreaper too).  Killing one can
        # hand us its own children, hence the rounds.
        for _ in range(100):
            left = _children()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in left:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _children() -> list[int]:
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []
