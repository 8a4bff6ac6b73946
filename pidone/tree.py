"""The processes below pidone: finding them, signalling them, describing them.

Everything here reads the kernel's ``/proc`` directly: a walk down the
per-thread ``children`` lists touches only pidone's subtree (psutil's walk,
kept as the fallback where the kernel lacks those lists, reads every process
on the machine and is imported only then).  Callers walk at phase edges (the
stop signal, the deadline), never in a loop that runs while the app is
healthy.

As PID 1 of a namespace, "everything below pidone" is every other process:
orphans reparent to PID 1, and ``kill(-1, ...)`` reaches all of them at
once.  Otherwise pidone is a child subreaper, orphans still come to it, and
the tree walk finds even the processes that called setsid.

**At the deadline the kill comes first.**  Describing a process (its command
line) costs a few reads of ``/proc``, and reading ``/proc/PID/cmdline`` waits
for that process's memory-map lock, which a process can hold for as long as
it likes (a huge ``mmap``, a page fault on a dead NFS server).  So only what
is logged is described (the first :data:`DESCRIBED` processes), on a helper
thread, within :data:`DESCRIBE_BUDGET`; a read still blocked then is left to
its thread.  That happens just before the SIGKILL, because a killed process's
command line is gone the moment it exits; the SIGKILL itself then goes out at
once to everything, described or not, and the rest are only counted.

**Only pidone's own PID namespace.**  As PID 1 of a namespace whose ``/proc``
was not remounted (``unshare --pid`` without ``--mount-proc``), ``/proc``
shows the parent namespace: ``/proc/1`` is the host's init, and its pid
numbers are not pidone's.  :func:`own_proc` tells the two apart (the NSpid
line of ``/proc/self/status``); with a foreign ``/proc`` the walk starts
from ``/proc/self`` and every pid found is translated to pidone's numbering
through its own NSpid line before it is signalled or reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IS_PID1 = os.getpid() == 1

# Bounded so that a fork bomb cannot keep pidone in the kill loop forever.
_KILL_PASSES = 20
# What the log shows of the processes killed at the deadline (the rest are counted).
DESCRIBED = 50
# The most the description may delay the SIGKILL (a /proc read that blocks).
DESCRIBE_BUDGET = 0.1


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmdline: str
    age_s: float


# -- whose /proc is this? ---------------------------------------------------------

_OWN_PROC: bool | None = None
_DEPTH = 1  # entries of our own NSpid line as /proc shows it: our namespace's depth


def own_proc() -> bool:
    """Whether ``/proc`` shows pidone's own PID namespace (its pids are pidone's)."""
    global _OWN_PROC, _DEPTH  # noqa: PLW0603 - computed once, the mount does not change
    if _OWN_PROC is None:
        nspid = _nspid("self")
        if nspid is None:  # no NSpid line (Linux < 4.1), or no /proc at all
            with contextlib.suppress(OSError):
                _OWN_PROC = os.readlink("/proc/self") == str(os.getpid())
            _OWN_PROC = bool(_OWN_PROC)
        else:
            _DEPTH = len(nspid)
            _OWN_PROC = _DEPTH == 1
    return _OWN_PROC


def _nspid(pid: int | str) -> list[int] | None:
    """The NSpid line of a process: its pid in /proc's namespace, then in each below."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return None


def _own_pid(proc_pid: int) -> int | None:
    """A pid as /proc shows it, in pidone's numbering (None: gone, or not in our namespace)."""
    if own_proc():
        return proc_pid
    nspid = _nspid(proc_pid)
    if nspid is None or len(nspid) < _DEPTH:
        return None
    return nspid[_DEPTH - 1]


def _proc_self() -> int:
    """pidone's pid as /proc shows it."""
    if own_proc():
        return os.getpid()
    return int(os.readlink("/proc/self"))


# -- finding -------------------------------------------------------------------------


def descendants(root: int | None = None) -> list[int]:
    """Pids below ``root`` (default: pidone itself), parents before their children.

    Pids are pidone's own; walks down from ``root`` through the kernel's
    per-thread ``children`` lists, touching only the subtree.
    """
    try:
        start = _proc_self()
    except (OSError, ValueError):
        return []
    if not Path(f"/proc/{start}/task/{start}/children").exists():
        return _descendants_psutil(os.getpid() if root is None else root)
    if root is not None and root != os.getpid():
        found = _find(start, root)
        if found is None:
            return []
        start = found
    return _translate(_walk(start))


def _walk(
    start: int, visit: Callable[[list[int]], None] | None = None, limit: int | None = None
) -> list[int]:
    """Breadth first below ``start`` (/proc's numbering); ``visit`` sees each batch of kids.

    With ``limit``, stops once that many are found.
    """
    found: list[int] = []
    queue = [start]
    while queue and (limit is None or len(found) < limit):
        kids = _children(queue.pop(0))
        if visit is not None and kids:
            visit(kids)
        found.extend(kids)
        queue.extend(kids)
    return found if limit is None else found[:limit]


def _find(start: int, own: int) -> int | None:
    """/proc's pid of the process numbered ``own`` by pidone, searched below ``start``."""
    if own_proc():
        return own
    for proc_pid in _walk(start):
        if _own_pid(proc_pid) == own:
            return proc_pid
    return None


def _translate(proc_pids: list[int]) -> list[int]:
    if own_proc():
        return proc_pids
    return [pid for pid in map(_own_pid, proc_pids) if pid is not None]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):  # it exited meanwhile: it has no children
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError):
                kids += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return kids


def _descendants_psutil(root: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(root).children(recursive=True)]
    except (psutil.Error, OSError):
        return []


def _everyone(limit: int | None = None) -> list[int]:
    """As PID 1 with its own /proc: every other process of the namespace, pid order."""
    pids: list[int] = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit() and entry.name != "1":
                pids.append(int(entry.name))
                if limit is not None and len(pids) >= limit:
                    break
    return pids


# -- describing ------------------------------------------------------------------------


def _describe_one(pid: int, proc_pid: int, now_boot: float, ticks: int) -> ProcessInfo | None:
    """From /proc/PID/stat (never blocks on the process) and cmdline (may)."""
    try:
        with open(f"/proc/{proc_pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None  # gone
    head, _, tail = stat.rpartition(b")")
    fields = tail.split()
    comm = head.partition(b"(")[2].decode("utf-8", "replace")
    if not fields or fields[0] == b"Z":
        return None  # exited already; nothing left to kill or to describe
    age = now_boot - int(fields[19]) / ticks if len(fields) > 19 else 0.0
    cmdline = ""
    with contextlib.suppress(OSError), open(f"/proc/{proc_pid}/cmdline", "rb") as fh:
        cmdline = fh.read(65536).rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return ProcessInfo(pid, cmdline or f"[{comm}]", round(max(age, 0.0), 3))


def describe(pids: list[int], budget: float | None = None) -> list[ProcessInfo]:
    """Describe ``pids`` (pidone's numbering) from /proc; those that are gone are left out.

    With ``budget``, see :func:`_describe`.
    """
    if own_proc():
        return _describe([(pid, pid) for pid in pids], budget)
    try:
        below = _walk(_proc_self())
    except (OSError, ValueError):
        return []
    wanted = set(pids)
    pairs = {own: proc for proc in below if (own := _own_pid(proc)) in wanted}
    return _describe([(pid, pairs[pid]) for pid in pids if pid in pairs], budget)


def _describe(pairs: list[tuple[int, int]], budget: float | None) -> list[ProcessInfo]:
    """Describe (own pid, /proc's pid) pairs.

    With ``budget``, the reads run on a helper thread and whatever is read
    within ``budget`` seconds is returned: a read blocked on a process's
    memory-map lock never holds the caller longer.  Without a thread to be
    had (a pids limit), nothing is described.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    found: list[ProcessInfo] = []

    def run() -> None:
        now_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        for pid, proc_pid in pairs:
            info = _describe_one(pid, proc_pid, now_boot, ticks)
            if info is not None:
                found.append(info)

    if budget is None:
        run()
        return found

    thread = threading.Thread(target=run, name="describe", daemon=True)
    try:
        thread.start()
    except (RuntimeError, OSError):  # "can't start new thread": describe nothing
        return []
    thread.join(budget)
    return list(found)


def _first(limit: int) -> list[tuple[int, int]]:
    """The first ``limit`` processes below pidone, as (own pid, /proc's pid)."""
    if IS_PID1 and own_proc():
        return [(pid, pid) for pid in _everyone(limit)]
    try:
        start = _proc_self()
    except (OSError, ValueError):
        return []
    if not Path(f"/proc/{start}/task/{start}/children").exists():
        return [(pid, pid) for pid in _descendants_psutil(os.getpid())[:limit]]
    pairs = [(_own_pid(proc), proc) for proc in _walk(start, limit=limit)]
    return [(own, proc) for own, proc in pairs if own is not None]


# -- signalling -------------------------------------------------------------------------


def signal_pids(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def signal_rest(signum: int) -> None:
    """Send ``signum`` once to every process below pidone."""
    if IS_PID1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signum)
    else:
        signal_pids(descendants(), signum)


def lingering() -> list[ProcessInfo]:
    """Every live process below pidone, described (unbounded: prefer :func:`kill_described`)."""
    return describe(descendants())


def kill_all() -> list[int]:
    """SIGKILL everything below pidone, including processes forked meanwhile.

    Returns the pids killed (pidone's numbering).
    """
    if IS_PID1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        # Everything killed stays in /proc until reaped: the list is complete.
        return _everyone() if own_proc() else descendants()
    # A process forked between the walk and the kill is missed by one pass,
    # but its parent dies, so it reparents to us and the next pass sees it.
    # Killed processes stay in the tree as zombies until reaped: skip them.
    # Each batch of children is killed as soon as it is found, not after the
    # whole walk: most of a large tree dies while the walk goes on.
    killed: list[int] = []
    seen: set[int] = set()
    try:
        start = _proc_self()
    except (OSError, ValueError):
        return killed

    def kill_batch(kids: list[int]) -> None:
        fresh = [pid for pid in _translate(kids) if pid not in seen]
        signal_pids(fresh, signal.SIGKILL)
        seen.update(fresh)
        killed.extend(fresh)

    for _ in range(_KILL_PASSES):
        before = len(killed)
        if Path(f"/proc/{start}/task/{start}/children").exists():
            _walk(start, kill_batch)
        else:
            kill_batch(_descendants_psutil(os.getpid()))
        if len(killed) == before:
            break
    return killed


def kill_described(limit: int = DESCRIBED) -> list[ProcessInfo]:
    """At the deadline: SIGKILL everything below pidone; describe the first ``limit``.

    The first ``limit`` processes are described within :data:`DESCRIBE_BUDGET`
    just before the kill (afterwards their command lines are gone); every
    process killed is in the result, the ones not described with an empty
    command line, so that the count is the whole count.
    """
    out = _describe(_first(limit), DESCRIBE_BUDGET)
    killed = kill_all()
    shown = {info.pid for info in out}
    out.extend(ProcessInfo(pid, "", 0.0) for pid in killed if pid not in shown)
    return out


def kill_tree(root: int) -> None:
    """SIGKILL ``root``, its process group and every descendant (a timed-out drain)."""
    below = descendants(root)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, signal.SIGKILL)
    signal_pids([root, *below], signal.SIGKILL)
