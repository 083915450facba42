"""Detection metrics in numpy: ROC curve, AUC, partial AUC, precision/recall at a threshold, confusion matrix.

Conventions used throughout:

* ``labels`` are 1 (anomalous, the positive class) and 0 (normal); booleans work too.
* ``scores``: higher means more anomalous.
* A sample is *predicted* anomalous when ``score > threshold`` (strictly), the
  same rule as ``FileScore.anomalous`` and the detector.
* Ties are handled exactly: tied scores form one ROC point (no staircase), so
  the AUC equals the Mann-Whitney probability ``P(s_anom > s_norm) + 0.5 P(=)``.

Partial AUC (``p`` = the largest false-positive rate considered, 0.1 by default)
comes in two flavours, because the literature uses both:

* ``standardized=False`` (default, **DCASE-style**): the area under the ROC
  curve between FPR 0 and p, divided by p. A perfect detector gets 1.0 and a
  random one gets p/2 = 0.05. This is the definition in the DCASE Task 2 task
  descriptions.
* ``standardized=True`` (**McClish**): ``0.5 * (1 + (A - min) / (max - min))``
  with ``min = p^2/2`` and ``max = p``: random gets 0.5, perfect 1.0. This is
  what ``sklearn.metrics.roc_auc_score(max_fpr=p)`` returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np


class MetricsError(ValueError):
    """Inputs the metrics can't be computed on (e.g. only one class). The message says why."""


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricsError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if not np.all(np.isfinite(s)):
        raise MetricsError("scores contain NaN or infinity")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise MetricsError(f"need both normal and anomalous samples, got {y.size - n_pos} normal "
                           f"and {n_pos} anomalous")
    return y, s


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, each ``(m,)`` float64, starting at (0, 0).

    Point i is the rate at which samples with ``score >= thresholds[i]`` are flagged;
    ``thresholds[0]`` is +inf. Tied scores give one point.
    """
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[distinct].astype(np.float64)
    fp = (distinct + 1 - tp).astype(np.float64)
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (y.size - y.sum())]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: P(anomalous scores above normal), ties counted half."""
    y, s = _check(labels, scores)
    ranks = _average_ranks(s)
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks_sorted = np.arange(1, x.size + 1, dtype=np.float64)
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], x.size]
    for a, b in zip(starts, ends):
        if b - a > 1:
            ranks_sorted[a:b] = (a + 1 + b) / 2.0
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def partial_auc(labels: Any, scores: Any, p: float = 0.1, *, standardized: bool = False) -> float:
    """Partial AUC over FPR in [0, p]; DCASE-style (area / p) or McClish-standardised. See the module docstring."""
    if not 0.0 < p <= 1.0:
        raise MetricsError(f"p must be in (0, 1], got {p}")
    fpr, tpr, _ = roc_curve(labels, scores)
    stop = int(np.searchsorted(fpr, p, side="right"))
    x = np.r_[fpr[:stop], p]
    y = np.r_[tpr[:stop], np.interp(p, fpr, tpr)]
    area = float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))  # the trapezoid rule
    if standardized:
        min_area, max_area = 0.5 * p * p, p
        return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))
    return area / p


@dataclasses.dataclass(frozen=True)
class ThresholdStats:
    """Counts and rates of a binary decision ``score > threshold``."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0.0 when nothing was flagged."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn), the true-positive rate; 0.0 without anomalous samples."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def false_positive_rate(self) -> float:
        """fp / (fp + tn); 0.0 without normal samples."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 0.0 when both are 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form, rates included."""
        d: dict[str, float] = dataclasses.asdict(self)
        d.update(precision=self.precision, recall=self.recall, false_positive_rate=self.false_positive_rate,
                 f1=self.f1)
        return d


def at_threshold(labels: Any, scores: Any, threshold: float) -> ThresholdStats:
    """Precision, recall and counts when samples with ``score > threshold`` are flagged (one class may be absent)."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetricsError(f"labels and scores differ in length ({y.size} vs {s.size})")
    flagged = s > float(threshold)
    return ThresholdStats(threshold=float(threshold), tp=int(np.sum(flagged & y)), fp=int(np.sum(flagged & ~y)),
                          tn=int(np.sum(~flagged & ~y)), fn=int(np.sum(~flagged & y)))


def precision_recall_at(labels: Any, scores: Any, threshold: float) -> tuple[float, float]:
    """``(precision, recall)`` when ``score > threshold`` is flagged."""
    st = at_threshold(labels, scores, threshold)
    return st.precision, st.recall


def confusion_matrix(true: Sequence[Any], predicted: Sequence[Any],
                     labels: Optional[Sequence[Any]] = None) -> tuple[np.ndarray, list[Any]]:
    """Counts ``(k, k)`` int64 with rows = true label, columns = predicted label, and the label order.

    ``labels`` fixes the order (default: sorted union of both). For 0/1 labels the
    matrix is ``[[tn, fp], [fn, tp]]`` (the scikit-learn layout).
    """
    t = list(np.asarray(true).reshape(-1).tolist())
    p = list(np.asarray(predicted).reshape(-1).tolist())
    if len(t) != len(p):
        raise MetricsError(f"true and predicted labels differ in length ({len(t)} vs {len(p)})")
    order = list(labels) if labels is not None else sorted(set(t) | set(p), key=lambda v: (str(type(v)), v))
    index = {lab: i for i, lab in enumerate(order)}
    unknown = sorted({str(v) for v in t + p if v not in index})
    if unknown:
        raise MetricsError(f"labels {unknown} are not in the given label list {order!r}")
    m = np.zeros((len(order), len(order)), dtype=np.int64)
    for a, b in zip(t, p):
        m[index[a], index[b]] += 1
    return m, order


def summary(labels: Any, scores: Any, threshold: Optional[float] = None, p: float = 0.1) -> dict[str, Any]:
    """AUC, pAUC (DCASE-style and McClish) and, given a threshold, precision/recall/counts, as one dict."""
    out: dict[str, Any] = {
        "auc": roc_auc(labels, scores),
        "pauc": partial_auc(labels, scores, p),
        "pauc_mcclish": partial_auc(labels, scores, p, standardized=True),
        "pauc_max_fpr": p,
    }
    if threshold is not None:
        out["at_threshold"] = at_threshold(labels, scores, threshold).to_dict()
    return out


__all__ = ["MetricsError", "roc_curve", "roc_auc", "partial_auc", "ThresholdStats", "at_threshold",
           "precision_recall_at", "confusion_matrix", "summary"]
