#!/usr/bin/env python3
"""Benchmark pidone against tini, dumb-init, catatonit and a bare-Python floor.

Usage (as root, Linux)::

    python3 benchmarks/run.py [--quick] [--pidone CMD | --no-venv] [--output FILE]

pidone is installed the way its README says (``pip install``) into a fresh
virtualenv and started by its console script, unless --pidone or --no-venv
says otherwise.  Every init runs as PID 1 of its own PID namespace (``unshare --pid --fork
--mount-proc``) in front of identical C workloads compiled at run time from
``benchmarks/helpers/``.  Results are printed and written to BENCHMARKS.md at
the repository root.  A full run takes a few minutes, ``--quick`` under one.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pidbench import probing, report, workloads
from pidbench.build import build_helpers
from pidbench.container import UNSHARE, reap_strays
from pidbench.errors import BenchError
from pidbench.inits import PIDONE, PIDONE_PROBES, Init, all_inits
from pidbench.install import PidoneInstall, checkout_command, install_venv
from pidbench.procfs import become_subreaper
from pidbench.stats import Series
from pidbench.workloads import Context, Plan, Values

if TYPE_CHECKING:
    from types import FrameType

REPO_ROOT = Path(__file__).resolve().parent.parent
Sampler = Callable[[Context, Init], Values]
Applies = Callable[[Init], str]  # returns a "not applicable" reason, or ""


@dataclass(frozen=True)
class Workload:
    name: str
    metrics: tuple[str, ...]
    sampler: Sampler
    reps: int
    applies: Applies = lambda _init: ""
    probes: bool = False  # also runs the "pidone + probes" variant


def _reaps(init: Init) -> str:
    return "" if init.reaps else "the app is PID 1 and nothing reaps"


def _escalates(init: Init) -> str:
    return "" if init.escalates else "never escalates"


def _pidone_only(init: Init) -> str:
    return "" if init.name in (PIDONE, PIDONE_PROBES) else "run for pidone only"


def workload_list(plan: Plan) -> list[Workload]:
    reaping = [
        Workload(f"reaping {n}", (f"reap_{n}_ms",), workloads.reaping(n), reps, _reaps)
        for n, reps in zip(plan.reap_sizes, plan.reap_reps, strict=True)
    ]
    return [
        Workload("launch", ("launch_ms",), workloads.launch, plan.launch_reps),
        Workload("round trip", ("roundtrip_ms",), workloads.round_trip, plan.launch_reps),
        Workload("idle", ("rss_mib", "wakeups_per_s"), workloads.idle, plan.idle_reps),
        Workload(
            "signal forwarding",
            ("signal_p50_us", "signal_p99_us", "signal_max_us"),
            workloads.forwarding(paced=False),
            plan.signal_reps,
        ),
        Workload(
            "signal forwarding, paced (pidone with and without probes)",
            (
                "paced_signal_p50_us",
                "paced_signal_p99_us",
                "paced_signal_max_us",
                "paced_probe_runs",
            ),
            workloads.forwarding(paced=True),
            plan.signal_reps,
            _pidone_only,
            probes=True,
        ),
        Workload("stop", ("stop_ms",), workloads.stop, plan.stop_reps, probes=True),
        *reaping,
        Workload(
            "escalation (PID 1)",
            ("escalate_pid1_ms", "hwm_pid1_mib"),
            workloads.escalation(pid1=True),
            plan.escalation_reps,
            _escalates,
        ),
        Workload(
            "escalation (subreaper)",
            ("escalate_subreaper_ms", "hwm_subreaper_mib"),
            workloads.escalation(pid1=False),
            plan.escalation_reps,
            _escalates,
        ),
        Workload(
            "stop, stderr stalled",
            ("stalled_stop_ms",),
            workloads.stalled_stop,
            plan.stalled_reps,
        ),
        Workload(
            "signal forwarding, stderr stalled",
            ("stalled_signal_p50_us", "stalled_signal_p99_us", "stalled_signal_max_us"),
            workloads.stalled_forwarding,
            plan.stalled_reps,
        ),
        Workload(
            "dropped lines",
            (
                "drop_rss_before_mib",
                "drop_rss_mib",
                "drop_hwm_mib",
                "drop_lines",
                "drop_signal_p99_us",
            ),
            workloads.dropped_lines,
            plan.dropped_reps,
            _pidone_plain,
        ),
    ]


def _pidone_plain(init: Init) -> str:
    return "" if init.name == PIDONE else "run for pidone only"


# -- running ------------------------------------------------------------------


def rotated(items: Sequence[Init], by: int) -> list[Init]:
    """Shift the start each repetition so no init always runs first or last."""
    k = by % len(items)
    return [*items[k:], *items[:k]]


def run_workload(
    work: Workload,
    inits: Sequence[Init],
    usable: Sequence[Init],
    ctx: Context,
    results: report.Results,
) -> None:
    """Run every repetition of one workload, alternating the usable inits."""
    table = {m: results.setdefault(m, {}) for m in work.metrics}
    runnable = []
    for init in inits:
        reason = work.applies(init) if init in usable else "unavailable, see notes"
        if init.probes and not work.probes:
            reason = "measured with probes: signal forwarding and stop only"
        for metric in work.metrics:
            table[metric][init.name] = Series(not_applicable=reason)
        if not reason:
            runnable.append(init)
    for rep in range(work.reps if runnable else 0):
        for init in rotated(runnable, rep):
            _one_sample(work, init, ctx, table)


def _one_sample(
    work: Workload, init: Init, ctx: Context, table: dict[str, dict[str, Series]]
) -> None:
    try:
        values = work.sampler(ctx, init)
    except (BenchError, OSError) as exc:
        _progress(f"  {work.name} / {init.name}: FAILED: {exc}")
        for metric in work.metrics:
            table[metric][init.name].errors.append(str(exc))
        return
    finally:
        # Only subreaper-mode runs can leak; this is the safety net.
        reap_strays()
    for metric, value in values.items():
        series = table[metric][init.name]
        series.samples.extend(value if isinstance(value, list) else [value])


def check_available(
    inits: Sequence[Init], env: dict[str, str], noop: str
) -> tuple[list[Init], list[str]]:
    """Smoke-test each init as PID 1; returns the usable ones and notes on the rest.

    An init that cannot even run a no-op app would only produce a wall of
    timeouts, so it is reported once here and skipped everywhere else.
    """
    usable, notes = [], []
    for init in inits:
        problem = _smoke_test([*UNSHARE, *init.command([noop])], env)
        if problem:
            notes.append(f"{init.name} unavailable: {problem}")
        else:
            usable.append(init)
    return usable, notes


def _smoke_test(argv: list[str], env: dict[str, str]) -> str:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return f"`{shlex.join(argv)}` did not exit within 10 s"
    except OSError as exc:
        return f"`{shlex.join(argv)}`: {exc}"
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip()[-300:]
        return f"`{shlex.join(argv)}` exited {result.returncode}: {tail}"
    return ""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- entry point --------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions, short idle window (< 1 min)"
    )
    parser.add_argument(
        "--pidone",
        default=None,
        help="command that runs pidone (default: the console script of a fresh venv "
        "with the checkout pip-installed; python3 -m pidone if that fails)",
    )
    parser.add_argument(
        "--no-venv",
        action="store_true",
        help="skip the venv and run python3 -m pidone from the checkout",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="workload names to run, separated by ';' (e.g. 'stop;stop, stderr stalled'); "
        "the others are reported as not run",
    )
    parser.add_argument(
        "--inits", default=None, help="comma-separated init names to compare (default: all)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "BENCHMARKS.md", help="markdown report path"
    )
    return parser.parse_args(argv)


def reproduce_command(args: argparse.Namespace) -> str:
    parts = ["python3", "benchmarks/run.py"]
    if args.quick:
        parts.append("--quick")
    if args.pidone is not None:
        parts += ["--pidone", args.pidone]
    if args.no_venv:
        parts.append("--no-venv")
    if args.only:
        parts += ["--only", args.only]
    if args.inits:
        parts += ["--inits", args.inits]
    return "sudo " + shlex.join(parts)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so every `with Container` block
    # unwinds and kills its namespace.
    raise SystemExit(128 + signum)


def _environment(work_dir: Path, install: PidoneInstall) -> dict[str, str]:
    """Environment for every init; only Python-based ones care.

    An installed pidone runs with the caller's environment as it is, and uses
    the bytecode pip compiled at install time.  From the checkout,
    PYTHONPATH lets `python3 -m pidone` find the package, and bytecode goes
    to a private cache (warmed by the smoke test) rather than being
    recompiled at every start, as an installed package would not be.
    Either way PYTHONDONTWRITEBYTECODE in the caller's environment is
    dropped, as it would charge compilation to every launch.  python-floor
    runs with -I and ignores all of this.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if install.from_checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONPYCACHEPREFIX"] = str(work_dir / "pycache")
    return env


def _pidone(args: argparse.Namespace, work_dir: Path) -> PidoneInstall:
    if args.pidone is not None:
        return PidoneInstall(args.pidone, f"`{args.pidone}` (given with --pidone)", False)
    if args.no_venv:
        return checkout_command()
    try:
        return install_venv(REPO_ROOT, work_dir)
    except BenchError as exc:
        fallback = checkout_command()
        _progress(f"venv install failed, using python3 -m pidone: {exc}")
        how = f"{fallback.how}: installing into a venv failed ({exc})"
        return PidoneInstall(fallback.command, how, from_checkout=True)


def _source_state() -> str:
    """Which code was measured: commit, and whether pidone/ had local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "pidone"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "Code: not a git checkout."
    changes = " plus uncommitted changes to pidone/" if dirty else ""
    return f"Code: commit {head}{changes}, as in the working tree when the run started."


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run.py needs root (unshare --pid --mount-proc)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    become_subreaper()
    plan = Plan.quick() if args.quick else Plan()
    began = time.monotonic()
    source = _source_state()
    with tempfile.TemporaryDirectory(prefix="pidbench-") as tmp:
        work_dir = Path(tmp)
        install = _pidone(args, work_dir)
        _progress(f"pidone: {install.command}")
        inits = all_inits(install.command)
        if args.inits:
            wanted = {name.strip() for name in args.inits.split(",")}
            inits = [i for i in inits if i.name in wanted]
        helpers = build_helpers(work_dir)
        env = _environment(work_dir, install)
        ctx = Context(helpers, env, work_dir / "init-stderr.log", plan)
        usable, notes = check_available(inits, ctx.env, helpers.noop)
        for note in notes:
            _progress(note)
        results: report.Results = {}
        chosen = workload_list(plan)
        if args.only:
            names = {name.strip() for name in args.only.split(";")}
            chosen = [w for w in chosen if w.name in names]
        for work in chosen:
            _progress(f"{work.name} ({work.reps} reps)")
            run_workload(work, inits, usable, ctx, results)
    notes.append(f"pidone was run as {install.how}. {source}")
    notes.append(f"Total benchmark time: {time.monotonic() - began:.0f} s.")
    notes.extend(_method_notes(plan))
    print(report.render_tables(results, inits))
    args.output.write_text(report.render_document(results, inits, reproduce_command(args), notes))
    _progress(f"wrote {args.output}")
    return 0


def _method_notes(plan: Plan) -> list[str]:
    repetitions = (
        f"Repetitions: launch/round trip {plan.launch_reps}, stop {plan.stop_reps}, "
        f"idle {plan.idle_reps} x {plan.idle_window_s:g} s window, "
        f"signals {plan.signal_reps} x {plan.signals} (paced: random 0-"
        f"{plan.signal_gap_max_s * 1000:g} ms gaps), "
        f"reaping {plan.reap_reps} for {plan.reap_sizes} orphans, "
        f"escalation {plan.escalation_reps} per mode."
    )
    return [repetitions, *METHOD_NOTES]


METHOD_NOTES = (
    (
        "python-floor is `python3 -I -S -c 'os.execvp(...)'`: the app replaces it and becomes "
        "PID 1, so it is a launch-cost floor, not an init (it reaps nothing)."
    ),
    (
        "Subreaper mode runs pidone as a plain child of the benchmark (no namespace); the "
        "benchmark is itself a child subreaper, so any process pidone leaves behind would be "
        "caught and counted."
    ),
    (
        "pidone + probes is pidone with `--liveness-probe exec:true --liveness-period "
        f"{probing.PROBE_PERIOD_S:g} --readiness-probe http://127.0.0.1:PORT/ "
        f"--readiness-period {probing.PROBE_PERIOD_S:g} --status-addr 127.0.0.1:PORT2`: "
        "PORT is `helpers/httpok.c` (a minimal HTTP server answering 200) on the host's "
        f"loopback, and {probing.CROWD_SIZE} idle TCP connections (connected, no request) "
        "are held open to PORT2 throughout each measurement. Measuring starts once each "
        f"probe has run {probing.WARM_RUNS} times and the app is ready; a sample in which "
        "pidone dropped any of the idle connections counts as failed."
    ),
    (
        "Reaping is timed inside the namespace by the app, from the middle process's exit "
        "(when the zombies are handed over) until kill(pid, 0) fails for all of them."
    ),
)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
