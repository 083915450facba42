"""The page's score history: a ring of numpy arrays written by the pipeline, read by the web threads."""

from __future__ import annotations

import numpy as np

from edge_monitor.web.charts import score_chart_svg
from edge_monitor.web.view import ScoreRing


def test_ring_keeps_the_newest_pairs_in_order_across_the_wrap() -> None:
    ring = ScoreRing(5)
    assert [a.size for a in ring.arrays()] == [0, 0]
    for i in range(3):
        ring.append(100.0 + i, i / 10)
    t, s = ring.arrays()
    assert t.tolist() == [100.0, 101.0, 102.0] and s.tolist() == [0.0, 0.1, 0.2]
    for i in range(3, 12):
        ring.append(100.0 + i, i / 10)
    t, s = ring.arrays()
    # the oldest slot (the one a write in progress would replace) is never read: size - 1 pairs
    assert t.tolist() == [108.0, 109.0, 110.0, 111.0]
    assert np.allclose(s, [0.8, 0.9, 1.0, 1.1]) and len(t) == ring.size - 1
    t, _ = ring.arrays(since_s=109.0)
    assert t.tolist() == [109.0, 110.0, 111.0]
    t[:] = 0  # a copy: the ring is untouched
    assert ring.arrays()[0].tolist() == [108.0, 109.0, 110.0, 111.0]


def test_chart_is_the_same_from_pairs_and_from_arrays() -> None:
    rng = np.random.default_rng(3)
    times = 1_800_000_000.0 - 3600 + np.sort(rng.uniform(0, 3600, 2000))
    scores = rng.uniform(0, 3, times.size)
    scores[5] = np.nan  # an invalid score is left out, not drawn
    now = 1_800_000_000.0
    pairs = list(zip(times.tolist(), scores.tolist()))
    a = score_chart_svg(pairs, 1.5, now, [(now - 600, now - 540)])
    b = score_chart_svg((times, scores), 1.5, now, [(now - 600, now - 540)])
    assert a == b and "nan" not in a
    points = a.split('points="')[1].split('"')[0].split()
    assert 250 <= len(points) <= 300  # one per 12 s bucket that has scores
