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


# Lines around the relay's limit of 16 KiB: an empty one, exact multiples, one byte over,
# one whose newline comes in a write of its own, and one written in pieces over time.
LONG_LINES = """
import os, sys
M = 16 * 1024
out = sys.stdout.buffer
out.write(b"\\n" + b"a" * M + b"\\n" + b"b" * 2 * M + b"\\n" + b"c" * (M + 1) + b"\\n")
out.flush()
out.write(b"d" * M)
out.flush()
out.write(b"\\n")
out.flush()
for _ in range(6):
    out.write(b"e" * M)
    out.flush()
out.write(b"e" * 100 + b"\\n")
out.flush()
"""


def test_long_lines_are_cut_at_16_kib_and_no_empty_line_is_added(mode):
    """However the bytes arrive, a line is cut into whole 16 KiB lines and nothing else:
    an exact multiple gains no empty line after it, an empty line stays one."""
    cmd = pidone_cmd(mode, ["--prefix-output"], [PY, "-c", LONG_LINES])
    with raw_run(mode, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()[-2000:]
    m = 16 * 1024
    expected = ["", "a" * m, "b" * m, "b" * m, "c" * m, "c", "d" * m, *["e" * m] * 6, "e" * 100]
    assert out.decode().splitlines() == [f"app | {line}" for line in expected]


def test_out_of_descriptors_a_process_starts_unprefixed_and_its_code_comes_out():
    """Under every small descriptor limit pidone keeps its promise: the app's own code,
    or a clean start error; a pipe pair it could not finish is undone, never half kept."""
    import resource

    seen: dict[int, tuple[int, str]] = {}
    for limit in range(7, 21):
        proc = subprocess.run(
            pidone_cmd("subreaper", ["--prefix-output"], ["sh", "-c", "echo said; exit 6"]),
            capture_output=True,
            timeout=20,
            preexec_fn=lambda n=limit: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)),
            check=False,
        )
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert "internal_error" not in err, (limit, err)
        assert "Traceback" not in err, (limit, err)
        assert proc.returncode in (6, 126), (limit, proc.returncode, err)
        seen[limit] = (proc.returncode, out)
    unprefixed = [n for n, (code, out) in seen.items() if out == "said\n"]
    assert unprefixed, seen  # some limit left no pipes: the app wrote straight to stdout
    assert all(seen[n][0] == 6 for n in unprefixed)
    assert seen[20] == (6, "app | said\n")
