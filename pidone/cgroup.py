"""OOM-kill counters of the memory cgroup pidone runs in (v2 and v1).

The kernel counts OOM kills per memory cgroup; reading the counter at start
and at the end tells whether the container lost a process to the OOM killer
during the run, which is what Kubernetes reports as ``OOMKilled``.  The
first reading is taken before the app starts (an app can be OOM-killed
within milliseconds), so this module uses nothing but ``open``.
"""

from __future__ import annotations

_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _own_cgroups() -> dict[str, str]:
    """Controller name (or "" for the v2 unified hierarchy) -> cgroup path."""
    found: dict[str, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(","):
            found[name] = path.rstrip("/")
    return found


def _counter(path: str, key: str) -> int | None:
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def oom_kills() -> int | None:
    """The OOM-kill count of our memory cgroup, or None where none is readable."""
    groups = _own_cgroups()
    if "memory" in groups:  # v1 memory controller
        count = _counter(f"{_ROOT}/memory{groups['memory']}/memory.oom_control", "oom_kill")
        if count is not None:
            return count
    if "" in groups:  # v2: the unified hierarchy, possibly mounted beside v1
        for base in (_ROOT, f"{_ROOT}/unified"):
            count = _counter(f"{base}{groups['']}/memory.events", "oom_kill")
            if count is not None:
                return count
    return None


class OomWatch:
    """OOM kills counted since the last look: one look per run of the app."""

    def __init__(self, before: int | None) -> None:
        self._before = before  # read before the app existed (boot)

    def since_last(self) -> bool:
        """Whether the cgroup counted an OOM kill since the last call; the next counts from now."""
        after = oom_kills()
        fired = self._before is not None and after is not None and after > self._before
        self._before = after
        return fired
