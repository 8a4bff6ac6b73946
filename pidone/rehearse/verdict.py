"""From what the rehearsal saw to a verdict: the rules, the JSON report, the console summary.

Times are seconds from the shutdown signal.  A request counts as
*before* or *after* the signal by when it was sent; "error_status after the
signal" is judged by when the response came, since a 503 received during the
shutdown is the app shedding load whenever the request left.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from pidone.rehearse.cli import Options
from pidone.rehearse.loadgen import CLASSES, ERROR_STATUS, IDLE_CLOSED, LOST, OK, REFUSED
from pidone.rehearse.run import Outcome


def signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


@dataclass
class Marker:
    """A moment worth a line on the chart and in the timeline."""

    name: str  # stable key: signal, pre_stop_end, deregistered, drain_started, ...
    t: float
    label: str


def _counts(kinds: list[int]) -> dict[str, int]:
    counts = dict.fromkeys(CLASSES, 0)
    for kind in kinds:
        counts[CLASSES[kind]] += 1
    return {"total": len(kinds), **counts}


def requests(out: Outcome) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """All, before the signal, after the signal (by send time)."""
    rec = out.records
    t0 = out.t0 if out.t0 is not None else float("inf")
    before = [k for s, k in zip(rec.start, rec.kind, strict=True) if s < t0]
    after = [k for s, k in zip(rec.start, rec.kind, strict=True) if s >= t0]
    return _counts(rec.kind), _counts(before), _counts(after)


def stop_s(out: Outcome) -> float | None:
    if out.t0 is None or out.exit_at is None:
        return None
    return round(out.exit_at - out.t0, 3)


def allowed_exit_codes(opts: Options, out: Outcome) -> list[int]:
    return sorted(set(opts.expect_exit)) if opts.expect_exit else [0, 128 + out.stop_signal]


def failures(opts: Options, out: Outcome) -> list[str]:
    """Every broken rule, each as one plain sentence; empty means pass."""
    found: list[str] = []
    term = out.terminated or {}
    reason = term.get("reason")
    if out.never_ready:
        found.append(out.never_ready + ".")
    elif out.exited_early:
        found.append(
            f"pidone exited before the shutdown signal (reason {reason}, "
            f"exit code {out.exit_code})."
        )
    if out.t0 is None:
        return found
    if out.timed_out:
        found.append(
            f"pidone was still running {opts.timeout:g}s after the signal: the runtime "
            "would have SIGKILLed it (the rehearsal did)."
        )
    elif reason == "Killed":
        found.append("pidone had to SIGKILL what was still running at its grace deadline.")
    codes = allowed_exit_codes(opts, out)
    if out.exit_code not in codes:
        wanted = " or ".join(str(c) for c in codes)
        found.append(f"pidone exited with code {out.exit_code}, not {wanted}.")
    found.extend(_request_failures(opts, out, out.t0))
    return found


def _request_failures(opts: Options, out: Outcome, t0: float) -> list[str]:
    """Rules 3 and 4, and a sanity check: did the load reach the app at all?"""
    found: list[str] = []
    rec = out.records
    lost = rec.kind.count(LOST)
    if lost:
        found.append(f"{lost} request(s) were lost (sent, never completely answered).")
    idle = rec.kind.count(IDLE_CLOSED)
    if opts.strict and idle:
        found.append(f"{idle} request(s) were closed idle on a reused connection (--strict).")
    late_errors = sum(
        1 for e, k in zip(rec.end, rec.kind, strict=True) if k == ERROR_STATUS and e >= t0
    )
    if late_errors:
        found.append(f"{late_errors} request(s) got a 5xx response after the signal.")
    deregister_at = t0 + opts.deregister_delay
    refused = sum(
        1 for s, k in zip(rec.start, rec.kind, strict=True) if k == REFUSED and s < deregister_at
    )
    if refused:
        found.append(
            f"{refused} new connection(s) were refused while the load balancer still routed "
            f"to the app (before signal + {opts.deregister_delay:g}s deregistration)."
        )
    good_before = sum(1 for s, k in zip(rec.start, rec.kind, strict=True) if k == OK and s < t0)
    if not good_before and not out.never_ready and not out.exited_early:
        found.append("no request got a good response before the signal: is --load right?")
    return found


def markers(opts: Options, out: Outcome) -> list[Marker]:
    """The moments of the shutdown, in time order."""
    if out.t0 is None:
        return []
    found = [Marker("signal", 0.0, f"{signame(out.signal)} to pidone")]
    end = stop_s(out)
    started = out.event("shutdown_started") or {}
    delay = started.get("pre_stop_delay_s")
    if isinstance(delay, (int, float)) and delay > 0 and (end is None or delay <= end):
        found.append(Marker("pre_stop_end", float(delay), f"pre-stop delay over ({delay:g}s)"))
    if end is None or opts.deregister_delay <= end:
        found.append(Marker("deregistered", opts.deregister_delay, "deregistered: no new conns"))
    found.extend(_pidone_markers(out))
    if end is not None:
        what = "SIGKILLed by the runtime" if out.timed_out else f"pidone exited ({out.exit_code})"
        found.append(Marker("pidone_exit", end, what))
    grace = started.get("grace_s")
    if isinstance(grace, (int, float)):
        found.append(Marker("deadline", float(grace), f"grace deadline ({grace:g}s)"))
    found.append(Marker("timeout", opts.timeout, f"runtime timeout ({opts.timeout:g}s)"))
    found.sort(key=lambda m: m.t)
    return found


def _pidone_markers(out: Outcome) -> list[Marker]:
    """Phases and drains from pidone's own account (times from its shutdown start, which is
    the signal's arrival); the moments it does not summarise, from its log lines' stamps."""
    found: list[Marker] = []
    term = out.terminated or {}
    for phase in term.get("phases") or []:
        name, begin = str(phase.get("phase")), float(phase.get("start_s", 0.0))
        took = float(phase.get("duration_s", 0.0))
        found.append(Marker("phase", begin, f"pidone phase {name} ({took:.3f}s)"))
        if name == "killing":
            found.append(Marker("killing", begin, "grace over: SIGKILL"))
    for drain in term.get("drains") or []:
        begin = float(drain.get("start_s", 0.0))
        found.append(Marker("drain_started", begin, f"drain: {drain.get('step')}"))
        found.append(
            Marker(
                "drain_finished",
                begin + float(drain.get("duration_s", 0.0)),
                f"drain {drain.get('outcome')} ({drain.get('detail')})",
            )
        )
    for _, event in out.events:
        kind = event.get("event")
        at = out.when(event)
        if at is None or at < -0.5:
            continue
        if kind == "stop_signal_sent":
            found.append(Marker("stop_signal", at, f"{event.get('signal')} to the app"))
        elif kind == "app_exited":
            code = event.get("exit_code", event.get("signal"))
            found.append(Marker("app_exit", at, f"app exited ({code})"))
    return found


def buckets(out: Outcome, count: int = 120) -> dict[str, Any]:
    """Requests by outcome over time: per class, how many ended in each time bucket."""
    rec = out.records
    if not rec.end:
        return {"start_s": 0.0, "width_s": 0.1, "counts": {c: [] for c in CLASSES}}
    t0 = out.t0 if out.t0 is not None else min(rec.start)
    first = min(min(rec.start) - t0, 0.0)
    last = max(max(rec.end) - t0, 0.0)
    width = _nice((last - first) / count)
    start = width * int(first / width - 1) if first < 0 else 0.0
    n = int((last - start) / width) + 1
    counts = {c: [0] * n for c in CLASSES}
    for end, kind in zip(rec.end, rec.kind, strict=True):
        counts[CLASSES[kind]][min(n - 1, max(0, int((end - t0 - start) / width)))] += 1
    return {"start_s": round(start, 6), "width_s": width, "counts": counts}


def _nice(raw: float) -> float:
    """The first of 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, ... not below ``raw``."""
    step = 0.01
    while step < raw:
        for factor in (2, 2.5, 2):
            step *= factor
            if step >= raw:
                break
    return round(step, 6)


def report(opts: Options, out: Outcome, fails: list[str]) -> dict[str, Any]:
    """The machine-readable report (``--report FILE.json``)."""
    total, before, after = requests(out)
    term = out.terminated or {}
    return {
        "verdict": "fail" if fails else "pass",
        "failures": fails,
        "exit_code": out.exit_code,
        "reason": "Killed" if out.timed_out and not term else term.get("reason"),
        "stop_s": stop_s(out),
        "mode": out.mode,
        "signal": signame(out.signal),
        "stop_signal": signame(out.stop_signal),
        "allowed_exit_codes": allowed_exit_codes(opts, out),
        "timed_out": out.timed_out,
        "requests": total,
        "before_signal": before,
        "after_signal": after,
        "retries": out.retries,
        "reconnects": out.reconnects,
        "phases": term.get("phases", []),
        "drains": term.get("drains", []),
        "killed": term.get("killed", []),
        "terminated": term or None,
        "markers": [
            {"name": m.name, "t": round(m.t, 3), "label": m.label} for m in markers(opts, out)
        ],
        "settings": {
            "load": [t.describe() for t in opts.loads],
            "ready": "pidone readiness" if out.ready_via == "pidone" else None,
            "concurrency": opts.concurrency,
            "rate": opts.rate,
            "warmup_s": opts.warmup,
            "deregister_delay_s": opts.deregister_delay,
            "timeout_s": opts.timeout,
            "strict": opts.strict,
        },
        "load_s": round(out.t0 - out.load_started, 3)
        if out.t0 is not None and out.load_started is not None
        else None,
        "timeline": buckets(out),
        "app_output_tail": list(out.app_output),
    }


def summary(opts: Options, out: Outcome, fails: list[str]) -> list[str]:
    """The console summary: verdict, failures, pidone's account, counts, timeline."""
    term = out.terminated or {}
    lines = [f"pidone rehearse: {'FAIL' if fails else 'PASS'}"]
    lines.extend(f"  - {f}" for f in fails)
    end = stop_s(out)
    if out.t0 is not None:
        how = f"stopped {end:.3f}s after {signame(out.signal)}" if end is not None else "running"
        reason = term.get("reason", "Killed" if out.timed_out else "?")
        lines.append(
            f"pidone ({out.mode}): {reason}, exit code {out.exit_code}, {how} "
            f"(timeout {opts.timeout:g}s)"
        )
    elif out.exit_at is not None:
        lines.append(
            f"pidone ({out.mode}): exited on its own: {term.get('reason')}, "
            f"exit code {out.exit_code}"
        )
    _, before, after = requests(out)
    columns = ("total", *CLASSES)
    widths = [max(len(c), len(str(before[c])), len(str(after[c]))) for c in columns]
    rows = (
        ("requests", dict(zip(columns, columns, strict=True))),
        ("before signal", before),
        ("after signal", after),
    )
    for label, counts in rows:
        cells = "  ".join(f"{counts[c]!s:>{w}}" for c, w in zip(columns, widths, strict=True))
        lines.append(f"{label:<13}  {cells}")
    if out.retries:
        lines.append(f"  ({out.retries} idle_closed request(s) retried on a new connection)")
    marks = markers(opts, out)
    if marks:
        lines.append(f"timeline (seconds from {signame(out.signal)}):")
        lines.extend(f"  {m.t:+8.3f}s  {m.label}" for m in marks)
    if out.never_ready and out.app_output:
        lines.append("last output of the app and pidone:")
        lines.extend(f"  | {line}" for line in list(out.app_output)[-10:])
    return lines
