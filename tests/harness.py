"""Helpers to run pidone for real: as PID 1 of a fresh PID namespace, or as a subreaper.

``unshare --pid --fork --mount-proc`` makes pidone a true PID 1 (tests run
as root); the ``mode`` fixture runs each behaviour both ways.  Output is read
by threads into line lists that tests wait on, so tests synchronise on what
the processes say, never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
PY = sys.executable

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="PID namespaces need root and unshare"
)


def app(name: str, *args: str) -> list[str]:
    return [PY, str(APPS / f"{name}.py"), *args]


class Lines:
    """Lines of one stream, collected by a thread; wait for one to appear."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [line for line in self.lines if text in line]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise AssertionError(f"no line with {text!r} (x{count}) in {self.lines!r}")
                self._cond.wait(left)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


class Pidone:
    """One pidone run with JSON logs, and helpers to look at it from outside."""

    def __init__(self, mode: str, opts: list[str], argv: list[str], **popen: Any) -> None:
        self.mode = mode
        cmd = [PY, "-m", "pidone", "--log-format", "json", *opts, "--", *argv]
        if mode == "pid1":
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.update(popen.pop("env", {}))
        popen.setdefault("stdin", subprocess.DEVNULL)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **popen
        )
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)
        self._pid: int | None = None

    @property
    def pid(self) -> int:
        """pidone's pid as seen from the test (the child of unshare in pid1 mode)."""
        if self._pid is None:
            if self.mode == "pid1":
                deadline = time.monotonic() + 10
                while not (kids := psutil.Process(self.proc.pid).children()):
                    assert time.monotonic() < deadline, "unshare never forked pidone"
                    time.sleep(0.005)
                self._pid = kids[0].pid
            else:
                self._pid = self.proc.pid
        return self._pid

    def ready(self, timeout: float = 10.0) -> None:
        """The app said it is ready and pidone has logged that it started it."""
        self.out.wait_for("ready", timeout)
        self.err.wait_for('"app_started"', timeout)

    def kill(self, signum: int) -> float:
        os.kill(self.pid, signum)
        return time.monotonic()

    def wait(self, timeout: float = 15.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.destroy()
            raise
        self.out.join()
        self.err.join()
        return code

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.err.lines if line.startswith("{")]

    def event(self, name: str) -> dict[str, Any]:
        matches = [e for e in self.events() if e["event"] == name]
        assert matches, f"no {name!r} event in {self.err.lines!r}"
        return matches[-1]

    def final(self) -> dict[str, Any]:
        last = self.events()[-1]
        assert last["event"] == "terminated", self.err.lines
        return last

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def destroy(self) -> None:
        for proc in [*self.descendants(), psutil.Process(self.proc.pid)]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.proc.wait(5)


def processes_with(marker: str) -> list[psutil.Process]:
    """Live processes anywhere on the machine whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


# The environment for a pidone started by a test: no PIDONE_* from outside.
CLEAN_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("PIDONE_")},
    "PYTHONPATH": str(ROOT),
}


def pidone_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pidone ARGS`` to completion (for command-line behaviour)."""
    return subprocess.run(
        [PY, "-m", "pidone", *args],
        env={**CLEAN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wakeups_while_idle(pid: int, window: float = 2.0) -> int:
    """Context switches of ``pid`` over ``window`` seconds, once it has settled.

    Settled: no switch for 0.3 s (start-up, or a status connection being
    closed, is over), awaited for up to 10 s on a loaded machine.
    """
    proc = psutil.Process(pid)

    def switches() -> int:
        return sum(proc.num_ctx_switches())

    def settled() -> bool:
        before = switches()
        time.sleep(0.3)
        return switches() == before

    wait_until(settled, timeout=10)
    before = switches()
    time.sleep(window)  # measuring idleness over a window, not synchronising
    return switches() - before
