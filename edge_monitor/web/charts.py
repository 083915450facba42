"""Score charts drawn on the server as SVG: no JavaScript library, nothing from the internet."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

from edge_monitor.web.view import HISTORY_SECONDS

WIDTH_PX = 600
HEIGHT_PX = 140
_PAD_LEFT_PX, _PAD_RIGHT_PX, _PAD_TOP_PX, _PAD_BOTTOM_PX = 44, 8, 8, 18
BUCKETS = 300
"""Columns of the chart: one per 12 s over a full hour, each the highest score in it (peaks stay visible)."""
MIN_SPAN_SECONDS = 120.0
"""A daemon that started a minute ago gets a two-minute chart, not a line squeezed against "now"."""


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _ago(seconds: float) -> str:
    minutes = seconds / 60.0
    return f"-{minutes:.0f} min" if minutes >= 10 or minutes == int(minutes) else f"-{minutes:.1f} min"


Points = Union[list[tuple[float, float]], tuple[np.ndarray, np.ndarray]]


def _as_arrays(points: Points) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(points, tuple):
        return np.asarray(points[0], dtype=np.float64), np.asarray(points[1], dtype=np.float64)
    if not points:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(points, dtype=np.float64)
    return a[:, 0], a[:, 1]


def _bucket_peaks(times: np.ndarray, scores: np.ndarray, start: float, bucket_s: float) -> dict[int, float]:
    """The highest finite score of each non-empty column since ``start``, by column."""
    use = (times >= start) & np.isfinite(scores)
    index = np.minimum(BUCKETS - 1, ((times[use] - start) / bucket_s).astype(np.int64))
    highest = np.full(BUCKETS, -np.inf)
    np.maximum.at(highest, index, scores[use])
    return {int(i): float(highest[i]) for i in np.flatnonzero(np.isfinite(highest))}


def _axis_labels(top: float, history_seconds: float, plot_w: float) -> list[str]:
    """The score axis' top and 0, and the time axis' start, middle and "now"."""
    return [f'<text x="{_PAD_LEFT_PX - 4}" y="{_PAD_TOP_PX + 8}" font-size="10" text-anchor="end">'
            f'{_fmt(top)}</text>',
            f'<text x="{_PAD_LEFT_PX - 4}" y="{HEIGHT_PX - _PAD_BOTTOM_PX}" font-size="10" '
            'text-anchor="end">0</text>',
            f'<text x="{_PAD_LEFT_PX}" y="{HEIGHT_PX - 4}" font-size="10">{_ago(history_seconds)}</text>',
            f'<text x="{_PAD_LEFT_PX + plot_w / 2:.0f}" y="{HEIGHT_PX - 4}" font-size="10" '
            f'text-anchor="middle">{_ago(history_seconds / 2)}</text>',
            f'<text x="{WIDTH_PX - _PAD_RIGHT_PX}" y="{HEIGHT_PX - 4}" font-size="10" '
            'text-anchor="end">now</text>']


def score_chart_svg(points: Points, threshold: float, now_s: float,
                    spans: Optional[list[tuple[float, float]]] = None,
                    history_seconds: float = HISTORY_SECONDS) -> str:
    """An SVG of the scores ``points`` (UNIX time, score) over the last hour, the threshold dashed.

    ``points`` is a list of pairs or a pair of arrays (times, scores), oldest first or not.

    The time axis covers the last hour, or less when the scores began more recently
    (at least ``MIN_SPAN_SECONDS``). ``spans`` (start, end) of alert episodes are shaded.
    """
    times, scores = _as_arrays(points)
    recent = times >= now_s - history_seconds
    oldest = float(times[recent].min()) if recent.any() else now_s
    history_seconds = min(history_seconds, max(MIN_SPAN_SECONDS, now_s - oldest))
    start = now_s - history_seconds
    bucket_s = history_seconds / BUCKETS
    peaks = _bucket_peaks(times, scores, start, bucket_s)
    top = max([threshold * 1.5] + [v * 1.1 for v in peaks.values()]) if math.isfinite(threshold) else 1.0
    top = top if top > 0 else 1.0
    plot_w = WIDTH_PX - _PAD_LEFT_PX - _PAD_RIGHT_PX
    plot_h = HEIGHT_PX - _PAD_TOP_PX - _PAD_BOTTOM_PX

    def x(t: float) -> float:
        return _PAD_LEFT_PX + plot_w * min(1.0, max(0.0, (t - start) / history_seconds))

    def y(v: float) -> float:
        return _PAD_TOP_PX + plot_h * (1.0 - min(1.0, max(0.0, v / top)))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" '
             f'width="{WIDTH_PX}" height="{HEIGHT_PX}" role="img" aria-label="score over the last {_ago(history_seconds)[1:]}">',
             f'<rect x="{_PAD_LEFT_PX}" y="{_PAD_TOP_PX}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
             'stroke="#ccc"/>']
    for a, b in spans or []:
        if b >= start:
            parts.append(f'<rect class="alert-span" x="{x(a):.1f}" y="{_PAD_TOP_PX}" '
                         f'width="{max(1.0, x(b) - x(a)):.1f}" height="{plot_h}" fill="#f8d7da"/>')
    if peaks:
        path = " ".join(f"{x(start + (i + 0.5) * bucket_s):.1f},{y(v):.1f}" for i, v in sorted(peaks.items()))
        parts.append(f'<polyline class="score" fill="none" stroke="#1f6feb" stroke-width="1.5" points="{path}"/>')
    if math.isfinite(threshold) and threshold > 0:
        ty = y(threshold)
        parts.append(f'<line class="threshold" x1="{_PAD_LEFT_PX}" x2="{WIDTH_PX - _PAD_RIGHT_PX}" y1="{ty:.1f}" '
                     f'y2="{ty:.1f}" stroke="#d1242f" stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{_PAD_LEFT_PX - 4}" y="{ty + 4:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#d1242f">{_fmt(threshold)}</text>')
    parts.extend(_axis_labels(top, history_seconds, plot_w))
    if not peaks:
        parts.append(f'<text x="{_PAD_LEFT_PX + plot_w / 2:.0f}" y="{_PAD_TOP_PX + plot_h / 2:.0f}" '
                     'font-size="12" text-anchor="middle" fill="#888">no scores yet</text>')
    parts.append("</svg>")
    return "".join(parts)
