"""The plain-init contract: exit codes, stdio, signals, reaping, signal state."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest
from harness import PY, ROOT, Pidone, app, pidone_cli, wait_until, wakeups_while_idle

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("script", "expected", "reason"),
    [
        ("raise SystemExit(0)", 0, "Completed"),
        ("raise SystemExit(3)", 3, "Error"),
        ("raise SystemExit(255)", 255, "Error"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)", 128 + 10, "Signaled"),
    ],
)
def test_exit_code_is_the_apps_or_128_plus_signal(run, script, expected, reason):
    p = run([], [PY, "-c", script])
    assert p.wait() == expected
    final = p.final()
    assert final["reason"] == reason
    assert final["exit_code"] == expected


def test_missing_command_exits_127_naming_it(run):
    p = run([], ["no-such-command-xyz"])
    assert p.wait() == 127
    assert p.final()["reason"] == "StartError"
    assert "no-such-command-xyz" in p.event("app_start_failed")["error"]


def test_non_executable_command_exits_126(run, tmp_path):
    script = tmp_path / "app.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    p = run([], [str(script)])
    assert p.wait() == 126
    assert p.final()["reason"] == "StartError"


def test_remap_exit_applies_to_the_final_code(run):
    p = run(["--remap-exit", "3:0", "--remap-exit", "4:9"], [PY, "-c", "raise SystemExit(3)"])
    assert p.wait() == 0
    assert p.final()["exit_code"] == 0


def test_stdio_env_and_cwd_reach_the_app_untouched(run, tmp_path):
    script = (
        "import os, sys; data = sys.stdin.read(); print('in=' + data); "
        "print('env=' + os.environ['PIDONE_TEST_VAR']); print('cwd=' + os.getcwd()); "
        "print('err-line', file=sys.stderr)"
    )
    p = run(
        [],
        [PY, "-c", script],
        stdin=subprocess.PIPE,
        cwd=tmp_path,
        env={"PIDONE_TEST_VAR": "va lue"},
    )
    p.proc.stdin.write(b"hello stdin")
    p.proc.stdin.close()
    assert p.wait() == 0
    assert p.out.lines == ["in=hello stdin", "env=va lue", f"cwd={tmp_path}"]
    assert "err-line" in p.err.lines


def test_argv_is_passed_untouched(run, tmp_path):
    out = tmp_path / "argv"
    dump = (
        "import os, sys; open(sys.argv[1], 'wb').write("
        "b'\\0'.join(os.fsencode(a) for a in sys.argv[2:]))"
    )
    args = [b"--grace", b"-5", b"--", b"x" * 100_000, b"\xff\xfe not utf-8", b""]
    p = run([], [PY, "-c", dump, str(out), *[os.fsdecode(a) for a in args]])
    assert p.wait() == 0
    assert out.read_bytes() == b"\0".join(args)


FORWARDED = [
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGALRM,
    signal.SIGCONT,
    signal.SIGPWR,
    signal.SIGURG,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGXCPU,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGABRT,
    signal.SIGSTKFLT,
    signal.SIGRTMIN,
    signal.SIGRTMIN + 5,
    signal.SIGRTMAX,
]


def test_every_catchable_signal_reaches_the_app_once(run):
    p = run(["--shutdown-signal", "USR2"], app("recorder", "--exit-on", "TERM"))
    p.ready()
    sent = [s for s in FORWARDED if s != signal.SIGUSR2] + [signal.SIGTERM]
    for count, signum in enumerate(sent, start=1):
        p.kill(signum)
        p.out.wait_for("signal ", count=count)
    received = [line.split()[1] for line in p.out.lines if line.startswith("signal ")]
    names = [
        signal.Signals(s).name
        if s in signal.Signals._value2member_map_
        else f"SIGRTMIN+{s - signal.SIGRTMIN}"
        for s in sent
    ]
    assert received == names
    assert p.wait() == 0
    # pidone itself never stopped on TSTP/TTIN/TTOU: it went on to forward the rest.


def test_signal_to_group_reaches_the_apps_children(run, tmp_path):
    log = tmp_path / "log"
    script = f"{PY} {app('recorder')[1]} --log {log} & {PY} {app('recorder')[1]} --log {log} & wait"
    p = run(["--signal-to", "group", "--shutdown-signal", "USR2"], ["sh", "-c", script])
    # Both write to one stdout, where their lines can interleave: read the log file.
    wait_until(lambda: log.exists() and log.read_text().count("ready") == 2)
    p.kill(signal.SIGHUP)
    # sh dies of SIGHUP; both recorders (same group) record it.
    wait_until(lambda: log.read_text().count("signal SIGHUP") == 2)


def test_every_orphan_zombie_is_reaped(run, mode):
    p = run([], app("tree", "--orphans", "300", "--linger", "0.2"))
    p.ready()

    def zombies() -> list[int]:
        found = []
        for proc in p.descendants():
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
            except psutil.Error:
                pass
        return found

    # The 300 orphans exit together (merged SIGCHLDs); none may stay a zombie.
    wait_until(lambda: len(p.descendants()) == 1 and not zombies(), timeout=10)
    p.kill(signal.SIGTERM)
    assert p.wait() == 128 + signal.SIGTERM


def test_orphans_come_to_pidone_when_not_pid1():
    p = Pidone("subreaper", [], app("tree", "--worker", "daemon"))
    try:
        line = p.out.wait_for("ready")
        daemon_pid = int(line.split()[-1])
        # The daemon's parent exited right after forking it: it must now be ours.
        wait_until(lambda: psutil.Process(daemon_pid).ppid() == p.pid)
        p.kill(signal.SIGTERM)
        p.wait()
    finally:
        if p.proc.poll() is None:
            p.destroy()


def test_app_starts_with_empty_mask_and_default_dispositions(run):
    p = run([], ["cat", "/proc/self/status"])
    assert p.wait() == 0
    status = dict(line.split(":\t", 1) for line in p.out.lines if ":\t" in line)
    assert int(status["SigBlk"], 16) == 0
    assert int(status["SigIgn"], 16) == 0, "SIGPIPE/SIGXFSZ ignored by Python leaked"


def test_idle_pidone_does_not_wake_up(run):
    p = run([], app("recorder"))
    p.ready()
    assert wakeups_while_idle(p.pid) == 0
    p.kill(signal.SIGTERM)
    p.wait()


def test_app_is_started_before_structlog_and_psutil_are_imported(tmp_path):
    probe = (
        "import sys\n"
        "def hook(event, args):\n"
        "    if event in ('os.posix_spawn', 'os.fork'):\n"
        "        mods = ('structlog', 'psutil', 'asyncio')\n"
        "        heavy = sorted(m for m in mods if m in sys.modules)\n"
        "        sys.stderr.write(f'AT-SPAWN {heavy}\\n')\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['pidone', '--', 'true']\n"
        "import runpy; runpy.run_module('pidone', run_name='__main__')\n"
    )
    done = subprocess.run(
        [PY, "-c", probe],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "AT-SPAWN []" in done.stderr.splitlines()


def test_terminal_app_gets_its_own_foreground_group_and_ctrl_c(tmp_path):
    """With a tty, the app owns the terminal: job control and Ctrl-C work as without an init."""
    import pty

    # The verdict is built at run time, so pidone's own log line (which quotes
    # the app's argv) cannot be mistaken for it.
    script = (
        "import os, sys, time; "
        "ok = os.tcgetpgrp(0) == os.getpgrp() == os.getpid(); "
        "print('VERDICT-' + ('FOREGROUND' if ok else 'BACKGROUND'), flush=True); time.sleep(30)"
    )
    pid, master = pty.fork()
    if pid == 0:  # the child of pty.fork has the pty as controlling terminal
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(PY, [PY, "-m", "pidone", "--log-format", "json", "--", PY, "-c", script])
    output = b""
    deadline = time.monotonic() + 15
    while b"VERDICT-" not in output.replace(b"'VERDICT-'", b"") and time.monotonic() < deadline:
        output += os.read(master, 4096)
    assert b"VERDICT-FOREGROUND" in output, output
    os.write(master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the foreground group
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGINT


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--grace", "-1", "true"], "--grace"),
        (["--bogus", "true"], "--bogus"),
        (["--stop-signal", "NOPE", "true"], "NOPE"),
        (["--remap-exit", "300:0", "true"], "300:0"),
        (["--log-format", "xml", "true"], "xml"),
    ],
)
def test_bad_option_is_one_line_exit_2_and_app_never_starts(tmp_path, args, fragment):
    marker = tmp_path / "started"
    done = subprocess.run(
        [PY, "-m", "pidone", *args[:-1], "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert fragment in lines[0]
    assert not marker.exists()


def test_no_command_prints_usage_and_exits_2():
    done = subprocess.run(
        [PY, "-m", "pidone"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 2
    assert "Usage:" in done.stderr


def test_environment_sets_options_and_command_line_wins(run):
    p = run([], [PY, "-c", "raise SystemExit(3)"], env={"PIDONE_REMAP_EXIT": "3:7"})
    assert p.wait() == 7
    p = run(
        ["--remap-exit", "3:9"], [PY, "-c", "raise SystemExit(3)"], env={"PIDONE_REMAP_EXIT": "3:7"}
    )
    assert p.wait() == 9


def test_console_format_is_for_people(run):
    p = run(["--log-format", "console"], ["true"])
    assert p.wait() == 0
    assert not any(line.startswith("{") for line in p.err.lines)
    assert "terminated" in p.err.lines[-1]
    assert "Completed" in p.err.lines[-1]


def test_json_log_lines_carry_event_level_and_utc_timestamp(run):
    p = run([], ["true"])
    assert p.wait() == 0
    for event in p.events():
        assert {"event", "level", "timestamp"} <= event.keys()
        assert event["timestamp"].endswith("Z")
    assert p.event("app_started")["argv"] == ["true"]


def test_version_and_help():
    version = pidone_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("pidone ")
    helptext = pidone_cli("--help")
    assert helptext.returncode == 0
    assert "PIDONE_GRACE" in helptext.stdout
    assert "--signal-to" in helptext.stdout
