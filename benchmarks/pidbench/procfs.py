"""Small readers for /proc, used to observe an init from the host.

The init lives in a child PID namespace, but every process of that namespace
also has a host pid, so the host's /proc shows it like any other process.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def status(pid: int) -> dict[str, str]:
    """Parse /proc/PID/status; raises OSError once the process is gone."""
    return _parse_status(Path(f"/proc/{pid}/status"))


def kib(fields: dict[str, str], key: str) -> int:
    """Read a ``NNN kB`` field; 0 when absent (zombies have no memory fields)."""
    value = fields.get(key, "0 kB")
    return int(value.split()[0])


def children(pid: int) -> list[int]:
    """Direct children of every thread of PID (needs CONFIG_PROC_CHILDREN)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(child) for child in text.split())
    return found


def context_switches(pid: int) -> int:
    """Voluntary + involuntary switches summed over all threads of PID.

    /proc/PID/status only counts the main thread, and an init written in a
    high-level language may well run helper threads, so sum per task.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = _parse_status(task / "status")
        total += int(fields["voluntary_ctxt_switches"])
        total += int(fields["nonvoluntary_ctxt_switches"])
    return total


def _parse_status(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def become_subreaper() -> None:
    """Make this process the reaper of any orphan left below it.

    In subreaper mode an init that fails to kill its whole tree would leave
    orphans behind; with this set they re-parent to the benchmark, which can
    count and kill them instead of leaking them to the host's init.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def cpu_time_ns(pid: int) -> int:
    """Nanoseconds on CPU summed over all threads (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total
