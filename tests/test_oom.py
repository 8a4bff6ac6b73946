"""A real OOM kill in a real memory cgroup (v1 here; v2 reads memory.events)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import PY, ROOT

pytestmark = pytest.mark.timeout(60)

MEMORY_V1 = Path("/sys/fs/cgroup/memory")


@pytest.fixture
def small_cgroup():
    if not os.access(MEMORY_V1, os.W_OK):
        pytest.skip("needs a writable cgroup v1 memory controller")
    group = MEMORY_V1 / f"pidone-test-oom-{os.getpid()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(64 << 20))
    memsw = group / "memory.memsw.limit_in_bytes"
    if memsw.exists():  # no escape into swap
        memsw.write_text(str(64 << 20))
    yield group
    for pid in (group / "cgroup.procs").read_text().split():
        os.kill(int(pid), 9)
    group.rmdir()


def test_oom_kill_in_the_containers_cgroup_is_reported_as_oomkilled(small_cgroup):
    hog = "data = b'x' * (512 << 20)"
    pidone = f"exec unshare --pid --fork --mount-proc {PY} -m pidone --log-format json -- "
    script = f'echo $$ > {small_cgroup}/cgroup.procs && {pidone} {PY} -c "{hog}"'
    done = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 137, done.stderr
    final = done.stderr.strip().splitlines()[-1]
    assert '"reason": "OOMKilled"' in final
    assert '"exit_code": 137' in final
