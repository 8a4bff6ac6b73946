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
PLOT_TOP, PLOT_HEIGHT = 104, 250
STRIP_TOP = 80  # a row of ticks marking every bucket with a request that was not ok
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
WORST_FIRST = ("lost", "refused", "error_status", "idle_closed")
DASHED = {"deregistered", "pre_stop_end", "deadline", "timeout"}


class Chart:
    """The scales of one picture: time on x (seconds from the signal), requests/s on y."""

    def __init__(self, report: dict[str, Any]) -> None:
        timeline = report["timeline"]
        self.start = float(timeline["start_s"])
        self.width_s = float(timeline["width_s"])
        self.counts: dict[str, list[int]] = timeline["counts"]
        self.n = max((len(v) for v in self.counts.values()), default=0)
        x_max = self.start + self.n * self.width_s
        stop = report.get("stop_s")
        if isinstance(stop, (int, float)):
            x_max = max(x_max, float(stop) + self.width_s)
        x_max = max(x_max, self.start + self.width_s, 0.1)
        self.x_max = x_max + (x_max - self.start) * 0.04  # room for the markers at the end
        self.plot_w = WIDTH - PLOT_LEFT - PLOT_RIGHT
        self.bar_w = max(self.plot_w * self.width_s / (self.x_max - self.start) - 0.5, 0.5)
        peak = max((self.total(i) / self.width_s for i in range(self.n)), default=0.0)
        self.y_max = _axis_max(peak)

    def count(self, cls: str, i: int) -> int:
        values = self.counts.get(cls, [])
        return values[i] if i < len(values) else 0

    def total(self, i: int) -> int:
        return sum(self.count(c, i) for c in CLASSES)

    def x(self, t: float) -> float:
        clamped = min(max(t, self.start), self.x_max)
        return PLOT_LEFT + (clamped - self.start) / (self.x_max - self.start) * self.plot_w

    def y(self, rate: float) -> float:
        return PLOT_TOP + PLOT_HEIGHT - rate / self.y_max * PLOT_HEIGHT


def render(report: dict[str, Any], markers: list[Marker]) -> str:
    chart = Chart(report)
    markers = [m for m in markers if m.name != "phase"]  # the moments inside them are marked
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
    out.extend(_axes(chart))
    out.extend(_bars(chart))
    out.extend(_problem_strip(chart))
    out.append(
        f'<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{chart.plot_w}" height="{PLOT_HEIGHT}" '
        'fill="none" stroke="#555"/>'
    )
    out.extend(_markers(markers, chart, legend_top))
    out.extend(_class_legend(report))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _axes(chart: Chart) -> list[str]:
    out: list[str] = []
    for i in range(5):
        rate = chart.y_max * i / 4
        yy = chart.y(rate)
        out.append(
            f'<line x1="{PLOT_LEFT}" y1="{yy:.1f}" x2="{WIDTH - PLOT_RIGHT}" y2="{yy:.1f}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{PLOT_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{rate:g}</text>')
    middle = PLOT_TOP + PLOT_HEIGHT / 2
    out.append(
        f'<text x="16" y="{middle:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {middle:.0f})">requests/s</text>'
    )
    bottom = PLOT_TOP + PLOT_HEIGHT
    step = _axis_step(chart.x_max - chart.start)
    tick = step * int(chart.start / step)
    while tick <= chart.x_max + 1e-9:
        if tick >= chart.start - 1e-9:
            xx = chart.x(tick)
            out.append(
                f'<line x1="{xx:.1f}" y1="{bottom}" x2="{xx:.1f}" y2="{bottom + 4}" stroke="#555"/>'
            )
            out.append(
                f'<text x="{xx:.1f}" y="{bottom + 17}" text-anchor="middle">'
                f"{round(tick, 6):+g}</text>"
            )
        tick = round(tick + step, 9)
    out.append(
        f'<text x="{PLOT_LEFT + chart.plot_w / 2:.0f}" y="{bottom + 34}" '
        'text-anchor="middle">seconds from the shutdown signal (bars: requests by the moment '
        "they ended)</text>"
    )
    return out


def _bars(chart: Chart) -> list[str]:
    out = ['<g class="bars">']
    for i in range(chart.n):
        base = 0.0
        left = chart.x(chart.start + i * chart.width_s)
        for cls in STACK:
            value = chart.count(cls, i) / chart.width_s
            if value <= 0:
                continue
            top, bottom = chart.y(base + value), chart.y(base)
            out.append(
                f'<rect class="{cls}" x="{left:.2f}" y="{top:.2f}" width="{chart.bar_w:.2f}" '
                f'height="{max(bottom - top, 0.5):.2f}" fill="{COLORS[cls]}"/>'
            )
            base += value
    out.append("</g>")
    return out


def _problem_strip(chart: Chart) -> list[str]:
    """A few lost requests among thousands are invisible as bars: mark their buckets here."""
    parts = [
        '<g class="problems">',
        (
            f'<text x="{PLOT_LEFT - 6}" y="{STRIP_TOP + 11}" text-anchor="end" font-size="10">'
            "not ok</text>"
        ),
        (
            f'<rect x="{PLOT_LEFT}" y="{STRIP_TOP}" width="{chart.plot_w}" '
            'height="14" fill="#f6f6f6"/>'
        ),
    ]
    for i in range(chart.n):
        found = {c: chart.count(c, i) for c in WORST_FIRST if chart.count(c, i)}
        if not found:
            continue
        worst = next(iter(found))
        what = ", ".join(f"{v} {c}" for c, v in found.items())
        t = chart.start + i * chart.width_s
        parts.append(
            f'<rect class="problem {worst}" x="{chart.x(t):.2f}" y="{STRIP_TOP}" '
            f'width="{max(chart.bar_w, 3):.2f}" height="14" fill="{COLORS[worst]}">'
            f"<title>{t:+.2f}s: {escape(what)}</title></rect>"
        )
    parts.append("</g>")
    return parts


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


def _markers(markers: list[Marker], chart: Chart, legend_top: int) -> list[str]:
    parts: list[str] = []
    column = (WIDTH - PLOT_LEFT - PLOT_RIGHT) / 2
    lanes: list[float] = []  # x of the last number badge drawn in each lane
    for number, mark in enumerate(markers, start=1):
        color = MARKER_COLORS.get(mark.name, "#333333")
        off_chart = mark.t > chart.x_max
        xx = chart.x(mark.t)
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
