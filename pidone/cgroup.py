"""OOM-kill counters of the memory cgroup pidone runs in (v2 and v1).

The kernel counts OOM kills per memory cgroup; reading the counter at start
and at the end tells whether the container lost a process to the OOM killer
during the run, which is what Kubernetes reports as ``OOMKilled``.
"""

from __future__ import annotations

from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


def _own_cgroups() -> dict[str, str]:
    """Controller name (or "" for the v2 unified hierarchy) -> cgroup path."""
    found: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            found[name] = path
    return found


def _counter(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_kills() -> int | None:
    """The OOM-kill count of our memory cgroup, or None where none is readable."""
    groups = _own_cgroups()
    if "memory" in groups:  # v1 memory controller
        v1 = _ROOT / "memory" / groups["memory"].lstrip("/") / "memory.oom_control"
        count = _counter(v1, "oom_kill")
        if count is not None:
            return count
    if "" in groups:  # v2: the unified hierarchy, possibly mounted at the root
        for base in (_ROOT, _ROOT / "unified"):
            count = _counter(base / groups[""].lstrip("/") / "memory.events", "oom_kill")
            if count is not None:
                return count
    return None
