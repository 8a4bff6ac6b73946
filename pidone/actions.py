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

HTTP requests and TCP connects need no curl in the image.  Plain HTTP and
TCP to an IP address run in the loop's selector as non-blocking sockets.  A
host name needs a DNS lookup and HTTPS a TLS handshake, both blocking in the
standard library: those run on a short-lived worker thread each, never on
the loop.  The thread reports back through a pipe that the loop watches, so
the loop still blocks in one place.

What pidone holds for them is bounded whatever servers do: every blocking
step of a worker is limited by the run's absolute deadline (a server sending
one header byte at a time cannot keep it), the loop shuts the worker's
socket down when it gives up on the run (which wakes the thread at once),
and at most :data:`MAX_THREADS` workers exist at a time.

Every resource a run needs can be missing (a thread at a pids limit, a
descriptor under ``ulimit -n``, a process slot for ``posix_spawn``): that one
run then fails with ``errored`` set and a detail saying what was missing;
pidone and the app go on.  HTTPS certificates are not verified, as the
kubelet does not for ``httpGet`` probes and hooks.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

# Imported here, not where used: pidone imports this module once the app
# runs, and an import is an open() that fails under EMFILE, when an action
# that needs it may be exactly what is running short.  (ssl alone stays lazy,
# on the worker thread: it costs memory, and failing there fails one run.)
from pidone import spawn, tree
from pidone.config import Check, Command, HttpCall, TcpCheck, signal_name
from pidone.user import Credentials

# What a probe's output may cost pidone's memory, per run.
OUTPUT_LIMIT = 4096
# How much of an HTTP response is read, at most: the status line and headers.
MAX_HEADERS = 8192
# Worker threads alive at once.  Probes (three kinds, never two runs of one
# at once), one post-start hook and one drain need five; the rest is room for
# threads past their deadline that are still in a DNS lookup, which nothing
# can interrupt.  A run that finds no free slot fails at once (``errored``).
MAX_THREADS = 8
# A worker's own deadline when its run has none (drains: the shutdown
# machine cancels them); the loop's cancel wakes it long before.
THREAD_LIMIT = 3600.0
# errno values that mean pidone lacked a resource (a pids or fd limit, memory),
# not that the target is unhealthy.
RESOURCE_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.ENOSPC}
)


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
    """Open and close one TCP connection, blocking at most ``timeout``.  Never raises."""
    return _blocking_check(check, time.monotonic() + max(timeout, 0.001), _Waker())[:2]


def http_request(step: HttpCall, timeout: float) -> tuple[bool, str]:
    """Send the request, blocking at most ``timeout``; 2xx or 3xx succeed.  Never raises."""
    return _blocking_check(step, time.monotonic() + max(timeout, 0.001), _Waker())[:2]


def _request_bytes(action: HttpCall) -> bytes:
    """The request as sent on the wire; UnicodeEncodeError for what ASCII cannot say."""

    url = urlsplit(action.url)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = url.netloc.rpartition("@")[2]  # never the user:password part
    request = (
        f"{action.method} {path} HTTP/1.1\r\nHost: {host}\r\n"
        "User-Agent: pidone\r\nConnection: close\r\n\r\n"
    )
    return request.encode("ascii")  # as http.client: no guessing


def _verdict(reply: bytes, *, eof: bool) -> tuple[bool, str] | None:
    """The outcome of an HTTP response read so far, or None while more is needed.

    A response counts once its headers are complete (as for http.client); the
    body is never read.  A server that never finishes them fails at the deadline.
    """
    if b"\r\n\r\n" not in reply:
        if eof:
            return False, "connection closed before the response headers ended"
        if len(reply) > MAX_HEADERS:
            return False, f"response headers longer than {MAX_HEADERS // 1024} KiB"
        return None
    parts = reply.partition(b"\r\n")[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "not an HTTP response"
    status = int(parts[1])
    return 200 <= status < 400, f"HTTP {status}"


def _failure(exc: BaseException) -> tuple[str, bool]:
    """(detail, errored): errored when pidone lacked a resource, not the target."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return detail, True
    if isinstance(exc, RuntimeError) and "thread" in str(exc):
        return detail, True  # "can't start new thread": a pids limit
    return detail, False


class _AbortedError(Exception):
    """The loop gave up on this check (cancelled, or past its deadline)."""


class _Waker:
    """The socket a worker thread is blocked on, so that the loop can wake it.

    The loop never closes the thread's socket: its fd number could be reused
    by something else of pidone's before the thread's next call.  It shuts it
    down instead, which ends at once every connect, send, recv or TLS
    handshake blocked on it; the thread closes its socket itself, under the
    same lock.  A lookup (getaddrinfo) cannot be woken: the flag stops the
    thread right after it, and the thread cap bounds what lookups can hold.
    """

    def __init__(self) -> None:

        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def hold(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted:
                raise _AbortedError

    def check(self) -> None:
        if self.aborted:
            raise _AbortedError

    def release(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()

    def abort(self) -> None:
        """From the loop: never blocks (shutdown() of a socket returns at once)."""
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown, also for an SSLSocket: its own
                    # would tear down the TLS object under the thread's feet.
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


def _blocking_check(
    action: HttpCall | TcpCheck, deadline: float, waker: _Waker
) -> tuple[bool, str, bool]:
    """One TCP connect or HTTP(S) request, on a worker thread: (ok, detail, errored).

    Never raises.

    Every blocking step is bounded by what is left of the absolute
    ``deadline`` (a socket timeout alone would let a server that sends one
    byte at a time keep the thread forever), and ``waker`` lets the loop end
    it sooner.  Certificates are not verified, as the kubelet does not for
    ``httpGet`` probes and hooks: the check asks whether the app answers,
    not who it is.
    """
    try:
        return (*_exchange(action, deadline, waker), False)
    except _AbortedError:
        return False, "cancelled", False
    # Not just OSError: a non-ASCII path raises UnicodeEncodeError, an odd URL
    # ValueError.  Whatever it is, the check failed; a dying thread would
    # only print a traceback.
    except Exception as exc:
        return (False, *_failure(exc))
    finally:
        waker.release()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _exchange(action: HttpCall | TcpCheck, deadline: float, waker: _Waker) -> tuple[bool, str]:
    request = b""
    tls = False
    if isinstance(action, TcpCheck):
        host, port = action.host, action.port
    else:
        url = urlsplit(action.url)
        tls = url.scheme == "https"
        host, port = url.hostname or "", url.port or (443 if tls else 80)
        request = _request_bytes(action)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    sock = _connect_any(infos, deadline, waker)
    if isinstance(action, TcpCheck):
        return True, "connected"
    if tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock.settimeout(_left(deadline))
        sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        waker.hold(sock)
        sock.settimeout(_left(deadline))
        sock.do_handshake()  # CPython bounds the whole handshake by the timeout
    sock.settimeout(_left(deadline))
    sock.sendall(request)  # bounded as a whole too
    reply = b""
    while True:
        waker.check()
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        reply += chunk
        verdict = _verdict(reply, eof=not chunk)
        if verdict is not None:
            return verdict


def _connect_any(
    infos: list[tuple[Any, Any, int, str, Any]], deadline: float, waker: _Waker
) -> socket.socket:
    error: OSError = OSError(errno.EADDRNOTAVAIL, "no address")
    for family, kind, proto, _name, addr in infos:
        waker.check()
        sock = socket.socket(family, kind, proto)
        waker.hold(sock)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(addr)
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
            waker.release()
            continue
        return sock
    raise error


def _plain_target(action: HttpCall | TcpCheck) -> tuple[str, int, int] | None:
    """(ip, port, family) when the check can run in the selector, else None.

    Only plain TCP and HTTP to an IP literal: HTTPS needs a TLS handshake and a
    host name needs a resolver, both blocking in the standard library; those
    run on a thread.
    """

    if isinstance(action, TcpCheck):
        host, port = action.host, action.port
    else:
        url = urlsplit(action.url)
        if url.scheme != "http" or url.hostname is None:
            return None
        host, port = url.hostname, url.port or 80
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return None  # "fe80::1%eth0": the socket module would resolve the scope
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
        action: HttpCall | TcpCheck,
        done: Callable[..., None],
    ) -> None:
        self._selector = selector
        self._done = done
        self._request = b""
        self._reply = b""
        self._sock: socket.socket | None = None
        if isinstance(action, HttpCall):
            try:
                self._request = _request_bytes(action)
            except UnicodeEncodeError as exc:
                self._done(False, f"UnicodeEncodeError: {exc}")
                return
        try:
            # Out of descriptors (EMFILE) or kernel memory: this run fails, as
            # an ``errored`` one; pidone goes on.
            self._sock = socket.socket(target[2], socket.SOCK_STREAM)
            self._sock.setblocking(False)
            err = self._sock.connect_ex(target[:2])
            if err not in (0, errno.EINPROGRESS):
                self._finish(False, f"ConnectionError: {os.strerror(err)}")
                return
            selector.register(self._sock, selectors.EVENT_WRITE, self._on_ready)
        except OSError as exc:
            detail, errored = _failure(exc)
            self.close()
            self._done(False, detail, errored=errored)

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
        verdict = _verdict(self._reply, eof=not chunk)
        if verdict is not None:
            self._finish(*verdict)

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
    # True when the action could not be run at all because pidone lacked a
    # resource (a thread, a descriptor, a process, a free worker slot): the
    # target was not checked.  ``ok`` is then False.
    errored: bool = False


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
        "waker",
    )

    def __init__(self, started: float, timeout: float | None, on_done: OnDone) -> None:
        self.on_done = on_done
        self.started = started
        self.timeout = timeout
        self.deadline = None if timeout is None else started + timeout
        self.pid: int | None = None
        self.probe: _Connection | None = None  # a plain TCP/HTTP check in the selector
        self.waker: _Waker | None = None  # a TCP/HTTP check on a worker thread
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
        self._threads = 0  # worker threads started and not yet reported back
        self._finished: deque[tuple[int, bool, str, bool]] = deque()
        self._exited: deque[tuple[int, spawn.Exit]] = deque()

    # -- starting and stopping --------------------------------------------------

    def start(
        self, action: Check, timeout: float | None, on_done: OnDone, *, capture: bool = False
    ) -> int:
        """Start ``action``; return its token.  ``on_done`` gets its one Result.

        A run that cannot start at all (a command not found; a thread, pipe,
        socket or process pidone cannot get: ``Result.errored``) ends, and
        calls ``on_done``, at once.
        """
        self._next_token += 1
        token = self._next_token
        job = _Job(time.monotonic(), timeout, on_done)
        self._jobs[token] = job
        if isinstance(action, Command):
            self._start_command(token, job, action, capture)
        else:
            plain = _plain_target(action)
            if plain is None:
                self._start_thread(token, job, action, timeout)
            else:
                job.probe = _Connection(self._selector, plain, action, self._socket_done(token))
        return token

    def cancel(self, token: int, reason: str) -> None:
        """Kill a running action (with everything it started) and report it failed."""
        job = self._jobs.get(token)
        if job is None:
            return
        if job.pid is not None:
            tree.kill_tree(job.pid)
            self._by_pid.pop(job.pid, None)  # its exit is reaped as an orphan
        if job.waker is not None:
            job.waker.abort()  # the thread wakes up, closes its socket and ends

        self._complete(token, ok=False, detail=reason)

    def _socket_done(self, token: int) -> Callable[..., None]:
        def done(ok: bool, detail: str, *, errored: bool = False) -> None:
            if token in self._jobs:
                self._complete(token, ok=ok, detail=detail, errored=errored)

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

    def _start_command(self, token: int, job: _Job, action: Command, capture: bool) -> None:
        write_fd = None
        if capture:
            try:
                read_fd, write_fd = os.pipe()
                job.output_fd = read_fd  # closed (and unregistered) by _complete
                os.set_blocking(read_fd, False)
                self._selector.register(read_fd, selectors.EVENT_READ, lambda _m: self._read(job))
            except OSError as exc:  # EMFILE, or epoll out of memory
                if write_fd is not None:
                    os.close(write_fd)
                detail, errored = _failure(exc)
                self._complete(
                    token, ok=False, detail=f"no pipe for the output: {detail}", errored=errored
                )
                return
        try:
            job.pid = spawn.spawn_action(
                action.argv, output_fd=write_fd, user=self._user, no_new_privs=self._no_new_privs
            )
        except spawn.SpawnError as exc:
            # EAGAIN at the pids limit, EMFILE, ENOMEM: pidone's want, not the
            # command's fault.  ENOENT, EACCES: the command's.
            self._complete(token, ok=False, detail=str(exc), errored=exc.errno in RESOURCE_ERRNOS)
            return
        finally:
            if write_fd is not None:
                os.close(write_fd)
        self._by_pid[job.pid] = token

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
            with contextlib.suppress(KeyError, ValueError):  # a registration that failed
                self._selector.unregister(job.output_fd)
            os.close(job.output_fd)
            job.output_fd = None

    def _start_thread(
        self, token: int, job: _Job, action: HttpCall | TcpCheck, timeout: float | None
    ) -> None:
        """Run a check that needs a DNS lookup or a TLS handshake on a worker thread.

        Each thing it needs can be missing: a free slot (``MAX_THREADS``), the
        report pipe (EMFILE), the thread itself (a pids limit makes
        ``Thread.start`` raise "can't start new thread").  Then this one run
        fails, ``errored``; pidone goes on and tries again next time.
        """

        if self._threads >= MAX_THREADS:
            self._complete(
                token,
                ok=False,
                detail=f"skipped: all {MAX_THREADS} worker threads busy "
                "(earlier checks still in a DNS lookup or a connection)",
                errored=True,
            )
            return
        try:
            self._report_pipe()
        except OSError as exc:
            detail, errored = _failure(exc)
            self._complete(token, ok=False, detail=f"no pipe: {detail}", errored=errored)
            return
        # The thread's own absolute deadline; the runner's (or the shutdown
        # machine's) cancel wakes it sooner through the waker.
        deadline = time.monotonic() + min(
            THREAD_LIMIT, THREAD_LIMIT if timeout is None else timeout
        )
        waker = _Waker()
        write_fd = self._write_fd

        def run() -> None:
            ok, detail, errored = False, "worker thread ended without a result", False
            try:
                # A send to a closed peer raises SIGPIPE in this thread; blocked, it
                # stays pending here instead of being forwarded to the app as its own.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
                ok, detail, errored = _blocking_check(action, deadline, waker)
            finally:
                # Always reported, so that the slot is always given back.
                self._finished.append((token, ok, detail, errored))
                with contextlib.suppress(OSError):
                    os.write(write_fd, b"!")

        thread = threading.Thread(target=run, name=f"action-{token}", daemon=True)
        try:
            thread.start()
        except (RuntimeError, OSError) as exc:  # "can't start new thread" at a pids limit
            self._complete(token, ok=False, detail=f"cannot start a thread: {exc}", errored=True)
            return
        self._threads += 1
        job.waker = waker

    def _report_pipe(self) -> None:
        """The pipe worker threads report back on, made once (and retried if it failed)."""
        if self._threads_fd is not None:
            return
        read_fd, write_fd = os.pipe()
        try:
            os.set_blocking(read_fd, False)
            os.set_blocking(write_fd, False)  # a worker must never block on it either
            self._selector.register(read_fd, selectors.EVENT_READ, self._on_threads)
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        self._threads_fd, self._write_fd = read_fd, write_fd
        # A thread holding the GIL makes the main thread wait up to the
        # switch interval (5 ms by default) before it can forward a signal.
        # Worker threads here only wait on sockets; let the loop in sooner.
        sys.setswitchinterval(0.0005)

    @property
    def threads(self) -> int:
        """Worker threads running now (those past their run's end included)."""
        return self._threads

    def _on_threads(self, _mask: int) -> None:
        assert self._threads_fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._threads_fd, 4096):
                pass
        while self._finished:
            token, ok, detail, errored = self._finished.popleft()
            self._threads -= 1
            if token in self._jobs:  # else: cancelled or timed out already
                self._complete(token, ok=ok, detail=detail, errored=errored)

    def _complete(self, token: int, *, ok: bool, detail: str, errored: bool = False) -> None:
        job = self._jobs.pop(token)
        if job.probe is not None:
            job.probe.close()
        if job.waker is not None:
            job.waker.abort()  # timed out or done: the thread must not linger
        self._read(job)  # whatever the command wrote before it exited
        self._close_output(job)
        output = job.output.decode("utf-8", "replace")
        job.on_done(Result(ok, detail, output, time.monotonic() - job.started, errored))
