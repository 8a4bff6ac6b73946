"""Install pidone the way its README does, into a throw-away virtualenv.

Launch cost depends on how pidone is started: the console script that
``pip install`` generates imports ``pidone.main`` from site-packages, with
the bytecode pip compiled at install time, which is what users run.  The
benchmark therefore builds a fresh venv (``python3 -m venv`` + ``pip install``
of a snapshot of the checkout) and uses its ``bin/pidone``; if that fails
(no network for the dependencies, no ensurepip...) it falls back to
``python3 -m pidone`` from the checkout and says so in the report.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchError
from .inits import python3

INSTALL_TIMEOUT_S = 300.0
# What `pip install .` needs from the checkout; copying only these keeps the
# build out of the working tree and freezes the code for the whole run.
SOURCES = ("pyproject.toml", "README.md", "pidone")


@dataclass(frozen=True)
class PidoneInstall:
    command: str  # shell-quoted command that runs pidone
    how: str  # one sentence for the report
    from_checkout: bool  # needs PYTHONPATH pointing at the checkout


def checkout_command() -> PidoneInstall:
    return PidoneInstall(
        f"{shlex.quote(python3())} -m pidone",
        "`python3 -m pidone` run from the checkout (PYTHONPATH), not an installed console script",
        from_checkout=True,
    )


def install_venv(repo_root: Path, work_dir: Path) -> PidoneInstall:
    """``python3 -m venv`` + ``pip install <snapshot of the checkout>``; raises BenchError."""
    src, venv = work_dir / "pidone-src", work_dir / "venv"
    src.mkdir()
    for name in SOURCES:
        path = repo_root / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    _run([python3(), "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    _run([*pip, "--disable-pip-version-check", str(src)])
    script = venv / "bin" / "pidone"
    if not script.is_file():
        raise BenchError(f"pip install did not create {script}")
    return PidoneInstall(
        shlex.quote(str(script)),
        "the `pidone` console script of a fresh virtualenv (`python3 -m venv` + "
        "`pip install` of a snapshot of the checkout taken when the run started)",
        from_checkout=False,
    )


def _run(argv: list[str]) -> None:
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"`{shlex.join(argv)}`: {exc}") from exc
    if result.returncode != 0:
        tail = result.stderr.strip()[-300:]
        raise BenchError(f"`{shlex.join(argv)}` exited {result.returncode}: {tail}")
