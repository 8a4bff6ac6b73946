"""``--user USER[:GROUP]``: the app drops to a user the way gosu and su-exec do, pidone stays root.

pidone runs as PID 1 of a fresh PID and mount namespace in which the test's own user and group
databases are bind-mounted over /etc/passwd and /etc/group (the machine's files are never
touched). The app, a shell, reports its own ``/proc/PID/status`` (Uid/Gid/Groups lines: real,
effective, saved and filesystem ids) and environment on stdout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness import CLEAN_ENV, PY, Lines, needs_root

pytestmark = needs_root

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
appuser:x:2001:2001:App:/home/appuser:/bin/sh
other:x:2005:2005::/home/other:/bin/sh
"""
GROUP = """\
root:x:0:
appgrp:x:2001:
data:x:2002:appuser
extra:x:2003:other,appuser
unrelated:x:2004:other
"""

# The app: its own credentials, as the kernel sees them, and the environment su-exec sets.
REPORT = (
    "grep -E '^(Uid|Gid|Groups|NoNewPrivs):' /proc/$$/status; "
    'echo "HOME=$HOME"; echo "USER=${USER-unset}"; echo "LOGNAME=${LOGNAME-unset}"'
)


def _databases(tmp_path: Path) -> tuple[Path, Path]:
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(PASSWD)
    group.write_text(GROUP)
    return passwd, group


def _command(tmp_path: Path, opts: list[str], argv: list[str]) -> list[str]:
    """pidone as PID 1 of a namespace that sees the test's user and group databases."""
    passwd, group = _databases(tmp_path)
    mount = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
    pidone = [PY, "-m", "pidone", "--log-format", "json", *opts, "--", *argv]
    return [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        mount,
        "sh",
        str(passwd),
        str(group),
        *pidone,
    ]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # USER and LOGNAME as a root login would have them, to see them replaced.
    return {**CLEAN_ENV, "USER": "root", "LOGNAME": "root", "HOME": "/root", **(extra or {})}


def run_to_end(
    tmp_path: Path, opts: list[str], argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(tmp_path, opts, argv),
        env=_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_lines(stdout: str, prefix: str = "") -> dict[str, list[str]]:
    """``Uid: 1 2 3 4`` lines (after *prefix*) as {"Uid": [...]}, and KEY=VALUE lines."""
    found: dict[str, list[str]] = {}
    for raw in stdout.splitlines():
        if not raw.startswith(prefix):
            continue
        line = raw[len(prefix) :]
        key, sep, rest = line.partition(":")
        if sep and key in {"Uid", "Gid", "Groups", "NoNewPrivs"}:
            found[key] = rest.split()
        elif "=" in line:
            name, _, value = line.partition("=")
            found[name] = [value]
    return found


def test_app_runs_as_named_user_with_its_groups_home_and_names(tmp_path):
    """By name: all four uids and gids are the user's, the group list is initgroups', HOME,
    USER and LOGNAME come from its entry."""
    done = run_to_end(tmp_path, ["--user", "appuser"], ["sh", "-c", REPORT])

    assert done.returncode == 0, done.stderr
    seen = status_lines(done.stdout)
    assert seen["Uid"] == ["2001"] * 4, done.stdout
    assert seen["Gid"] == ["2001"] * 4, done.stdout
    assert sorted(seen["Groups"]) == ["2001", "2002", "2003"], done.stdout
    assert seen["HOME"] == ["/home/appuser"]
    assert seen["USER"] == ["appuser"]
    assert seen["LOGNAME"] == ["appuser"]
    assert seen["NoNewPrivs"] == ["0"]


def test_a_named_group_replaces_the_users_group_list(tmp_path):
    """USER:GROUP (as gosu and su-exec): that group only, no supplementary groups."""
    done = run_to_end(tmp_path, ["--user", "appuser:unrelated"], ["sh", "-c", REPORT])

    assert done.returncode == 0, done.stderr
    seen = status_lines(done.stdout)
    assert seen["Uid"] == ["2001"] * 4, done.stdout
    assert seen["Gid"] == ["2004"] * 4, done.stdout
    assert seen["Groups"] == ["2004"], done.stdout


def test_numeric_ids_need_no_database_entry(tmp_path):
    """UID:GID with neither in the databases; HOME is /, and root's names are removed."""
    done = run_to_end(tmp_path, ["--user", "4242:4343"], ["sh", "-c", REPORT])

    assert done.returncode == 0, done.stderr
    seen = status_lines(done.stdout)
    assert seen["Uid"] == ["4242"] * 4, done.stdout
    assert seen["Gid"] == ["4343"] * 4, done.stdout
    assert seen["Groups"] == ["4343"], done.stdout
    assert seen["HOME"] == ["/"]
    assert seen["USER"] == ["unset"]
    assert seen["LOGNAME"] == ["unset"]


def test_init_commands_run_as_root_then_the_app_as_the_user(tmp_path, request):
    """The classic entrypoint: fix ownership as root in --init, then the app runs dropped."""
    # Somewhere the user can reach (pytest's tmp_path is under a directory only root enters).
    base = Path(tempfile.mkdtemp(prefix="pidone-user-test-"))
    base.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    data = base / "data"
    data.mkdir()
    init = f"sh -c {shlex.quote(f'chown -R 2001:2001 {data}; sed s/^/INIT-/ /proc/$$/status')}"
    app = f"touch {data}/written-by-app && {REPORT}"

    done = run_to_end(tmp_path, ["--init", init, "--user", "appuser"], ["sh", "-c", app])

    assert done.returncode == 0, done.stdout + done.stderr
    assert status_lines(done.stdout, "INIT-")["Uid"] == ["0"] * 4, done.stdout
    assert status_lines(done.stdout)["Uid"] == ["2001"] * 4, done.stdout
    assert (data / "written-by-app").stat().st_uid == 2001


def test_the_app_cannot_regain_root(tmp_path):
    """Real, effective and saved ids are all dropped: setresuid(0) is refused; with
    --no-new-privileges the kernel flag is set for the app's whole tree."""
    attempt = (
        "if setpriv --reuid=0 --regid=0 --clear-groups true 2>/dev/null; "
        "then echo REGAINED-ROOT; else echo STILL-UNPRIVILEGED; fi; " + REPORT
    )
    done = run_to_end(tmp_path, ["--user", "appuser", "--no-new-privileges"], ["sh", "-c", attempt])

    assert done.returncode == 0, done.stderr
    assert "STILL-UNPRIVILEGED" in done.stdout, done.stdout
    assert "REGAINED-ROOT" not in done.stdout
    seen = status_lines(done.stdout)
    assert seen["Uid"] == ["2001"] * 4, done.stdout
    assert seen["NoNewPrivs"] == ["1"], done.stdout


def test_hooks_drains_and_exec_probes_run_as_the_apps_user_pidone_stays_root(tmp_path):
    """Post-start hook, drain and exec: probe act for the app: they run as its user too."""
    hook = "sh -c 'echo HOOK-UID=$(id -u):$(id -g)'"
    drain = "sh -c 'echo DRAIN-UID=$(id -u):$(id -g)'"
    probe = "exec:sh -c 'echo PROBE-UID=$(id -u); exit 1'"
    opts = ["--user", "appuser", "--post-start", hook, "--drain", drain]
    opts += ["--readiness-probe", probe, "--readiness-period", "0.2"]
    app = "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    proc = subprocess.Popen(
        _command(tmp_path, opts, ["sh", "-c", app]),
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.wait_for("ready")
        out.wait_for("HOOK-UID=")
        err.wait_for("PROBE-UID=")
        pidone = _child_of(proc.pid)
        assert _uids(pidone) == ["0"] * 4, "pidone itself must keep root"
        os.kill(pidone, signal.SIGTERM)
        assert proc.wait(15) == 0, err.lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    out.join()
    err.join()
    assert out.wait_for("HOOK-UID=") == "HOOK-UID=2001:2001"
    assert out.wait_for("DRAIN-UID=") == "DRAIN-UID=2001:2001"
    assert "PROBE-UID=2001" in err.wait_for("PROBE-UID=")


def _child_of(pid: int) -> int:
    """unshare's forked child: pidone, PID 1 inside (after sh exec'd it)."""
    deadline = time.monotonic() + 10
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        assert time.monotonic() < deadline, "unshare never forked"
        time.sleep(0.01)


def _uids(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return line.split()[1:]
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nosuchuser", "unknown user 'nosuchuser'"),
        ("appuser:nosuchgroup", "unknown group 'nosuchgroup'"),
        ("4242", "no entry in the user database"),
        ("appuser:", "is not USER or USER:GROUP"),
    ],
)
def test_unknown_user_or_group_is_one_line_exit_2_and_nothing_starts(tmp_path, spec, fragment):
    """Nothing runs, not even the init commands, and pidone says why in one line."""
    done = run_to_end(
        tmp_path, ["--init", "echo INIT-RAN", "--user", spec], ["sh", "-c", "echo APP-RAN"]
    )

    assert done.returncode == 2
    assert done.stdout == "", done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_without_setuid_capability_user_is_refused_with_exit_2(tmp_path):
    """pidone cannot switch users (here root without CAP_SETUID/CAP_SETGID): exit 2, nothing
    started, instead of an app that silently keeps pidone's user."""
    marker = tmp_path / "app-ran"
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-setuid,-setgid",
            "--",
            PY,
            "-m",
            "pidone",
            "--user",
            "nobody",
            "--",
            "touch",
            str(marker),
        ],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "cannot switch to user 'nobody'" in done.stderr
    assert "CAP_SETUID and CAP_SETGID" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not marker.exists()


def test_user_comes_from_the_environment_and_the_config_file(tmp_path):
    """PIDONE_USER and the config file's ``user`` key set it like the option does."""
    config = tmp_path / "pidone.toml"
    config.write_text('user = "4242:4343"\nno-new-privileges = true\n')
    from_file = run_to_end(tmp_path, ["--config", str(config)], ["sh", "-c", REPORT])
    from_env = run_to_end(tmp_path, [], ["sh", "-c", REPORT], env={"PIDONE_USER": "appuser"})

    assert from_file.returncode == 0, from_file.stderr
    assert status_lines(from_file.stdout)["Uid"] == ["4242"] * 4
    assert status_lines(from_file.stdout)["NoNewPrivs"] == ["1"]
    assert from_env.returncode == 0, from_env.stderr
    assert status_lines(from_env.stdout)["Uid"] == ["2001"] * 4
