"""Running actions: commands, HTTP requests and TCP connects, for drains, hooks and probes.

One :class:`Runner` serves every kind of step pidone runs beside the app:
drains, init commands, post-start hooks and probes.  Each run has an
optional time limit and ends in exactly one :class:`Result`, reported to the
event loop through a callback.

Commands are ordinary children of pidone, started through
:mod:`pidone.spawn` in a process group of their own so that one that runs
out of time can be killed together with everything it started.  Their exit
arrives through pidone's one reaper.  Drain and hook output goes straight to
pidone's stdout/stderr (inherited descriptors), never through pidone's
memory; a probe's output is captured through a pipe in the loop's selector,
keeping only its last few kilobytes, for the ``Unhealthy`` report.

HTTP requests and TCP connects need no curl in the image: one short-lived
thread each (the standard library has no non-blocking HTTPS client), bounded
by a socket timeout.  The thread reports back through a pipe that the event
loop watches, so the loop still blocks in one place.  A thread that outlives
its time limit is simply forgotten: it holds no process and ends with pidone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from pidone import spawn
from pidone.config import Check, ExecDrain, HttpDrain, TcpCheck, signal_name
from pidone.user import Credentials

# What a probe's output may cost pidone's memory, per run.
OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class DrainOutcome:
    step: str
    outcome: str  # "ok" | "failed" | "timed_out"
    detail: str
    start_s: float
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "outcome": self.outcome,
            "detail": self.detail,
            "start_s": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
        }


def tcp_connect(check: TcpCheck, timeout: float) -> tuple[bool, str]:
    """Open and close one TCP connection.  Never raises."""
    import socket

    try:
        with socket.create_connection((check.host, check.port), timeout=max(timeout, 0.001)):
            pass
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, "connected"


def http_request(step: HttpDrain, timeout: float) -> tuple[bool, str]:
    """Send the request; success is a 2xx or 3xx status.  Never raises."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(step.url)
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    try:
        conn = conn_type(url.hostname or "", url.port, timeout=max(timeout, 0.001))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    try:
        conn.request(step.method, path, headers={"User-Agent": "pidone-drain"})
        status = conn.getresponse().status
    # Not just OSError and HTTPException: a non-ASCII path raises
    # UnicodeEncodeError, a huge timeout OverflowError. Whatever it is, the
    # drain failed; a dying thread would only print a traceback and leave
    # the loop waiting for the drain's whole share.
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return 200 <= status < 400, f"HTTP {status}"


def _plain_target(action: HttpDrain | TcpCheck) -> tuple[str, int, int] | None:
    """(ip, port, family) when the check can run in the selector, else None.

    Only plain TCP and HTTP to an IP literal: HTTPS needs a TLS handshake and a
    host name needs a resolver, both blocking in the standard library; those
    run on a thread.
    """
    import ipaddress

    if isinstance(action, TcpCheck):
        host, port = action.host, action.port
    else:
        from urllib.parse import urlsplit

        url = urlsplit(action.url)
        if url.scheme != "http" or url.hostname is None:
            return None
        host, port = url.hostname, url.port or 80
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(ip), port, (socket.AF_INET6 if ip.version == 6 else socket.AF_INET)


class _Connection:
    """One TCP connect, and for HTTP one request, without blocking the loop.

    Connect, then (HTTP) send the request and read the status line and
    headers (never the body); 2xx and 3xx succeed.  The runner's deadline
    bounds it, as for commands.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        target: tuple[str, int, int],
        action: HttpDrain | TcpCheck,
        done: Callable[[bool, str], None],
    ) -> None:
        self._selector = selector
        self._done = done
        self._request = b""
        self._sock: socket.socket | None
        if isinstance(action, HttpDrain):
            from urllib.parse import urlsplit

            url = urlsplit(action.url)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            request = (
                f"{action.method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                "User-Agent: pidone\r\nConnection: close\r\n\r\n"
            )
            try:
                self._request = request.encode("ascii")  # as http.client: no guessing
            except UnicodeEncodeError as exc:
                self._sock = None
                self._done(False, f"UnicodeEncodeError: {exc}")
                return
        self._reply = b""
        self._sock = socket.socket(target[2], socket.SOCK_STREAM)
        self._sock.setblocking(False)
        err = self._sock.connect_ex(target[:2])
        if err not in (0, errno.EINPROGRESS):
            self._finish(False, f"ConnectionError: {os.strerror(err)}")
            return
        selector.register(self._sock, selectors.EVENT_WRITE, self._on_ready)

    def _on_ready(self, mask: int) -> None:
        sock = self._sock
        if sock is None:
            return
        if mask & selectors.EVENT_WRITE:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                name = "ConnectionRefusedError" if err == errno.ECONNREFUSED else "OSError"
                self._finish(False, f"{name}: [Errno {err}] {os.strerror(err)}")
                return
            if not self._request:
                self._finish(True, "connected")
                return
            try:
                sent = sock.send(self._request)
            except OSError as exc:
                self._finish(False, f"{type(exc).__name__}: {exc}")
                return
            self._request = self._request[sent:]
            if not self._request:
                self._selector.modify(sock, selectors.EVENT_READ, self._on_ready)
            return
        self._read(sock)

    def _read(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(False, f"{type(exc).__name__}: {exc}")
            return
        self._reply += chunk
        # A response counts once its headers are complete (as for http.client);
        # a server that never finishes them fails at the deadline.
        if b"\r\n\r\n" not in self._reply:
            if not chunk:
                self._finish(False, "connection closed before the response headers ended")
            elif len(self._reply) > 8192:
                self._finish(False, "response headers longer than 8 KiB")
            return
        parts = self._reply.partition(b"\r\n")[0].split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self._finish(False, "not an HTTP response")
            return
        status = int(parts[1])
        self._finish(200 <= status < 400, f"HTTP {status}")

    def _finish(self, ok: bool, detail: str) -> None:
        self.close()
        self._done(ok, detail)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._sock)
            self._sock.close()
            self._sock = None


class Result(NamedTuple):
    ok: bool
    detail: str  # "exit code 3", "HTTP 503", "timed out after 1s", an exception
    output: str  # the captured output's tail (commands run with capture), else ""
    duration: float


OnDone = Callable[[Result], None]


class _Job:
    __slots__ = (
        "deadline",
        "on_done",
        "output",
        "output_fd",
        "pid",
        "probe",
        "started",
        "timeout",
    )

    def __init__(self, started: float, timeout: float | None, on_done: OnDone) -> None:
        self.on_done = on_done
        self.started = started
        self.timeout = timeout
        self.deadline = None if timeout is None else started + timeout
        self.pid: int | None = None
        self.probe: _Connection | None = None  # a plain TCP/HTTP check in the selector
        self.output_fd: int | None = None
        self.output = b""


class Runner:
    """Runs actions in the background of the event loop; one Result per run."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        user: Credentials | None = None,
        no_new_privs: bool = False,
    ) -> None:
        self._selector = selector
        # Commands act for the app, so they run as its user (--user, --no-new-privileges).
        self._user = user
        self._no_new_privs = no_new_privs
        self._jobs: dict[int, _Job] = {}
        self._by_pid: dict[int, int] = {}
        self._next_token = 0
        self._threads_fd: int | None = None
        self._write_fd = -1
        self._finished: deque[tuple[int, bool, str]] = deque()
        self._exited: deque[tuple[int, spawn.Exit]] = deque()

    # -- starting and stopping --------------------------------------------------

    def start(
        self, action: Check, timeout: float | None, on_done: OnDone, *, capture: bool = False
    ) -> int:
        """Start ``action``; return its token.  ``on_done`` gets its one Result.

        A command that cannot start at all ends (and calls ``on_done``) at once.
        """
        self._next_token += 1
        token = self._next_token
        job = _Job(time.monotonic(), timeout, on_done)
        self._jobs[token] = job
        if isinstance(action, ExecDrain):
            self._start_command(token, job, action, capture)
        else:
            plain = _plain_target(action)
            if plain is None:
                self._start_thread(token, action, timeout)
            else:
                job.probe = _Connection(self._selector, plain, action, self._socket_done(token))
        return token

    def cancel(self, token: int, reason: str) -> None:
        """Kill a running action (with everything it started) and report it failed."""
        job = self._jobs.get(token)
        if job is None:
            return
        if job.pid is not None:
            from pidone import tree

            tree.kill_tree(job.pid)
            self._by_pid.pop(job.pid, None)  # its exit is reaped as an orphan

        self._complete(token, ok=False, detail=reason)

    def _socket_done(self, token: int) -> Callable[[bool, str], None]:
        def done(ok: bool, detail: str) -> None:
            if token in self._jobs:
                self._complete(token, ok=ok, detail=detail)

        return done

    def cancel_all(self, reason: str) -> None:
        for token in list(self._jobs):
            self.cancel(token, reason)

    def running(self, token: int) -> bool:
        return token in self._jobs

    # -- events from the loop -------------------------------------------------------

    def claim(self, ex: spawn.Exit) -> bool:
        """Take the exit of one of our commands; its result waits for :meth:`deliver`.

        The reaper claims a whole batch of exits first: a pid that is already
        reaped must never be signalled, and a callback run meanwhile could.
        """
        token = self._by_pid.pop(ex.pid, None)
        if token is None:
            return False
        self._jobs[token].pid = None  # reaped: nothing left to kill
        self._exited.append((token, ex))
        return True

    def deliver(self) -> None:
        """Report the results of the commands claimed so far."""
        while self._exited:
            token, ex = self._exited.popleft()
            if token not in self._jobs:
                continue  # cancelled in the meantime
            signum = ex.signal
            detail = f"exit code {ex.code}" if signum is None else f"signal {signal_name(signum)}"
            self._complete(token, ok=ex.code == 0, detail=detail)

    def next_deadline(self) -> float | None:
        deadlines = [job.deadline for job in self._jobs.values() if job.deadline is not None]
        return min(deadlines) if deadlines else None

    def on_deadline(self, now: float) -> None:
        for token, job in list(self._jobs.items()):
            if job.deadline is not None and now >= job.deadline:
                self.cancel(token, f"timed out after {job.timeout:g}s")

    # -- internals ----------------------------------------------------------------

    def _start_command(self, token: int, job: _Job, action: ExecDrain, capture: bool) -> None:
        read_fd = write_fd = None
        if capture:
            read_fd, write_fd = os.pipe()
            os.set_blocking(read_fd, False)
        try:
            job.pid = spawn.spawn_action(
                action.argv, output_fd=write_fd, user=self._user, no_new_privs=self._no_new_privs
            )
        except spawn.SpawnError as exc:
            if read_fd is not None and write_fd is not None:
                os.close(read_fd)
                os.close(write_fd)
            self._complete(token, ok=False, detail=str(exc))
            return
        self._by_pid[job.pid] = token
        if read_fd is not None and write_fd is not None:
            os.close(write_fd)
            job.output_fd = read_fd
            self._selector.register(read_fd, selectors.EVENT_READ, lambda _mask: self._read(job))

    def _read(self, job: _Job) -> None:
        if job.output_fd is None:
            return
        try:
            while chunk := os.read(job.output_fd, 65536):
                job.output = (job.output + chunk)[-OUTPUT_LIMIT:]
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close_output(job)  # EOF: every writer is gone

    def _close_output(self, job: _Job) -> None:
        if job.output_fd is not None:
            self._selector.unregister(job.output_fd)
            os.close(job.output_fd)
            job.output_fd = None

    def _start_thread(
        self, token: int, action: HttpDrain | TcpCheck, timeout: float | None
    ) -> None:
        import threading

        if self._threads_fd is None:
            # A thread holding the GIL makes the main thread wait up to the
            # switch interval (5 ms by default) before it can forward a signal.
            # Worker threads here only wait on sockets; let the loop in sooner.
            sys.setswitchinterval(0.0005)
            self._threads_fd, self._write_fd = os.pipe()
            os.set_blocking(self._threads_fd, False)
            self._selector.register(self._threads_fd, selectors.EVENT_READ, self._on_threads)
        # The socket's own limit only keeps the thread from lingering; the
        # runner's deadline is the real one (and 1e10 s would overflow it).
        limit = min(3600.0, 3600.0 if timeout is None else timeout)

        def run() -> None:
            # A send to a closed peer raises SIGPIPE in this thread; blocked, it
            # stays pending here instead of being forwarded to the app as its own.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
            if isinstance(action, TcpCheck):
                ok, detail = tcp_connect(action, limit)
            else:
                ok, detail = http_request(action, limit)
            self._finished.append((token, ok, detail))
            with contextlib.suppress(OSError):
                os.write(self._write_fd, b"!")

        threading.Thread(target=run, name=f"action-{token}", daemon=True).start()

    def _on_threads(self, _mask: int) -> None:
        assert self._threads_fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._threads_fd, 4096):
                pass
        while self._finished:
            token, ok, detail = self._finished.popleft()
            if token in self._jobs:  # else: cancelled or timed out already
                self._complete(token, ok=ok, detail=detail)

    def _complete(self, token: int, *, ok: bool, detail: str) -> None:
        job = self._jobs.pop(token)
        if job.probe is not None:
            job.probe.close()
        self._read(job)  # whatever the command wrote before it exited
        self._close_output(job)
        output = job.output.decode("utf-8", "replace")
        job.on_done(Result(ok, detail, output, time.monotonic() - job.started))
