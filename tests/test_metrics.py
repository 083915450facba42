"""Tests for edge_monitor.training.metrics against hand-computed values and scikit-learn (when installed)."""

import numpy as np
import pytest

from edge_monitor.training.metrics import (
    MetricsError,
    at_threshold,
    confusion_matrix,
    partial_auc,
    precision_recall_at,
    roc_auc,
    roc_curve,
    summary,
)


def test_auc_hand_computed_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # pairs (anom, norm): (0.35 vs 0.1, 0.4) -> 1 + 0; (0.8 vs both) -> 2 => 3/4
    assert roc_auc([0, 1, 0, 1], [0.1, 0.35, 0.4, 0.8]) == pytest.approx(0.75)
    # every score tied: half credit
    assert roc_auc([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)
    # one tie between an anomaly and a normal: (1 + 0.5) / 2
    assert roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_auc_is_area_under_roc_curve_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)
    assert roc_auc(y, s) == pytest.approx(float(np.trapezoid(tpr, fpr)), abs=1e-12)


def test_partial_auc_hand_computed():
    # perfect separation: full area in [0, p]
    assert partial_auc([0, 0, 1, 1], [0, 1, 2, 3], 0.1) == pytest.approx(1.0)
    assert partial_auc([0, 0, 1, 1], [0, 1, 2, 3], 0.1, standardized=True) == pytest.approx(1.0)
    # fully inverted: the curve stays at tpr 0 up to fpr 1 -> area 0; McClish clips nothing, gives below 0.5
    assert partial_auc([1, 1, 0, 0], [0, 1, 2, 3], 0.1) == pytest.approx(0.0)
    # 10 normals, 1 anomaly ranked below the top normal and above the others:
    # ROC: (0,0) -> (0.1,0) -> (0.1,1) -> (1,1); area over [0, 0.1] is 0 (vertical jump at 0.1)
    scores = [10.0, 5.0] + [0.1 * i for i in range(9)]
    labels = [0, 1] + [0] * 9
    assert partial_auc(labels, scores, 0.1) == pytest.approx(0.0)
    # p = 0.2: area = 0.1 * 1 -> 0.1 / 0.2 = 0.5
    assert partial_auc(labels, scores, 0.2) == pytest.approx(0.5)
    # a random detector's expected DCASE-style pAUC is p/2: all-ties case gives the diagonal exactly
    assert partial_auc([0, 1, 0, 1], [1, 1, 1, 1], 0.1) == pytest.approx(0.05)
    assert partial_auc([0, 1, 0, 1], [1, 1, 1, 1], 0.1, standardized=True) == pytest.approx(0.5)


def test_against_sklearn_when_installed():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(5, 200))
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        s = rng.normal(size=n) + rng.uniform(0, 2) * y
        if trial % 3 == 0:
            s = np.round(s, 1)
        assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert partial_auc(y, s, 0.1, standardized=True) == pytest.approx(
            skm.roc_auc_score(y, s, max_fpr=0.1), abs=1e-9)
        fpr, tpr, _ = roc_curve(y, s)
        sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        # same curve (sklearn adds the same (0, 0) start)
        assert np.allclose(np.interp(np.linspace(0, 1, 50), fpr, tpr),
                           np.interp(np.linspace(0, 1, 50), sk_fpr, sk_tpr))


def test_threshold_stats_and_confusion_matrix():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.5, 0.9, 0.4, 0.8, 0.95]
    st = at_threshold(labels, scores, 0.5)  # flagged: 0.9, 0.8, 0.95 (0.5 is not > 0.5)
    assert (st.tp, st.fp, st.tn, st.fn) == (2, 1, 2, 1)
    assert st.precision == pytest.approx(2 / 3) and st.recall == pytest.approx(2 / 3)
    assert st.false_positive_rate == pytest.approx(1 / 3)
    assert precision_recall_at(labels, scores, 10.0) == (0.0, 0.0)
    m, order = confusion_matrix(labels, [int(s > 0.5) for s in scores])
    assert order == [0, 1]
    assert m.tolist() == [[2, 1], [1, 2]]
    m, order = confusion_matrix(["fan", "pump", "fan"], ["fan", "fan", "fan"], labels=["pump", "fan"])
    assert order == ["pump", "fan"] and m.tolist() == [[0, 1], [0, 2]]


def test_summary_keys_and_bad_inputs():
    s = summary([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.7], threshold=0.5)
    assert s["auc"] == 1.0 and s["pauc"] == 1.0 and s["at_threshold"]["recall"] == 1.0
    with pytest.raises(MetricsError, match="both normal and anomalous"):
        roc_auc([0, 0, 0], [1, 2, 3])
    with pytest.raises(MetricsError, match="differ in length"):
        roc_auc([0, 1], [1, 2, 3])
    with pytest.raises(MetricsError, match="NaN"):
        roc_auc([0, 1], [1, float("nan")])
    with pytest.raises(MetricsError, match="not in the given label list"):
        confusion_matrix([0, 2], [0, 1], labels=[0, 1])
