"""``--svg FILE.svg``: request outcomes over time, with the moments of the shutdown.

A self-contained SVG written as text: stacked bars (requests ending in each
time bucket, by class, as requests per second), time 0 at the shutdown
signal, one numbered vertical line per moment (signal, end of the pre-stop
delay, deregistration, each drain, the stop signal, the app's exit,
pidone's exit, the grace deadline, the runtime's timeout) and a legend that
names each number.  No plotting library, no browser, no fonts to embed.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pidone.rehearse.loadgen import CLASSES
from pidone.rehearse.verdict import Marker

WIDTH = 960
PLOT_LEFT, PLOT_RIGHT = 70, 24
PLOT_TOP, PLOT_HEIGHT = 78, 250
STACK = ("ok", "idle_closed", "error_status", "refused", "lost")
COLORS = {
    "ok": "#6cbf6c",
    "idle_closed": "#e6c229",
    "error_status": "#f08a24",
    "refused": "#8e5cc7",
    "lost": "#d7263d",
}
MARKER_COLORS = {
    "signal": "#d7263d",
    "pre_stop_end": "#1f77b4",
    "deregistered": "#1f77b4",
    "drain_started": "#8e5cc7",
    "drain_finished": "#8e5cc7",
    "stop_signal": "#f08a24",
    "killing": "#d7263d",
    "app_exit": "#333333",
    "pidone_exit": "#000000",
    "deadline": "#888888",
    "timeout": "#888888",
}
DASHED = {"deregistered", "pre_stop_end", "deadline", "timeout"}


def render(report: dict[str, Any], markers: list[Marker]) -> str:
    timeline = report["timeline"]
    start = float(timeline["start_s"])
    width_s = float(timeline["width_s"])
    counts: dict[str, list[int]] = timeline["counts"]
    n = max((len(v) for v in counts.values()), default=0)
    stop = report.get("stop_s")
    x_max = start + n * width_s
    if isinstance(stop, (int, float)):
        x_max = max(x_max, float(stop) + width_s)
    x_max = max(x_max, start + width_s, 0.1)
    x_max += (x_max - start) * 0.04  # room for the markers at pidone's exit
    plot_w = WIDTH - PLOT_LEFT - PLOT_RIGHT

    def x(t: float) -> float:
        return PLOT_LEFT + (min(max(t, start), x_max) - start) / (x_max - start) * plot_w

    totals = [sum(counts[c][i] for c in CLASSES if i < len(counts[c])) for i in range(n)]
    peak = max((t / width_s for t in totals), default=0.0)
    y_max = _axis_max(peak)

    def y(rate: float) -> float:
        return PLOT_TOP + PLOT_HEIGHT - rate / y_max * PLOT_HEIGHT

    legend_top = PLOT_TOP + PLOT_HEIGHT + 64
    height = legend_top + 20 * ((len(markers) + 1) // 2) + 20
    out: list[str] = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">'
        ),
        f"<title>pidone rehearse: {escape(report['verdict'])}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    out.extend(_heading(report))
    # Axes and grid
    for i in range(5):
        rate = y_max * i / 4
        yy = y(rate)
        out.append(
            f'<line x1="{PLOT_LEFT}" y1="{yy:.1f}" x2="{WIDTH - PLOT_RIGHT}" y2="{yy:.1f}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{PLOT_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{rate:g}</text>')
    out.append(
        f'<text x="16" y="{PLOT_TOP + PLOT_HEIGHT / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {PLOT_TOP + PLOT_HEIGHT / 2:.0f})">requests/s</text>'
    )
    step = _axis_step(x_max - start)
    tick = step * int(start / step)
    while tick <= x_max + 1e-9:
        if tick >= start - 1e-9:
            xx = x(tick)
            out.append(
                f'<line x1="{xx:.1f}" y1="{PLOT_TOP + PLOT_HEIGHT}" x2="{xx:.1f}" '
                f'y2="{PLOT_TOP + PLOT_HEIGHT + 4}" stroke="#555"/>'
            )
            out.append(
                f'<text x="{xx:.1f}" y="{PLOT_TOP + PLOT_HEIGHT + 17}" '
                f'text-anchor="middle">{round(tick, 6):+g}</text>'
            )
        tick = round(tick + step, 9)
    out.append(
        f'<text x="{PLOT_LEFT + plot_w / 2:.0f}" y="{PLOT_TOP + PLOT_HEIGHT + 34}" '
        'text-anchor="middle">seconds from the shutdown signal (bars: requests by the moment '
        "they ended)</text>"
    )
    # Bars
    out.append('<g class="bars">')
    bar_w = max(plot_w * width_s / (x_max - start) - 0.5, 0.5)
    for i in range(n):
        base = 0.0
        left = x(start + i * width_s)
        for cls in STACK:
            value = counts.get(cls, [])[i] / width_s if i < len(counts.get(cls, [])) else 0.0
            if value <= 0:
                continue
            top, bottom = y(base + value), y(base)
            out.append(
                f'<rect class="{cls}" x="{left:.2f}" y="{top:.2f}" width="{bar_w:.2f}" '
                f'height="{max(bottom - top, 0.5):.2f}" fill="{COLORS[cls]}"/>'
            )
            base += value
    out.append("</g>")
    out.append(
        f'<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{plot_w}" height="{PLOT_HEIGHT}" '
        'fill="none" stroke="#555"/>'
    )
    out.extend(_markers(markers, x, x_max, legend_top))
    out.extend(_class_legend(report))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _heading(report: dict[str, Any]) -> list[str]:
    verdict = report["verdict"]
    color = "#2e7d32" if verdict == "pass" else "#c62828"
    stop = report.get("stop_s")
    stopped = f", stopped in {stop:.2f}s" if isinstance(stop, (int, float)) else ""
    head = (
        f"pidone rehearse: {verdict.upper()} - {report.get('reason')}, exit code "
        f"{report.get('exit_code')}{stopped} ({report.get('mode')})"
    )
    title = f'<text x="{PLOT_LEFT}" y="24" font-size="16" font-weight="bold" fill="{color}">'
    lines = [f"{title}{escape(head)}</text>"]
    failures = report.get("failures") or []
    detail = " ".join(failures) if failures else "no request lost, stopped within its grace"
    if len(detail) > 150:
        detail = detail[:147] + "..."
    lines.append(f'<text x="{PLOT_LEFT}" y="44" fill="{color}">{escape(detail)}</text>')
    return lines


def _class_legend(report: dict[str, Any]) -> list[str]:
    requests = report.get("requests", {})
    parts = ['<g class="legend">']
    xx = PLOT_LEFT
    for cls in STACK:
        label = f"{cls} {requests.get(cls, 0)}"
        parts.append(f'<rect x="{xx}" y="56" width="12" height="12" fill="{COLORS[cls]}"/>')
        parts.append(f'<text x="{xx + 16}" y="66">{escape(label)}</text>')
        xx += 30 + 7 * len(label)
    parts.append("</g>")
    return parts


def _markers(markers: list[Marker], x: Any, x_max: float, legend_top: int) -> list[str]:
    parts: list[str] = []
    column = (WIDTH - PLOT_LEFT - PLOT_RIGHT) / 2
    lanes: list[float] = []  # x of the last number badge drawn in each lane
    for number, mark in enumerate(markers, start=1):
        color = MARKER_COLORS.get(mark.name, "#333333")
        off_chart = mark.t > x_max
        xx = x(mark.t)
        dash = ' stroke-dasharray="5,4"' if mark.name in DASHED or off_chart else ""
        lane = next((i for i, last in enumerate(lanes) if xx - last >= 18), len(lanes))
        if lane == len(lanes):
            lanes.append(xx)
        lanes[lane] = xx
        badge_y = PLOT_TOP + 10 + 18 * lane
        where = f"{mark.t:+.3f}s" + (" (off the chart, right)" if off_chart else "")
        parts.append(
            f'<g class="marker" data-name={quoteattr(mark.name)} data-t="{mark.t:.3f}">'
            f"<title>{escape(where + ' ' + mark.label)}</title>"
            f'<line x1="{xx:.1f}" y1="{PLOT_TOP}" x2="{xx:.1f}" y2="{PLOT_TOP + PLOT_HEIGHT}" '
            f'stroke="{color}" stroke-width="1.5"{dash}/>'
            f'<circle cx="{xx:.1f}" cy="{badge_y}" r="8" fill="{color}"/>'
            f'<text x="{xx:.1f}" y="{badge_y + 4}" text-anchor="middle" fill="#fff" '
            f'font-size="10">{number}</text>'
        )
        row, col = divmod(number - 1, 2)
        lx = PLOT_LEFT + col * column
        ly = legend_top + 20 * row
        parts.append(
            f'<circle cx="{lx + 8:.1f}" cy="{ly - 4}" r="8" fill="{color}"/>'
            f'<text x="{lx + 8:.1f}" y="{ly}" text-anchor="middle" fill="#fff" '
            f'font-size="10">{number}</text>'
            f'<text x="{lx + 22:.1f}" y="{ly}">{escape(where)}  {escape(mark.label)}</text></g>'
        )
    return parts


def _axis_max(peak: float) -> float:
    if peak <= 0:
        return 1.0
    step = 1.0
    while step * 10 < peak:
        step *= 10
    for factor in (1, 2, 2.5, 5, 10):
        if step * factor >= peak:
            return step * factor
    return step * 10


def _axis_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60):
        if span / step <= 14:
            return step
    return 120.0
