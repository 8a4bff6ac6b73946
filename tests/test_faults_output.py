"""pidone's output path: a stalled, failing or closed stream never stalls PID 1.

A container's stderr is a pipe read by the runtime's log driver, and that
reader can stall.  These tests give pidone a pipe that is full and not read
(filled before pidone starts, exactly as an app that logged a lot would
leave it), and check that signals, deadlines and exit codes go on; then they
resume reading and check that every line that arrives is whole.  Each test
is a row of docs/FAULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import threading
import time
from typing import Any

import psutil
import pytest
from harness import PY, Lines, app, wait_until
from test_hardening import INJECT, pidone_cmd, pidone_pid, raw_run, unique

from pidone.log import QueuedStderr

pytestmark = pytest.mark.timeout(40)
TOL = 0.5


class StalledPipe:
    """A pipe for pidone's stderr: full before pidone starts, read only after resume()."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        # Fill it through a second open file description: O_NONBLOCK on our
        # own would be shared with pidone's fd 2.
        filler = os.open(f"/proc/self/fd/{self.w}", os.O_WRONLY | os.O_NONBLOCK)
        chunk = b"f" * (select.PIPE_BUF - 1) + b"\n"
        try:
            while True:
                os.write(filler, chunk)
        except BlockingIOError:
            pass
        finally:
            os.close(filler)
        self.data = bytearray()
        self._thread: threading.Thread | None = None

    def handed_over(self) -> None:
        """pidone has its copy of the write end: drop ours, so EOF means pidone is gone."""
        os.close(self.w)

    def resume(self) -> None:
        def read() -> None:
            while chunk := os.read(self.r, 65536):
                self.data += chunk

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def lines(self) -> list[str]:
        """pidone's lines, once the reader has seen EOF (the filler left out)."""
        assert self._thread is not None
        self._thread.join(10)
        assert not self._thread.is_alive(), "the pipe never reached EOF"
        text = self.data.decode("utf-8")
        assert text.endswith("\n"), f"the last line is cut: {text[-200:]!r}"
        return [line for line in text.splitlines() if line.strip("f")]

    def close(self) -> None:
        os.close(self.r)


@pytest.fixture
def stalled() -> Any:
    pipe = StalledPipe()
    yield pipe
    pipe.close()


def events(lines: list[str]) -> list[dict[str, Any]]:
    """Every line must be one whole JSON object."""
    return [json.loads(line) for line in lines]


def start(mode: str, opts: list[str], argv: list[str], pipe: StalledPipe) -> Any:
    return raw_run(mode, pidone_cmd(mode, opts, argv), stdout=subprocess.PIPE, stderr=pipe.w)


# -- a stalled reader --------------------------------------------------------------


def test_sigterm_reaches_the_app_at_once_and_pidone_exits_behind_a_stalled_stderr(mode, stalled):
    """Nobody reads pidone's stderr, ever: SIGTERM still reaches the app within a
    fraction of a second and pidone exits with the app's code, its last lines given
    the bounded 1 s and then abandoned."""
    with start(mode, ["--grace", "10"], app("recorder", "--exit-code", "7"), stalled) as proc:
        stalled.handed_over()
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        out.wait_for("signal SIGTERM")
        forwarded = time.monotonic() - sent
        assert proc.wait(10) == 7
        ended = time.monotonic() - sent
    assert forwarded < 1.0  # before: never (pidone blocked in write())
    # The app's exit, then the log's wait: 1 s at most, and given up once the
    # reader has taken nothing for 25 ms.
    assert ended < 1.0 + TOL


def test_when_the_reader_resumes_every_line_is_whole_json_and_the_last_is_terminated(mode, stalled):
    """Lines queued behind a stalled reader all arrive, whole and in order, once it
    reads again; the last one is ``terminated`` with the app's code."""
    with start(mode, [], app("recorder", "--exit-code", "7"), stalled) as proc:
        stalled.handed_over()
        out = Lines(proc.stdout)
        out.wait_for("ready")
        os.kill(pidone_pid(mode, proc), signal.SIGTERM)
        out.wait_for("signal SIGTERM")
        stalled.resume()
        assert proc.wait(10) == 7
    names = [e["event"] for e in events(stalled.lines())]
    assert names[0] == "app_started"
    assert "shutdown_started" in names
    assert "app_exited" in names
    assert names[-1] == "terminated"
    final = events(stalled.lines())[-1]
    assert final["exit_code"] == 7
    assert final["log_lines_dropped"] == 0


def test_app_ignoring_term_is_killed_at_the_deadline_behind_a_stalled_stderr(mode, stalled):
    """The grace deadline holds with a stalled log: the app and its stubborn worker
    are SIGKILLed at --grace, and pidone exits 137 at most 1 s later."""
    tag = unique()
    argv = app("tree", "--ignore-term", "--worker", "stubborn", "--tag", tag)
    with start(mode, ["--grace", "1.5"], argv, stalled) as proc:
        stalled.handed_over()
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        tree = psutil.Process(pid).children(recursive=True)
        assert len(tree) >= 2  # the app and its worker

        def all_gone() -> bool:
            return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)

        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_until(all_gone, timeout=10, interval=0.02)
        killed = time.monotonic() - sent
        assert proc.wait(10) == 137
        ended = time.monotonic() - sent
    assert 1.5 - 0.1 <= killed <= 1.5 + TOL
    assert ended <= 1.5 + 1.0 + TOL


def test_storm_of_queued_realtime_signals_at_debug_behind_a_stalled_reader(mode, stalled):
    """6000 queued real-time signals at --log-level debug, each a log line, behind a
    reader that has stalled: every one is forwarded, lines beyond the queue's bounds
    are dropped and counted, SIGTERM still stops the app; once the reader resumes,
    ``log_lines_dropped`` lines and ``terminated`` account for every lost line."""
    storm = 6000
    rt = signal.SIGRTMIN + 3
    opts = ["--log-level", "debug"]
    with start(mode, opts, app("recorder", "--exit-code", "5"), stalled) as proc:
        stalled.handed_over()
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        for _ in range(storm):
            os.kill(pid, rt)  # real-time: each one queued, none coalesced
        out.wait_for("signal SIGRTMIN+3", count=storm, timeout=30)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        out.wait_for("signal SIGTERM")
        assert time.monotonic() - sent < 1.0
        stalled.resume()
        assert proc.wait(10) == 5
    lines = events(stalled.lines())
    assert lines[-1]["event"] == "terminated"
    lost = lines[-1]["log_lines_dropped"]
    assert lost > 0
    notices = [e["count"] for e in lines if e["event"] == "log_lines_dropped"]
    assert notices
    assert sum(notices) == lost
    forwarded = [e for e in lines if e["event"] == "signal_forwarded"]
    assert len(forwarded) < storm
    assert len(forwarded) + lost >= storm  # and what SIGTERM logged while the queue was full


# -- the app's view of the stream ---------------------------------------------------

APP_WRITES = r"""
import fcntl, os, sys
blocking = not fcntl.fcntl(2, fcntl.F_GETFL) & os.O_NONBLOCK
print(f"blocking={blocking}", flush=True)
data = b"a" * 262144
written = 0
while written < len(data):
    written += os.write(2, data[written:])
print(f"wrote {written}", flush=True)
"""


def test_the_apps_writes_to_the_shared_stderr_still_block_and_never_fail(mode, stalled):
    """pidone never sets O_NONBLOCK on the stream it shares with the app: the app's
    fd 2 stays blocking, its 256 KiB write to a full pipe waits (no EAGAIN) and
    completes once the reader resumes."""
    with start(mode, [], [PY, "-c", APP_WRITES], stalled) as proc:
        stalled.handed_over()
        out = Lines(proc.stdout)
        out.wait_for("blocking=True")
        pid = pidone_pid(mode, proc)
        with open(f"/proc/{pid}/fdinfo/2") as fh:
            flags = int(next(line for line in fh if line.startswith("flags:")).split()[1], 8)
        assert not flags & os.O_NONBLOCK
        stalled.resume()
        out.wait_for("wrote 262144")
        assert proc.wait(10) == 0
    assert "terminated" in stalled.lines()[-1]


# -- closed and failing streams -------------------------------------------------------


@pytest.mark.parametrize("closed", ["1>&-", "0<&- 2>&-", "0<&- 1>&- 2>&-"])
def test_closed_standard_streams_at_start_keep_the_apps_exit_code(mode, tmp_path, closed):
    """stdout, stdin and stderr closed at start: pidone puts /dev/null there before it
    opens anything (its signal pipe never lands on fds 0-2) and exits with the app's
    code 9 (before: stdout closed made it 1, an AttributeError at the very end)."""
    log = tmp_path / "app.log"
    argv = app("recorder", "--exit-code", "9", "--log", str(log))
    cmd = ["sh", "-c", f'exec {closed}; exec "$@"', "sh", *pidone_cmd(mode, [], argv)]
    with raw_run(mode, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_until(lambda: log.exists() and "ready" in log.read_text())
        pid = pidone_pid(mode, proc)
        for fd in (0, 1, 2):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if f"{fd}>&-" in closed or f"{fd}<&-" in closed:
                assert target == "/dev/null"
        os.kill(pid, signal.SIGUSR1)
        wait_until(lambda: "signal SIGUSR1" in log.read_text())
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(10) == 9
    assert log.read_text().splitlines()[1:] == ["signal SIGUSR1", "signal SIGTERM", "exiting"]


def test_internal_error_with_stderr_closed_still_passes_137_out(mode):
    """The last-resort path with stderr closed at start: the app's 137 comes out
    (before: a flush of the missing sys.stderr turned it into 1)."""
    marker = unique()
    argv = app("tree", "--worker", "stubborn", "--marker", marker)
    inner = pidone_cmd(mode, ["--grace", "5"], argv, head=[PY, "-c", INJECT])
    cmd = ["sh", "-c", 'exec 2>&-; exec "$@"', "sh", *inner]
    with raw_run(mode, cmd, stdout=subprocess.PIPE) as proc:
        out = Lines(proc.stdout)
        out.wait_for("ready")
        os.kill(pidone_pid(mode, proc), signal.SIGTERM)
        assert proc.wait(10) == 137


def test_termination_log_on_a_fifo_nobody_reads_fails_without_hanging(run, tmp_path):
    """--termination-log naming a FIFO without a reader: opened without blocking
    (ENXIO), ``termination_log_failed`` logged, the app's exit code unchanged
    (before: pidone hung in open() forever)."""
    fifo = tmp_path / "termination-log"
    os.mkfifo(fifo)
    p = run(["--termination-log", str(fifo)], app("recorder", "--exit-code", "3"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait(10) == 3
    assert time.monotonic() - sent < 1.0 + TOL
    failed = p.event("termination_log_failed")
    assert failed["path"] == str(fifo)
    assert "No such device or address" in failed["error"]
    assert p.final()["exit_code"] == 3


def test_termination_log_on_a_fifo_whose_reader_takes_nothing_fails_without_hanging(run, tmp_path):
    """A FIFO with a reader that never reads and is already full: the write would wait
    for room; it fails at once instead (EAGAIN), and the exit code is the app's."""
    fifo = tmp_path / "termination-log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(filler, b"x" * select.PIPE_BUF)
        assert not select.select([], [filler], [], 0)[1]  # full
        p = run(["--termination-log", str(fifo)], app("recorder", "--exit-code", "3"))
        p.ready()
        p.kill(signal.SIGTERM)
        assert p.wait(10) == 3
        assert "not being read" in p.event("termination_log_failed")["error"]
    finally:
        os.close(filler)
        os.close(reader)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_pidones_own_sigxfsz_is_not_forwarded_to_the_app(mode, tmp_path):
    """pidone logs to a file under ``ulimit -f``: its writes past the limit fail
    (EFBIG) and the SIGXFSZ they raise is pidone's own, never forwarded; the app
    exits 0 and so does pidone (before: the app got SIGXFSZ)."""
    logfile = tmp_path / "pidone.log"
    argv = app("recorder", "--exit-on", "USR2", "--exit-code", "0")
    cmd = pidone_cmd(mode, ["--log-level", "debug"], argv)
    with (
        open(logfile, "wb") as err,
        raw_run(mode, cmd, stdout=subprocess.PIPE, stderr=err, preexec_fn=_limit_file_size) as proc,
    ):
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        sent = 0
        while logfile.stat().st_size < 4096:  # each forwarded signal is a debug line
            sent += 1
            os.kill(pid, signal.SIGUSR1)
            out.wait_for("signal SIGUSR1", count=sent)
            assert sent < 200
        for extra in range(1, 4):  # these lines all fail with EFBIG
            os.kill(pid, signal.SIGUSR1)
            out.wait_for("signal SIGUSR1", count=sent + extra)
        os.kill(pid, signal.SIGUSR2)
        assert proc.wait(10) == 0
    assert not [line for line in out.lines if "SIGXFSZ" in line]
    assert logfile.stat().st_size == 4096


def _write_calls(pid: int) -> int:
    """write() system calls the process made, failed ones included (/proc/PID/io)."""
    with open(f"/proc/{pid}/io") as fh:
        return int(next(line for line in fh if line.startswith("syscw:")).split()[1])


TMPFS_APP = r"""
import os, signal, sys, time
fill = os.path.join(sys.argv[1], "fill")
print("ready", flush=True)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})
while os.fstat(2).st_size == 0:  # pidone's app_started line
    time.sleep(0.01)
# tmpfs allocates whole pages: pad pidone's log (our stderr too) to a page
# boundary, so that its next line needs a page of its own.
need = -os.fstat(2).st_size % 4096 or 4096
head, tail = b'{"event": "pad", "x": "', b'"}\n'
if need < len(head) + len(tail):
    need += 4096
os.write(2, head + b"x" * (need - len(head) - len(tail)) + tail)
fd = os.open(fill, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    os.close(fd)
print("full", flush=True)
signal.sigwait({signal.SIGUSR2})
os.unlink(fill)
print("freed", flush=True)
signal.sigwait({signal.SIGTERM})
sys.exit(4)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_filesystem_full_for_a_moment_drops_lines_not_the_stream(tmp_path):
    """stderr on a filesystem that fills up for a moment: the lines that meet ENOSPC
    are lost (and counted), the later ones, ``terminated`` last, are written (before:
    the first error silenced pidone for good)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    copy = tmp_path / "copy"
    script = (
        f"mount -t tmpfs -o size=64k pidone-test {mnt} || exit 99; "
        f'"$@" 2>{mnt}/log; code=$?; cp {mnt}/log {copy}; exit $code'
    )
    cmd = ["unshare", "--mount", "sh", "-c", script, "sh"]
    cmd += pidone_cmd("subreaper", ["--log-level", "debug"], [PY, "-c", TMPFS_APP, str(mnt)])
    with raw_run("subreaper", cmd, stdout=subprocess.PIPE) as proc:
        out = Lines(proc.stdout)
        out.wait_for("full")
        (pidone,) = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if p.cmdline()[1:3] == ["-m", "pidone"]
        ]
        before = _write_calls(pidone.pid)
        os.kill(pidone.pid, signal.SIGUSR1)  # its debug line meets ENOSPC
        # Two write() calls: the signal's byte into pidone's wakeup pipe, then the line.
        wait_until(lambda: _write_calls(pidone.pid) >= before + 2)
        os.kill(pidone.pid, signal.SIGUSR2)  # the app frees the space
        out.wait_for("freed")
        os.kill(pidone.pid, signal.SIGTERM)
        assert proc.wait(10) == 4
    lines = [json.loads(line) for line in copy.read_text().splitlines()]
    assert lines[-1]["event"] == "terminated"
    assert lines[-1]["exit_code"] == 4
    assert lines[-1]["log_lines_dropped"] >= 1
    names = [e["event"] for e in lines]
    assert "log_lines_dropped" in names
    assert "shutdown_started" in names  # the lines after the space came back
    forwarded = [e["signal"] for e in lines if e["event"] == "signal_forwarded"]
    assert "SIGUSR1" not in forwarded  # the one that met ENOSPC


# -- the sink itself, in-process on real pipes -------------------------------------------


def _pipe_full() -> tuple[int, int]:
    r, w = os.pipe()
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"f" * select.PIPE_BUF)
    except BlockingIOError:
        pass
    os.close(filler)
    return r, w


def _read_all(r: int) -> bytes:
    os.set_blocking(r, False)
    data = b""
    while True:
        try:
            chunk = os.read(r, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def _notices(text: bytes) -> list[int]:
    return [int(line.split()[1]) for line in text.decode().splitlines() if "dropped" in line]


def test_sink_never_blocks_drops_beyond_its_bounds_and_reports_the_count():
    """Behind a full pipe, 10,000 lines return at once; what exceeds the bounds is
    counted; once the reader drains the pipe, the queued lines come out whole and one
    ``log_lines_dropped`` line gives the count."""
    r, w = _pipe_full()
    try:
        sink = QueuedStderr(w, notice=lambda n: f"dropped {n}", max_lines=100)
        started = time.monotonic()
        for i in range(10_000):
            sink.msg(f"line {i}")
        assert time.monotonic() - started < 1.0
        lost = sink.dropped()
        assert lost >= 10_000 - 101  # the queue's 100, perhaps one more in the writer's hands
        assert not sink.drain(0.2)  # nobody reads: the wait is bounded
        text = b""
        deadline = time.monotonic() + 10
        while sum(_notices(text)) < lost:
            text += _read_all(r)
            assert time.monotonic() < deadline, text[-300:]
        assert sink.drain(1.0)
        mine = [line.lstrip("f") for line in text.decode().splitlines() if line.strip("f")]
        assert mine[-1].startswith("dropped ")
        assert [line for line in mine if line.startswith("line")] == [
            f"line {i}" for i in range(10_000 - lost)
        ]
        assert sum(_notices(text)) == lost
    finally:
        os.close(r)
        os.close(w)


def test_sink_drops_a_line_on_a_write_error_and_writes_the_next():
    """ENOSPC (/dev/full) loses the line, not the stream: once the fd leads somewhere
    writable again, the next lines get through and the loss is reported."""
    fd = os.open("/dev/full", os.O_WRONLY)
    r, w = os.pipe()
    try:
        sink = QueuedStderr(fd, notice=lambda n: f"dropped {n}")
        sink.msg("lost")
        wait_until(lambda: sink.dropped() == 1)
        os.dup2(w, fd)
        sink.msg("kept")
        assert sink.drain(2.0)
        assert _read_all(r).decode().splitlines() == ["dropped 1", "kept"]
    finally:
        for x in (fd, r, w):
            os.close(x)


def test_sink_stops_for_good_on_a_broken_pipe_without_a_sigpipe():
    """A reader gone for good (EPIPE) ends writing; the writer thread's SIGPIPE stays
    blocked on it, so no SIGPIPE reaches this (main) thread's handler."""
    seen: list[int] = []
    old = signal.signal(signal.SIGPIPE, lambda s, _f: seen.append(s))
    r, w = os.pipe()
    os.close(r)
    try:
        sink = QueuedStderr(w)
        sink.msg("nobody reads this")
        assert sink.drain(2.0)
        sink.msg("nor this")
        assert sink.drain(0.1)
        time.sleep(0.05)  # a stray SIGPIPE would run its handler at the next bytecode
        assert seen == []
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)


def test_sink_without_a_writer_thread_writes_whole_lines_without_blocking(monkeypatch):
    """When no thread can be started (a pids limit), lines go to the pipe through a
    second, non-blocking open file description: a full pipe drops nothing at once
    (the lines wait, bounded) and never blocks; the app's description stays blocking."""
    monkeypatch.setattr(threading.Thread, "start", _cannot_start)
    r, w = _pipe_full()
    try:
        sink = QueuedStderr(w, notice=lambda n: f"dropped {n}", max_lines=10)
        started = time.monotonic()
        for i in range(50):
            sink.msg(f"line {i}")
        assert time.monotonic() - started < 0.5
        assert sink.dropped() == 40
        assert os.get_blocking(w)
        _read_all(r)  # the reader drains the pipe; the next line flushes the queue
        sink.msg("after")
        text = _read_all(r).decode().splitlines()
        assert text == [f"line {i}" for i in range(10)] + ["dropped 40", "after"]
    finally:
        os.close(r)
        os.close(w)


def _cannot_start(_self: threading.Thread) -> None:
    raise RuntimeError("can't start new thread")


def test_fallback_write_errors_consume_pidones_own_sigpipe(monkeypatch):
    """Without a writer thread, the EPIPE of a direct write ends the stream and its
    SIGPIPE is taken on the spot: no handler ever sees it."""
    monkeypatch.setattr(threading.Thread, "start", _cannot_start)
    seen: list[int] = []
    old = signal.signal(signal.SIGPIPE, lambda s, _f: seen.append(s))
    r, w = os.pipe()
    try:
        sink = QueuedStderr(w)
        sink.msg("read")
        assert _read_all(r) == b"read\n"
        os.close(r)
        sink.msg("nobody reads this")  # EPIPE: the end of the stream
        sink.msg("nor this")
        time.sleep(0.05)  # a stray SIGPIPE would run its handler at the next bytecode
        assert seen == []
        assert sink.drain(0.1)
    finally:
        signal.signal(signal.SIGPIPE, old)
        os.close(w)


def test_drain_at_exit_gives_up_on_a_stalled_reader_but_waits_for_a_slow_one():
    """The exit's wait for queued lines: a reader that takes nothing is given up on
    within tens of milliseconds (far below the 1 s bound); a slow reader that keeps
    taking lines gets them all."""
    r, w = _pipe_full()
    try:
        sink = QueuedStderr(w)
        for i in range(20):
            sink.msg(f"line {i}")
        started = time.monotonic()
        assert not sink.drain(1.0)
        assert time.monotonic() - started < 0.5

        got = bytearray()

        def slow_reader() -> None:  # a few hundred bytes every 10 ms
            while not got.endswith(b"line 19\n"):
                got.extend(os.read(r, 300))
                time.sleep(0.01)  # the reader's pace is what this test is about

        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()
        assert sink.drain(5.0)
        reader.join(5)
        assert got.endswith(b"line 19\n")
    finally:
        os.close(r)
        os.close(w)


EARLY_TERM = """
import os, signal, sys
import pidone.main
# Past pidone.main's first statement, before signals.install(): as PID 1 a
# signal with no handler would be dropped here, unless it is blocked.
os.kill(os.getpid(), signal.SIGTERM)
pidone.main.main(sys.argv[1:])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")
def test_sigterm_before_the_handlers_exist_is_held_not_dropped_as_pid1():
    """A SIGTERM that reaches PID 1 after pidone.main's first statement but before its
    handlers are installed is queued (blocked) and acted on: the app is started and
    stopped, pidone exits with its code (before: dropped by the kernel, pidone ran on)."""
    argv = app("recorder", "--exit-code", "6")
    # The stop signal waits a second (pre-stop delay): the app, started at once, must
    # have its signal handling in place by then, or it dies of SIGTERM (143), a race.
    cmd = pidone_cmd("pid1", ["--pre-stop-delay", "1"], argv, head=[PY, "-c", EARLY_TERM])
    with raw_run("pid1", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        assert proc.wait(10) == 6
        out.join()
        err.join()
    assert "signal SIGTERM" in out.lines
    assert '"shutdown_started"' in "".join(err.lines)
