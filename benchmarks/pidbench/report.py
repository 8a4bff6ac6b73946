"""Render results as markdown: one table per workload plus pidone's targets."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .inits import FLOOR, PIDONE, PIDONE_PROBES, Init
from .stats import Series, summarize

if TYPE_CHECKING:
    from collections.abc import Sequence

Results = dict[str, dict[str, Series]]  # metric -> init name -> series


@dataclass(frozen=True)
class Column:
    metric: str
    label: str
    digits: int = 2


@dataclass(frozen=True)
class Table:
    title: str
    description: str
    columns: tuple[Column, ...]
    compact: bool = False  # leave out the rows of inits it does not apply to


TABLES = (
    Table(
        "1. Launch latency",
        "Spawning `unshare` → first instruction of the app (ms).",
        (Column("launch_ms", "launch ms"),),
    ),
    Table(
        "2. Round trip",
        "Spawn → no-op app exits 0 → init and `unshare` gone (ms).",
        (Column("roundtrip_ms", "round trip ms"),),
    ),
    Table(
        "3. Idle footprint",
        "PID 1 while the app sleeps: VmRSS (MiB) and context switches per second "
        "(voluntary + involuntary, all threads).",
        (Column("rss_mib", "RSS MiB"), Column("wakeups_per_s", "wake-ups/s")),
    ),
    Table(
        "4. Signal forwarding",
        "SIGUSR1 to PID 1 → `sigwaitinfo()` returns in the app (µs); "
        "p50/p99 per run of 200 signals sent back to back, summarised across runs.",
        (
            Column("signal_p50_us", "p50 µs", 1),
            Column("signal_p99_us", "p99 µs", 1),
            Column("signal_max_us", "max µs", 1),
        ),
    ),
    Table(
        "4b. Signal forwarding with probes running",
        "As table 4, but each of the 200 signals follows a random 0-5 ms pause, so that "
        "a run spans ~0.5 s, about ten probe periods (back to back, 200 signals take "
        "~30 ms and would overlap hardly any probe run). pidone + probes: liveness "
        "`exec:true` and readiness HTTP probes every 50 ms, and 100 idle connections "
        "held open to the status endpoint (see notes); pidone: the same pidone, paced "
        "the same, without them. Pauses let the CPUs go idle, so both rows include "
        "wake-up latency that table 4 does not (µs).",
        (
            Column("paced_signal_p50_us", "p50 µs", 1),
            Column("paced_signal_p99_us", "p99 µs", 1),
            Column("paced_signal_max_us", "max µs", 1),
            Column("paced_probe_runs", "probe runs in window", 0),
        ),
        compact=True,
    ),
    Table(
        "5. Stop latency",
        "SIGTERM to PID 1 → init gone, app exits at once on TERM (ms). "
        "pidone + probes: probes running and 100 idle status connections open.",
        (Column("stop_ms", "stop ms"),),
    ),
    Table(
        "6. Reaping",
        "N zombies re-parented to PID 1 → none left (ms).",
        (Column("reap_2000_ms", "2,000 orphans ms"), Column("reap_10000_ms", "10,000 orphans ms")),
    ),
    Table(
        "7. Escalation",
        "1,000 processes ignoring SIGTERM, `--grace 1`: deadline (SIGTERM + grace) → "
        "every process dead and reaped (ms), and the init's peak RSS (VmHWM, MiB).",
        (
            Column("escalate_pid1_ms", "PID 1 ms"),
            Column("hwm_pid1_mib", "PID 1 peak MiB"),
            Column("escalate_subreaper_ms", "subreaper ms"),
            Column("hwm_subreaper_mib", "subreaper peak MiB"),
        ),
    ),
    Table(
        "8. Stop and forwarding with the init's stderr stalled",
        "The init's stderr is a pipe that is full before it starts and that nobody reads "
        "(a stalled log driver); pidone runs with `--log-level debug`, so each forwarded "
        "signal is one more line it cannot write. Stop: as table 5 (ms); forwarding: as "
        "table 4, 200 signals back to back (µs).",
        (
            Column("stalled_stop_ms", "stop ms"),
            Column("stalled_signal_p50_us", "p50 µs", 1),
            Column("stalled_signal_p99_us", "p99 µs", 1),
            Column("stalled_signal_max_us", "max µs", 1),
        ),
    ),
    Table(
        "8b. pidone's memory while log lines are dropped",
        "pidone at `--log-level debug` behind a stalled stderr forwards 100,000 SIGUSR1, "
        "each acknowledged by the app before the next (one log line each): VmRSS before "
        "and after, peak (VmHWM), lines dropped (from `terminated` once the reader "
        "resumes), and the forwarding p99 over the 100,000.",
        (
            Column("drop_rss_before_mib", "RSS before MiB"),
            Column("drop_rss_mib", "RSS after MiB"),
            Column("drop_hwm_mib", "peak MiB"),
            Column("drop_lines", "lines dropped", 0),
            Column("drop_signal_p99_us", "p99 µs", 1),
        ),
        compact=True,
    ),
)


# -- cells --------------------------------------------------------------------


def cell(series: Series | None, digits: int) -> str:
    """``median (min-max)``; n/a and failures spelled out."""
    if series is None:
        return "not run"
    if series.not_applicable:
        return f"n/a ({series.not_applicable})"
    if not series.samples:
        return f"failed: {_first_error(series)}" if series.errors else "not run"
    s = summarize(series.samples)
    text = f"{s.median:.{digits}f} ({s.minimum:.{digits}f}-{s.maximum:.{digits}f})"
    if series.errors:
        text += f", {len(series.errors)} failed"
    return text


def _first_error(series: Series) -> str:
    return series.errors[0].replace("|", "\\|").replace("\n", " ")[:160]


def render_table(table: Table, results: Results, inits: Sequence[Init]) -> str:
    header = ["init", *(c.label for c in table.columns)]
    lines = [
        f"### {table.title}",
        "",
        table.description + " Cells: median (min-max).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for init in inits:
        row = [results.get(c.metric, {}).get(init.name) for c in table.columns]
        if (init.probes or table.compact) and all(s is None or s.not_applicable for s in row):
            continue  # leave out rows that would only say "n/a"
        cells = [cell(series, c.digits) for series, c in zip(row, table.columns, strict=True)]
        lines.append(f"| {init.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- targets ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    target: str
    value: str
    met: bool | None  # None: could not be measured


def _median(results: Results, metric: str, init: str) -> float | None:
    series = results.get(metric, {}).get(init)
    if series is None or not series.ok:
        return None
    return summarize(series.samples).median


def _maximum(results: Results, metric: str, init: str) -> float | None:
    series = results.get(metric, {}).get(init)
    if series is None or not series.ok or series.errors:
        return None
    return summarize(series.samples).maximum


def _verdict(target: str, value: float | None, limit: float, fmt: str) -> Verdict:
    if value is None:
        return Verdict(target, "not measured", None)
    return Verdict(target, fmt.format(value), value <= limit)


def verdicts(results: Results) -> list[Verdict]:
    """pidone's numbers against its targets."""
    launch, floor = _median(results, "launch_ms", PIDONE), _median(results, "launch_ms", FLOOR)
    overhead = None if launch is None or floor is None else launch - floor
    reap, tini = _median(results, "reap_2000_ms", PIDONE), _median(results, "reap_2000_ms", "tini")
    ratio = None if reap is None or not tini else reap / tini
    return [
        _verdict("launch overhead over python-floor ≤ 25 ms (median)", overhead, 25, "{:.2f} ms"),
        _verdict(
            "RSS ≤ 20 MB (median VmRSS)", _median(results, "rss_mib", PIDONE), 20, "{:.2f} MiB"
        ),
        _verdict(
            "idle wake-ups 0/s (worst run)",
            _maximum(results, "wakeups_per_s", PIDONE),
            0,
            "{:.2f}/s",
        ),
        _verdict(
            "forwarding p99 ≤ 500 µs (median over runs)",
            _median(results, "signal_p99_us", PIDONE),
            500,
            "{:.1f} µs",
        ),
        _verdict(
            "forwarding p99 ≤ 500 µs, paced, with probes + 100 idle status connections "
            "(median over runs; table 4b)",
            _median(results, "paced_signal_p99_us", PIDONE_PROBES),
            500,
            "{:.1f} µs",
        ),
        _verdict(
            "stop latency ≤ 50 ms (median)", _median(results, "stop_ms", PIDONE), 50, "{:.2f} ms"
        ),
        _verdict(
            "stop latency ≤ 50 ms with probes + 100 idle status connections (median)",
            _median(results, "stop_ms", PIDONE_PROBES),
            50,
            "{:.2f} ms",
        ),
        _verdict(
            "stop latency ≤ 50 ms with stderr stalled (median; table 8)",
            _median(results, "stalled_stop_ms", PIDONE),
            50,
            "{:.2f} ms",
        ),
        _verdict(
            "forwarding p99 ≤ 500 µs with stderr stalled (median over runs; table 8)",
            _median(results, "stalled_signal_p99_us", PIDONE),
            500,
            "{:.1f} µs",
        ),
        _verdict("reaping 2,000 orphans ≤ 3x tini (median)", ratio, 3, "{:.2f}x tini"),
        _verdict(
            "1,000-process tree dead ≤ 1 s after deadline, PID 1 (worst run)",
            _maximum(results, "escalate_pid1_ms", PIDONE),
            1000,
            "{:.1f} ms",
        ),
        _verdict(
            "1,000-process tree dead ≤ 1 s after deadline, subreaper (worst run)",
            _maximum(results, "escalate_subreaper_ms", PIDONE),
            1000,
            "{:.1f} ms",
        ),
    ]


def render_verdicts(items: Sequence[Verdict]) -> str:
    lines = ["### pidone targets", "", "| target | pidone | verdict |", "|---|---|---|"]
    for v in items:
        mark = "not measured" if v.met is None else ("met" if v.met else "**missed**")
        lines.append(f"| {v.target} | {v.value} | {mark} |")
    return "\n".join(lines)


# -- whole document -----------------------------------------------------------


def machine_info() -> list[tuple[str, str]]:
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU", _cpu_model()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("date (UTC)", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")),
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render_tables(results: Results, inits: Sequence[Init]) -> str:
    parts = [render_table(t, results, inits) for t in TABLES]
    parts.append(render_verdicts(verdicts(results)))
    return "\n\n".join(parts)


def render_document(
    results: Results, inits: Sequence[Init], command: str, notes: Sequence[str]
) -> str:
    machine = "\n".join(f"| {k} | {v} |" for k, v in machine_info())
    versions = "\n".join(
        f"| {i.name} | `{' '.join(i.prefix)[:80]}` | {i.version or '?'} |" for i in inits
    )
    note_text = "\n".join(f"- {n}" for n in notes)
    return f"""# Benchmarks: pidone against other container inits

Generated by `benchmarks/run.py`. Reproduce with:

```sh
{command}
```

Every init runs as PID 1 of a fresh PID namespace (`unshare --pid --fork
--mount-proc`) in front of the same statically linked C workloads, built at run
time from `benchmarks/helpers/`. Inits alternate within each repetition so that
drift in machine load spreads over all of them.

| machine | |
|---|---|
{machine}

| init | command | version |
|---|---|---|
{versions}

{render_tables(results, inits)}

Notes:

{note_text}
"""
