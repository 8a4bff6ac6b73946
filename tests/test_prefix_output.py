"""--prefix-output: each process's lines, named, relayed by pidone without ever blocking it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from harness import PY, Lines
from test_faults_output import StalledPipe
from test_hardening import pidone_cmd, pidone_pid, raw_run

pytestmark = pytest.mark.timeout(40)

# Writes 2 MiB to stdout (more than pidone's queue and the pipe hold together), says so
# on stderr, then goes on writing until SIGTERM, which it answers with exit code 5.
CHATTY = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))
line = "x" * 199 + "\\n"
for _ in range(2 * 1024 * 1024 // 200):
    sys.stdout.write(line)
sys.stdout.flush()
print("filled", file=sys.stderr, flush=True)
while True:
    sys.stdout.write(line)
"""


def test_each_line_is_prefixed_with_the_name_of_its_process(mode, tmp_path):
    """The app's stdout and stderr, a sidecar's and an init command's, each on its stream."""
    said = tmp_path / "said"  # the sidecar is ready once it has said its lines
    proxy = f"echo proxy up; echo proxy warn >&2; touch {said}; exec sleep 60"
    opts = [
        "--prefix-output",
        "--init", "sh -c 'echo init line'",
        "--sidecar", f"proxy=sh -c '{proxy}'",
        "--sidecar-ready", f"proxy=exec:test -f {said}",
    ]  # fmt: skip
    argv = ["sh", "-c", "echo partial-no-newline; printf 'a\\nb'; echo err line >&2; exit 3"]
    cmd = pidone_cmd(mode, opts, argv)
    with raw_run(mode, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3
    out_lines = out.decode().splitlines()
    assert "init-0 | init line" in out_lines
    assert "proxy | proxy up" in out_lines
    # Lines in order, and the last one, cut short by the exit, still whole and named.
    assert [line for line in out_lines if line.startswith("app | ")] == [
        "app | partial-no-newline",
        "app | a",
        "app | b",
    ]
    err_lines = err.decode().splitlines()
    assert "proxy | proxy warn" in err_lines
    assert "app | err line" in err_lines
    final = json.loads(err_lines[-1])
    assert final["event"] == "terminated"
    assert "output_lines_dropped" not in final


def test_a_stalled_stdout_reader_never_stalls_pidone_and_drops_are_counted(mode):
    """Nobody reads pidone's stdout; the app writes without end: signals still reach the
    app at once, pidone exits with its code, and what could not be written is counted."""
    stalled = StalledPipe()
    try:
        cmd = pidone_cmd(mode, ["--prefix-output", "--grace", "5"], [PY, "-c", CHATTY])
        with raw_run(mode, cmd, stdout=stalled.w, stderr=subprocess.PIPE) as proc:
            stalled.handed_over()
            err = Lines(proc.stderr)
            err.wait_for("app | filled")
            sent = time.monotonic()
            os.kill(pidone_pid(mode, proc), signal.SIGTERM)
            assert proc.wait(10) == 5
            took = time.monotonic() - sent
            err.join()
    finally:
        stalled.close()
    assert took < 1.5  # the app's exit plus the relay's bounded wait at the end
    final = json.loads(err.lines[-1])
    assert final["event"] == "terminated"
    assert final["output_lines_dropped"] > 0
