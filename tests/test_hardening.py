"""Hardening: every bad input refused cleanly, every fault survived, nothing lost.

Each test here is one row of docs/FAULTS.md.  Timing assertions allow about
+-0.5 s (a noisy 2-core machine); tests wait on what processes say, not on sleeps.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from harness import PY, ROOT, Lines, app, processes_with, wait_until

from pidone.options import BY_NAME

pytestmark = pytest.mark.timeout(40)
TOL = 0.5
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def unique() -> str:
    """A marker to find a test's processes anywhere on the machine afterwards."""
    return f"m{uuid.uuid4().hex[:12]}"


def pidone_cmd(mode: str, opts: list[str], argv: list[str], head: list[str] | None = None):
    cmd = [*(head or [PY, "-m", "pidone"]), "--log-format", "json", *opts, "--", *argv]
    return ["unshare", "--pid", "--fork", "--mount-proc", *cmd] if mode == "pid1" else cmd


def pidone_pid(mode: str, proc: subprocess.Popen[bytes]) -> int:
    if mode != "pid1":
        return proc.pid
    kids: list[psutil.Process] = []
    wait_until(lambda: bool(kids.extend(psutil.Process(proc.pid).children()) or kids))
    return kids[0].pid


@contextlib.contextmanager
def raw_run(mode: str, cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A pidone whose stdio the test arranges itself; killed with its tree if left."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, env=ENV, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            proc.kill()
        proc.wait(5)


# -- 1. bad input: one line naming option and value, exit 2, nothing started --

BAD_DURATIONS = ["-1", "", "nan", "NaN", "inf", "-inf", "1e400", "abc", "1s"]
BAD_SIGNALS = ["NOPE", "0", "999", "KILL", "SIGKILL", "9", "STOP", "19", "", "rtmin+99"]
BAD = {
    "grace": BAD_DURATIONS,
    "pre-stop-delay": BAD_DURATIONS,
    "stop-signal": BAD_SIGNALS,
    "shutdown-signal": BAD_SIGNALS,
    "drain": ["'unbalanced", 'sh -c "x', "", "   ", "trailing\\"],
    "drain-http": [
        "ftp://host/",
        "not a url at-all",
        "notaurl",
        "",
        "FOO http://host/",
        "http://",
        "http://:80/",
        "http://host:0/",
        "http://host:99999/",
        "http://[::1",
    ],
    "remap-exit": ["300:0", "0:256", "-1:0", "1:", ":1", "a:b", "", "1:2:3", "7"],
    "log-format": ["xml", ""],
    "log-level": ["trace", ""],
    "signal-to": ["pgroup", ""],
}
# Signal numbers are named back by their name.
ALIASES = {"9": "SIGKILL", "19": "SIGSTOP"}


def _bad_params() -> Iterator[Any]:
    for option, values in BAD.items():
        for value in values:
            yield pytest.param(option, value, "cli", id=f"--{option}={value!r}")
            # An empty PIDONE_* variable means "not set"; a repeatable one reads
            # one value a line and skips blank lines (both documented).
            if value.strip() or (value and BY_NAME[option].multiple is False):
                yield pytest.param(option, value, "env", id=f"PIDONE_{option}={value!r}")


BAD_PARAMS = list(_bad_params())


def _run_bad(option: str, value: str, via: str, marker: str) -> tuple[int, str, bool]:
    env = dict(ENV)
    args = [PY, "-m", "pidone"]
    if via == "cli":
        args += [f"--{option}", value]
    else:
        env["PIDONE_" + option.upper().replace("-", "_")] = value
    done = subprocess.run(
        [*args, "--", "touch", marker],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    started = os.path.exists(marker)
    if started:
        os.unlink(marker)
    return done.returncode, done.stderr, started


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory):
    """Every bad-input run, done once, four at a time (each is a whole interpreter)."""
    base = tmp_path_factory.mktemp("bad")
    cases = [p.values for p in BAD_PARAMS]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {
            case: pool.submit(_run_bad, *case, str(base / f"started-{i}"))
            for i, case in enumerate(cases)
        }
        return {case: fut.result() for case, fut in futures.items()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("option", "value", "via"), BAD_PARAMS)
def test_bad_value_is_one_line_naming_option_and_value_exit_2_app_never_started(
    bad_results, option, value, via
):
    code, stderr, started = bad_results[(option, value, via)]
    assert not started, f"the app ran despite {option}={value!r}"
    assert code == 2, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "Traceback" not in line
    assert f"--{option}" in line
    named = [value, repr(value), ALIASES.get(value, "\0"), *map(repr, value.split())]
    assert any(text in line for text in named), line


@pytest.mark.parametrize("value", ["1_0", "\uff11"])
def test_durations_are_plain_decimal_numbers(value):
    from pidone.config import parse_duration

    with pytest.raises(ValueError):
        parse_duration(value)


# -- 3. drains that misbehave -------------------------------------------------


def test_drain_writing_50_mb_does_not_delay_the_shutdown(run):
    script = (
        "import sys\nb = (b'x' * 1023 + b'\\n') * 1024\n"
        "for _ in range(50): sys.stdout.buffer.write(b)"
    )
    p = run(["--grace", "3", "--drain", shlex.join([PY, "-c", script])], app("recorder"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert time.monotonic() - sent <= 3 + TOL
    drain = p.final()["drains"][0]
    assert drain["outcome"] in ("ok", "timed_out")
    if drain["outcome"] == "ok":
        assert sum(len(line) + 1 for line in p.out.lines if line.startswith("xxx")) == 50 << 20
    assert p.final()["reason"] == "Completed"


def test_drains_dying_of_a_signal_or_not_executable_fail_and_shutdown_goes_on(run, tmp_path):
    script = tmp_path / "drain.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    p = run(
        ["--drain", "sh -c 'kill -9 $$'", "--drain", str(script), "--drain", str(tmp_path)],
        app("recorder"),
    )
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    drains = p.final()["drains"]
    assert [d["outcome"] for d in drains] == ["failed", "failed", "failed"]
    assert drains[0]["detail"] == "signal SIGKILL"
    assert "Permission denied" in drains[1]["detail"]
    assert p.final()["reason"] == "Completed"


@pytest.mark.parametrize("ignore_term", [False, True])
def test_children_a_drain_leaves_behind_do_not_survive_pidone(run, ignore_term):
    marker = f"{time.time_ns() % 10**6}.{os.getpid() % 1000}"
    trap = 'trap "" TERM; ' if ignore_term else ""
    drain = f"sh -c '{trap}sleep {marker} & sleep {marker} & exit 0'"
    p = run(["--grace", "1.5", "--drain", drain], app("recorder"))
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 0
    took = time.monotonic() - sent
    assert p.final()["drains"][0]["outcome"] == "ok"
    if ignore_term:  # only SIGKILL at the deadline ends them
        assert abs(took - 1.5) <= TOL
        assert p.final()["reason"] == "Killed"
    else:  # the stop signal goes to the leftovers too, and they take it
        assert took < 1.5
    assert processes_with(f"sleep {marker}") == []


# -- HTTP drains to servers that misbehave --------------------------------------


class BadServer:
    """A TCP server that answers HTTP badly: never, slowly, or with a huge body."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)
            if self.kind == "silent":
                self.stop.wait()
            elif self.kind == "slow":  # one byte at a time, headers that never end
                data = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: yes\r\n" * 10_000
                for byte in data:
                    if self.stop.wait(0.05):
                        break
                    conn.sendall(bytes([byte]))
            else:  # a 1 GiB body, as fast as the client reads it
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
                chunk = b"x" * 65536
                for _ in range(16384):
                    if self.stop.is_set():
                        break
                    conn.sendall(chunk)

    def close(self) -> None:
        self.stop.set()
        for conn in [self.sock, *self.conns]:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.mark.parametrize("kind", ["silent", "slow", "huge"])
def test_http_drain_to_a_misbehaving_server_is_bounded_by_its_share(run, kind):
    server = BadServer(kind)
    try:
        p = run(
            ["--grace", "2", "--drain-http", f"http://127.0.0.1:{server.port}/drain"],
            app("recorder"),
        )
        p.ready()
        sent = p.kill(signal.SIGTERM)
        assert p.wait() == 0
        took = time.monotonic() - sent
    finally:
        server.close()
    drain = p.final()["drains"][0]
    # grace 2 -> the app's reserve is 0.5 s, so the only drain's share is 1.5 s.
    if kind == "huge":  # the status line is all a drain reads
        assert drain["outcome"] == "ok"
        assert drain["detail"] == "HTTP 200"
        assert drain["duration_s"] < 1.0
        assert p.event("drain_finished")["outcome"] == "ok"
    else:
        assert drain["outcome"] in ("timed_out", "failed")
        assert abs(drain["duration_s"] - 1.5) <= TOL
        assert p.event("drain_failed")["step"].endswith("/drain")
    assert took <= 2 + TOL
    assert p.final()["reason"] == "Completed"


# -- a signal storm -------------------------------------------------------------


def test_signal_storm_pidone_stays_up_bounded_and_still_shuts_down(run):
    p = run([], app("recorder", "--exit-code", "7"))
    p.ready()
    proc = psutil.Process(p.pid)
    rss_before = proc.memory_info().rss
    sent = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end and sent < 400_000:
        os.kill(p.pid, signal.SIGUSR1)
        os.kill(p.pid, signal.SIGHUP)
        sent += 2
    assert p.proc.poll() is None
    assert proc.memory_info().rss - rss_before < 32 << 20
    p.out.wait_for("signal SIG")
    p.kill(signal.SIGTERM)  # must not be lost behind the storm
    assert p.wait(10) == 7
    received = [line for line in p.out.lines if line in ("signal SIGUSR1", "signal SIGHUP")]
    assert 0 < len(received) <= sent
    assert p.final()["reason"] == "Error"
    assert p.final()["shutdown_signal"] == "SIGTERM"


# -- pidone's own stderr broken or closed ---------------------------------------


def test_broken_stderr_pipe_pidone_keeps_supervising_and_sigpipe_is_not_forwarded(mode):
    cmd = pidone_cmd(mode, [], app("recorder", "--exit-code", "7"))
    with raw_run(mode, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stderr is not None
        proc.stderr.close()  # every write pidone makes from now on: EPIPE and SIGPIPE
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        # Signals are handled in order: once the app has USR1, it would have had
        # the SIGPIPE of pidone's first log line already, had it been forwarded.
        os.kill(pid, signal.SIGUSR1)
        out.wait_for("signal SIGUSR1")
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(10) == 7
        out.join()
    assert out.lines[1:] == ["signal SIGUSR1", "signal SIGTERM", "exiting"]


@pytest.mark.parametrize(
    "closed",
    [
        "2>&-",
        "0<&- 2>&-",
    ],
)
def test_stderr_closed_at_start_pidone_keeps_supervising(mode, closed):
    cmd = ["sh", "-c", f'exec {closed}; exec "$@"', "sh", *pidone_cmd(mode, [], [])]
    cmd += app("recorder", "--exit-code", "7")
    with raw_run(mode, cmd, stdout=subprocess.PIPE) as proc:
        out = Lines(proc.stdout)
        out.wait_for("ready")
        pid = pidone_pid(mode, proc)
        os.kill(pid, signal.SIGUSR1)
        out.wait_for("signal SIGUSR1")
        os.kill(pid, signal.SIGTERM)
        assert proc.wait(10) == 7
        out.join()
    assert out.lines[1:] == ["signal SIGUSR1", "signal SIGTERM", "exiting"]


# -- apps that misbehave during the shutdown --------------------------------------


def test_app_that_closed_its_stdio_is_still_stopped_and_reaped(run):
    marker = unique()
    script = f"echo ready; exec 0<&- 1>&- 2>&-; exec sleep 4711 # {marker}"
    p = run(["--grace", "2"], ["sh", "-c", script])
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 1.5
    assert processes_with(marker) == []


ESCAPE = """
import os, signal, sys, time
if os.fork() == 0:
    if sys.argv[1] == "setsid":
        os.setsid()
    else:
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        time.sleep(1)
signal.pause()
"""


@pytest.mark.parametrize("how", ["setpgid", "setsid"])
def test_child_leaving_the_apps_group_or_session_is_killed_at_the_deadline(run, how):
    marker = unique()
    p = run(["--grace", "1.5", "--signal-to", "group"], [PY, "-c", ESCAPE, how, marker])
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM
    assert abs(time.monotonic() - sent - 1.5) <= TOL
    assert p.final()["reason"] == "Killed"
    assert processes_with(marker) == []


def test_app_forking_short_lived_children_while_ignoring_term_is_killed_on_time(run):
    marker = unique()
    script = f'trap "" TERM; echo ready; while :; do /bin/true {marker}; done'
    p = run(["--grace", "1.5"], ["sh", "-c", script, marker])
    p.ready()
    sent = p.kill(signal.SIGTERM)
    assert p.wait() == 137
    assert abs(time.monotonic() - sent - 1.5) <= TOL
    assert p.final()["reason"] == "Killed"
    assert processes_with(marker) == []


# -- an unexpected exception inside pidone ----------------------------------------

INJECT = """
import sys
import pidone.supervisor

def boom(self, signum):
    raise RuntimeError("injected fault")

pidone.supervisor.Supervisor.on_shutdown_signal = boom
try:
    from pidone.main import main
except ImportError:
    from pidone.cli import main
main(sys.argv[1:])
"""


def test_internal_error_kills_the_tree_and_passes_the_apps_code_out(mode):
    marker = unique()
    argv = app("tree", "--worker", "stubborn", "--marker", marker)
    cmd = pidone_cmd(mode, ["--grace", "5"], argv, head=[PY, "-c", INJECT])
    with raw_run(mode, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        out.wait_for("ready")
        err.wait_for('"app_started"')
        os.kill(pidone_pid(mode, proc), signal.SIGTERM)
        code = proc.wait(10)
        err.join()
    assert code == 137  # the app was SIGKILLed and reaped: its code is known
    assert any('"internal_error"' in line and "injected fault" in line for line in err.lines)
    assert '"terminated"' in err.lines[-1]
    assert '"reason": "InternalError"' in err.lines[-1]
    assert '"exit_code": 137' in err.lines[-1]
    assert not any("Traceback" in line for line in err.lines)
    assert processes_with(marker) == []


# -- security -------------------------------------------------------------------


def test_drain_is_not_run_through_a_shell(run, tmp_path):
    target = tmp_path / "pwned"
    p = run(["--drain", f"echo $HOME; touch {target}"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert f"$HOME; touch {target}" in p.out.lines
    assert not target.exists()


def test_nothing_from_the_environment_is_evaluated(tmp_path):
    target = tmp_path / "pwned"
    env = {
        **ENV,
        "PIDONE_DRAIN": f"$(touch {target})\n`touch {target}`",
        "PIDONE_GRACE": f"__import__('os').system('touch {target}')",
    }
    done = subprocess.run(
        [PY, "-m", "pidone", "--", "true"],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert not target.exists()
    env.pop("PIDONE_GRACE")
    done = subprocess.run(
        [
            PY,
            "-m",
            "pidone",
            "--log-format",
            "json",
            "--",
            PY,
            "-c",
            "import os, signal; os.kill(os.getppid(), signal.SIGTERM); signal.pause()",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        check=False,
    )
    assert done.returncode == 128 + signal.SIGTERM
    assert not target.exists()
    assert "$(touch" in done.stderr  # run as a program named "$(touch": not found


NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
# Where the interpreter lives under a directory uid 65534 cannot enter (a
# virtualenv made from a python under /root, mode 700), the one capability
# given lets it read files, nothing else. Killing, waiting and the subreaper
# need none, and the test checks that pidone holds no other.
READ_ONLY_CAP = [
    "--inh-caps=-all,+dac_read_search",
    "--ambient-caps=-all,+dac_read_search",
    "--bounding-set=-all,+dac_read_search",
]
CAP_DAC_READ_SEARCH = 2


def _as_nobody() -> list[str]:
    """setpriv's arguments to run pidone as uid 65534 and reach this interpreter.

    The interpreter is found through a shell already running as uid 65534, as
    pidone will find the app's: setpriv's own exec of it can succeed where
    theirs fail.
    """
    probe = subprocess.run(
        [*NOBODY, "/bin/sh", "-c", 'exec "$0" -c "import click, psutil, structlog"', PY],
        capture_output=True,
        check=False,
        cwd="/",
    )
    return NOBODY if probe.returncode == 0 else [*NOBODY, *READ_ONLY_CAP]


def _capabilities(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff line")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")
@pytest.mark.parametrize("app_kind", ["graceful", "ignores-term"])
def test_pidone_needs_no_privileges(app_kind, tmp_path):
    marker = unique()
    argv = (
        app("recorder")
        if app_kind == "graceful"
        else app("tree", "--ignore-term", "--marker", marker)
    )
    cmd = [*_as_nobody(), *pidone_cmd("subreaper", ["--grace", "1"], argv)]
    with raw_run(
        "subreaper", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    ) as proc:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        out.wait_for("ready")
        err.wait_for('"app_started"')
        pid = psutil.Process(proc.pid)
        assert pid.uids().real == 65534
        assert pid.uids().effective == 65534
        assert _capabilities(proc.pid) & ~(1 << CAP_DAC_READ_SEARCH) == 0
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(10)
        err.join()
    if app_kind == "graceful":
        assert code == 0
        assert '"reason": "Completed"' in err.lines[-1]
    else:
        assert code == 137
        assert abs(time.monotonic() - sent - 1) <= TOL
        assert '"reason": "Killed"' in err.lines[-1]
    assert processes_with(marker) == []


def test_http_drain_that_cannot_even_be_encoded_fails_at_once_without_a_traceback(run):
    p = run(["--grace", "4", "--drain-http", "http://127.0.0.1:9/caf\u00e9"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    drain = p.final()["drains"][0]
    assert drain["outcome"] == "failed"
    assert "UnicodeEncodeError" in drain["detail"]
    assert drain["duration_s"] < 1.0
    assert not any("Traceback" in line for line in p.err.lines)


def test_a_huge_but_finite_grace_is_waited_on_without_overflow(run):
    p = run(["--grace", "1e10"], app("recorder"))
    p.ready()
    p.kill(signal.SIGTERM)
    assert p.wait() == 0
    assert p.final()["reason"] == "Completed"
    assert not [e for e in p.events() if e["event"] == "internal_error"]
