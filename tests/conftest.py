"""Fixtures: each behaviour runs with pidone as PID 1 and as a subreaper."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Pidone


@pytest.fixture(params=["pid1", "subreaper"])
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "pid1" and (os.geteuid() != 0 or not shutil.which("unshare")):
        pytest.skip("PID namespaces need root and unshare")
    return str(request.param)


@pytest.fixture
def run(mode: str) -> Iterator[Any]:
    started: list[Pidone] = []

    def start(opts: list[str], argv: list[str], **popen: Any) -> Pidone:
        p = Pidone(mode, opts, argv, **popen)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.destroy()
