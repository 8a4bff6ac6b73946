"""What sidecars cost pidone: idle wake-ups, RSS, forwarding and stop, with 0 and 10 sidecars.

    sudo python3 benchmarks/sidecars.py [--quick] [--sidecars N]

Runs pidone from this checkout (``python3 -m pidone``) as PID 1 of a fresh
PID namespace, with the same C workloads as ``run.py``, once plain and once
with N idle sidecars (``sleep``, no ready check), and prints a Markdown
section for BENCHMARKS.md.  The sidecars' own processes are not counted:
RSS and wake-ups are pidone's (PID 1's) alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from pidbench.build import build_helpers
from pidbench.errors import BenchError
from pidbench.inits import PIDONE, Init, python3
from pidbench.workloads import Context, Plan, forwarding, idle, stop

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sidecars", type=int, default=10)
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    pidone = (python3(), "-m", "pidone")
    sidecar_options: list[str] = []
    for index in range(args.sidecars):
        sidecar_options += ["--sidecar", f"s{index}=sleep 100000"]
    inits = [
        Init(PIDONE, pidone, escalates=True),
        Init(f"pidone + {args.sidecars} sidecars", (*pidone, *sidecar_options), escalates=True),
    ]
    rows: dict[str, dict[str, list[float]]] = {init.name: {} for init in inits}
    with tempfile.TemporaryDirectory(prefix="pidbench-") as tmp:
        work = Path(tmp)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
        ctx = Context(build_helpers(work), env, work / "init-stderr.log", plan)
        samplers = [(idle, plan.idle_reps), (forwarding(paced=False), plan.signal_reps)]
        samplers.append((stop, plan.stop_reps))
        for sampler, reps in samplers:
            for _ in range(reps):
                for init in inits:
                    try:
                        values = sampler(ctx, init)
                    except BenchError as exc:
                        print(f"{init.name}: {exc}", file=sys.stderr)
                        continue
                    for metric, value in values.items():
                        got = value if isinstance(value, list) else [value]
                        rows[init.name].setdefault(metric, []).extend(got)
    print(render(rows, args.sidecars))
    return 0


def render(rows: dict[str, dict[str, list[float]]], count: int) -> str:
    metrics = [
        ("rss_mib", "idle RSS MiB", 2),
        ("wakeups_per_s", "idle wake-ups/s", 2),
        ("signal_p99_us", "forwarding p99 µs", 0),
        ("stop_ms", "stop ms", 1),
    ]
    head = "| init | " + " | ".join(label for _, label, _ in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        cells = [
            f"{statistics.median(values[key]):.{digits}f}" if values.get(key) else "-"
            for key, _, digits in metrics
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    plain, side = (rows[name].get("rss_mib") for name in rows)
    if plain and side:
        growth = (statistics.median(side) - statistics.median(plain)) / count
        lines.append("")
        lines.append(f"RSS growth per sidecar: {growth * 1024:.0f} KiB (median of medians).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
