"""The processes below pidone: finding them, signalling them, describing them.

psutil lives here and is imported only when a shutdown needs it, never on
the start-up path.  Walking the tree rebuilds a whole-system parent map on
every call, so callers use it at phase edges (once the app is gone, at the
deadline), never in a loop that runs while the app is healthy.

As PID 1 of a namespace, "everything below pidone" is every other process:
orphans reparent to PID 1, and ``kill(-1, ...)`` reaches all of them at
once.  Otherwise pidone is a child subreaper, orphans still come to it, and
the tree walk finds even the processes that called setsid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

IS_PID1 = os.getpid() == 1

# Bounded so that a fork bomb cannot keep pidone in the kill loop forever.
_KILL_PASSES = 20


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmdline: str
    age_s: float


def descendants(root: int | None = None) -> list[int]:
    """Pids below ``root`` (default: pidone itself), parents before their children.

    Walks down from ``root`` through the kernel's per-thread ``children``
    lists, touching only the subtree; psutil's walk, the fallback where
    the kernel lacks those lists, reads every process on the machine.
    """
    start = os.getpid() if root is None else root
    if not Path(f"/proc/{start}/task/{start}/children").exists():
        return _descendants_psutil(start)
    found: list[int] = []
    queue = [start]
    while queue:
        kids = _children(queue.pop(0))
        found.extend(kids)
        queue.extend(kids)
    return found


def descendants_but(spare: Collection[int]) -> list[int]:
    """Pids below pidone, except the ``spare`` ones and everything below them."""
    keep = set(spare)
    found: list[int] = []
    queue = [pid for pid in _children(os.getpid()) if pid not in keep]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(_children(pid))
    return found


def children() -> list[int]:
    """pidone's own children (reparented orphans included), from /proc."""
    return _children(os.getpid())


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
    except psutil.Error:
        return []


def describe(pids: list[int]) -> list[ProcessInfo]:
    import psutil

    now = time.time()
    found: list[ProcessInfo] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = " ".join(proc.cmdline()) or f"[{proc.name()}]"
                found.append(ProcessInfo(pid, cmdline, round(now - proc.create_time(), 3)))
    return found


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
    """Every live process below pidone, for the report at the deadline."""
    return describe(descendants())


def kill_all() -> None:
    """SIGKILL everything below pidone, including processes forked meanwhile."""
    if IS_PID1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        return
    # A process forked between the walk and the kill is missed by one pass,
    # but its parent dies, so it reparents to us and the next pass sees it.
    # Killed processes stay in the tree as zombies until reaped: skip them.
    killed: set[int] = set()
    for _ in range(_KILL_PASSES):
        fresh = [pid for pid in descendants() if pid not in killed]
        if not fresh:
            return
        signal_pids(fresh, signal.SIGKILL)
        killed.update(fresh)


def kill_tree(root: int) -> None:
    """SIGKILL ``root``, its process group and every descendant (a timed-out drain)."""
    below = descendants(root)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, signal.SIGKILL)
    signal_pids([root, *below], signal.SIGKILL)
