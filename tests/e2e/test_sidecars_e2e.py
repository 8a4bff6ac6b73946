"""The nginx + webapp example (examples/sidecars.toml): rehearsed, and run in a real container.

The example is used as it is, with only its paths (``/app/`` -> this checkout's examples)
and ports (8000, 8080 -> free ones) substituted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import Podman

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PYTHON = sys.executable


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _example(tmp: Path) -> tuple[Path, int, int]:
    """The example config and nginx config, with paths and ports substituted."""
    proxy, app = _free_port(), _free_port()
    for name in ("sidecars.toml", "nginx-proxy.conf"):
        text = (EXAMPLES / name).read_text()
        text = text.replace("/app/", f"{tmp}/").replace("8080", str(app))
        text = text.replace("8000", str(proxy)).replace("/tmp/pidone-nginx", f"{tmp}/nginx")
        (tmp / name).write_text(text)
    return tmp / "sidecars.toml", proxy, app


@pytest.fixture
def nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("nginx is not installed (the e2e set-up installs nginx-light)")
    return found


def test_rehearsal_through_the_nginx_sidecar_passes(tmp_path, nginx):
    """Under keep-alive load through nginx, the stop loses no request and gets no 5xx."""
    config, proxy, app = _example(tmp_path)
    report = tmp_path / "report.json"
    argv = [
        *(PYTHON, "-m", "pidone", "rehearse"),
        *("--load", f"http://127.0.0.1:{proxy}/", "--warmup", "1", "--report", str(report)),
        *("--config", str(config)),
        *("--", PYTHON, str(EXAMPLES / "webapp.py"), "--port", str(app)),
    ]
    env = {"PATH": f"{Path(nginx).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=80, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["verdict"] == "pass"
    assert result["requests"]["ok"] > 0
    assert result["requests"]["lost"] == 0


def test_nginx_sidecar_and_app_stop_in_order_in_a_real_container(
    podman: Podman, container: str, tmp_path: Path, nginx: str
) -> None:
    config, proxy, app = _example(tmp_path)
    podman.start(
        container,
        [PYTHON, "-m", "pidone", "--config", str(config), "--", PYTHON,
         str(EXAMPLES / "webapp.py"), "--port", str(app)],
        network="host",
        env={"PATH": f"{Path(nginx).parent}:/usr/local/bin:/usr/bin:/bin"},
        extra=["--volume", f"{tmp_path}:{tmp_path}"],
    )  # fmt: skip
    podman.wait_for_log(container, '"app_started"', timeout=20)
    deadline = time.monotonic() + 15
    status = 0
    while status != 200 and time.monotonic() < deadline:  # the proxy answers for the app
        status = _get(proxy)
    assert status == 200
    took = podman.stop(container, timeout=15)
    assert took < 8, took
    assert podman.exit_code(container) == 0
    _, err = podman.logs(container)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.index("sidecar_ready") < names.index("app_started")
    # The example drains nginx first (its graceful quit): it ends during the stop and is
    # not restarted, since the stop is under way.
    assert names.index("shutdown_started") < names.index("sidecar_exited")
    assert "sidecar_restart_scheduled" not in names
    final = events[-1]
    assert final["event"] == "terminated"
    assert final["reason"] == "Completed"
    assert [(s["name"], s["exit_code"]) for s in final["sidecars"]] == [("proxy", 0)]


def _get(port: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except OSError:
        time.sleep(0.1)  # the proxy's port is not open yet: try again shortly
        return 0
    finally:
        conn.close()
