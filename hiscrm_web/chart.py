"""The fleet page's latency chart: the recent applied updates' latency (send to ACK, as
the pending tracker measured it) as a server-rendered SVG, no script and no chart
library. Every text in it goes through markupsafe's escape."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from hiscrm_bus.pending import Outcome

WIDTH, HEIGHT = 640, 220
# plot area inside the SVG: room on the left for the y labels, below for the x label
LEFT, RIGHT, TOP, BOTTOM = 56, 92, 14, 34
# the newest this many applied updates are drawn
POINTS = 300


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 500 values is the 495th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def applied_latencies(outcomes: Sequence[Outcome], limit: int = POINTS) -> list[float]:
    """The latencies of the newest ``limit`` applied updates, oldest first
    (``outcomes`` newest first, as :meth:`PendingTracker.recent_outcomes` gives them)."""
    applied = [o.latency_ms for o in outcomes if o.status == "applied"][:limit]
    applied.reverse()
    return applied


def summary(latencies: Sequence[float]) -> LatencySummary | None:
    if not latencies:
        return None
    return LatencySummary(
        count=len(latencies),
        p50_ms=quantile(latencies, 0.50),
        p99_ms=quantile(latencies, 0.99),
        max_ms=max(latencies),
    )


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _ceiling(value: float) -> float:
    """A round top for the y axis: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop ends at 10


def latency_chart(outcomes: Sequence[Outcome], title: str = "") -> Markup:
    """``svg#latency-chart``: one dot per applied update (oldest left), the y axis in
    milliseconds from 0 to a round ceiling over the slowest, and the p50 and p99
    lines, labelled. With no applied update, the chart says so."""
    latencies = applied_latencies(outcomes)
    stats = summary(latencies)
    label = title or "latency of the recent applied config updates"
    parts = [
        f'<svg id="latency-chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
    ]
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP  # y0: the axis at 0 ms
    parts.append(
        f'<path d="M{x0} {y1} V{y0} H{x1}" fill="none" stroke="#1d2330" stroke-width="1"/>'
    )
    if stats is None:
        parts.append(
            f'<text x="{(x0 + x1) / 2:.0f}" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
            f'class="empty" fill="#667">{escape("no applied update yet")}</text>'
        )
        parts.append(_x_label(x0, x1, 0))
        parts.append("</svg>")
        return Markup("".join(parts))
    top = _ceiling(stats.max_ms)

    def y(ms: float) -> float:
        return y0 - (y0 - y1) * min(ms, top) / top

    def x(i: int) -> float:
        n = len(latencies)
        return (x0 + x1) / 2 if n == 1 else x0 + 4 + (x1 - x0 - 8) * i / (n - 1)

    # y ticks: 0, half, top
    for value in (0.0, top / 2, top):
        parts.append(
            f'<text x="{x0 - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
            f'class="tick">{escape(_ms(value))}</text>'
        )
        parts.append(f'<path d="M{x0} {y(value):.1f} H{x1}" stroke="#e3e6eb" stroke-width="1"/>')
    dots = "".join(
        f'<circle cx="{x(i):.1f}" cy="{y(ms):.1f}" r="2"/>' for i, ms in enumerate(latencies)
    )
    parts.append(f'<g class="points" fill="#2e6fd8">{dots}</g>')
    for name, value, colour in (
        ("p50", stats.p50_ms, "#1e8449"),
        ("p99", stats.p99_ms, "#c0392b"),
    ):
        parts.append(
            f'<path class="{name}" d="M{x0} {y(value):.1f} H{x1}" stroke="{colour}" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        parts.append(
            f'<text class="{name}" x="{x1 + 4}" y="{y(value) + 4:.1f}" font-size="11" '
            f'fill="{colour}">{escape(f"{name} {_ms(value)}")}</text>'
        )
    parts.append(_x_label(x0, x1, stats.count))
    parts.append("</svg>")
    return Markup("".join(parts))


def _x_label(x0: int, x1: int, count: int) -> str:
    what = f"the newest {count} applied update(s), oldest left" if count else "applied updates"
    return (
        f'<text x="{(x0 + x1) / 2:.0f}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11" '
        f'class="axis">{escape(what)}</text>'
    )
