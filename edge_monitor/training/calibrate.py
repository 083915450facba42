"""Default threshold from held-out normal window scores and a target false-alarm rate.

The user states how many false alarms they can live with (e.g. one per week). The
detector raises an alert when ``k`` of the last ``n`` windows (one every
``window_hop_seconds``) score above the threshold. This module turns that episode
rate into a per-window exceedance probability ``p`` and then picks the threshold
that normal windows exceed with probability ``p``.

**Rate model (conservative).** Windows overlap (a 1.06 s window every 0.5 s), so
neighbouring scores are correlated and the independence formula would promise
too few alarms. We therefore group ``c = max(1, round(window_seconds / hop))``
consecutive windows into one independent *trial*, and require only
``k' = ceil(k / c)`` hot trials among ``n' = max(k', ceil(n / c))``. With one
trial every ``c * hop`` seconds, the alarm rate is bounded by::

    alarms_per_hour <= trials_per_hour * P(Binomial(n', p) >= k')

(an upper bound, because a long hot stretch counts once per trial here but is one
alert in the detector). ``p`` is solved from this by bisection.

**Tail model (peaks over threshold).** Few held-out windows can't show a
1-in-10,000 quantile directly, so it is extrapolated. Above ``u``, the 90th
percentile of ``log(score)``, the excesses ``log(s) - u`` are modelled as
exponential with mean ``beta`` (their sample mean); that is a Pareto tail on the
scores, heavier than a Gaussian one, as real score tails are. Then
``P(s > t) = 0.1 * exp(-(log t - u) / beta)`` and the threshold for a target
``p < 0.1`` is ``exp(u + beta * ln(0.1 / p))``. The result is never below the
empirical ``1 - p`` quantile when there are enough windows to see it
(``N * p >= 1``), and never below the highest held-out normal score otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

SECONDS_PER = {"hour": 3600.0, "day": 86400.0, "week": 604800.0}
TAIL_QUANTILE = 0.9


class CalibrationError(ValueError):
    """Held-out scores or settings that can't give a threshold. The message says why."""


def alarms_per_hour(target: float, per: str) -> float:
    """Convert "``target`` false alarms per hour/day/week" to alarms per hour."""
    if per not in SECONDS_PER:
        raise CalibrationError(f"false-alarm period must be hour, day or week, got {per!r}")
    if not target > 0:
        raise CalibrationError(f"target false-alarm rate must be positive, got {target}")
    return float(target) * 3600.0 / SECONDS_PER[per]


def _binom_tail(n: int, k: int, p: float) -> float:
    """P(Binomial(n, p) >= k)."""
    return float(sum(math.comb(n, i) * p ** i * (1.0 - p) ** (n - i) for i in range(k, n + 1)))


def _trial_model(window_hop_seconds: float, window_seconds: float, k: int, n: int) -> tuple[int, int, int, float]:
    """``(c, k', n', trials_per_hour)`` of the conservative rate model."""
    if not 1 <= k <= n:
        raise CalibrationError(f"need 1 <= k <= n for the k-of-n trigger, got k={k}, n={n}")
    if not window_hop_seconds > 0:
        raise CalibrationError(f"window hop must be positive, got {window_hop_seconds} s")
    c = max(1, int(round(window_seconds / window_hop_seconds)))
    k_eff = max(1, math.ceil(k / c))
    n_eff = max(k_eff, math.ceil(n / c))
    return c, k_eff, n_eff, 3600.0 / (c * window_hop_seconds)


def episode_rate_per_hour(p_window: float, window_hop_seconds: float, window_seconds: float,
                          k: int = 3, n: int = 5) -> float:
    """Upper bound on alerts per hour when each window is hot with probability ``p_window``."""
    _, k_eff, n_eff, trials = _trial_model(window_hop_seconds, window_seconds, k, n)
    return trials * _binom_tail(n_eff, k_eff, min(max(p_window, 0.0), 1.0))


def window_exceedance_for(alarms_per_hour_target: float, window_hop_seconds: float, window_seconds: float,
                          k: int = 3, n: int = 5) -> float:
    """The per-window exceedance probability at which the rate model gives the target alarms per hour."""
    lo, hi = 1e-15, 1.0
    if episode_rate_per_hour(hi, window_hop_seconds, window_seconds, k, n) <= alarms_per_hour_target:
        return 1.0
    for _ in range(200):  # bisection in log space
        mid = math.sqrt(lo * hi)
        if episode_rate_per_hour(mid, window_hop_seconds, window_seconds, k, n) > alarms_per_hour_target:
            hi = mid
        else:
            lo = mid
    return lo


def _tail_fit(scores: np.ndarray) -> tuple[float, float]:
    """``(u, beta)``: 90th percentile of ``log(score)`` and the mean log-excess above it."""
    floor = max(float(np.max(scores)) * 1e-9, 1e-12)
    logs = np.log(np.maximum(scores, floor))
    u = float(np.quantile(logs, TAIL_QUANTILE))
    excess = logs[logs > u] - u
    beta = float(excess.mean()) if excess.size else 0.0
    if not beta > 0:
        beta = max(float(np.std(logs)), 1e-3)
    return u, beta


def _tail_exceedance(threshold: float, u: float, beta: float, scores: np.ndarray) -> float:
    """Modelled P(score > threshold): the exponential tail above ``u``, the empirical fraction below it."""
    lt = math.log(max(threshold, 1e-300))
    if lt <= u:
        return float(np.mean(scores > threshold))
    return (1.0 - TAIL_QUANTILE) * math.exp(-(lt - u) / beta)


def calibrate_threshold(heldout_window_scores: Union[Sequence[float], np.ndarray], *, target_alarms_per_hour: float,
                        window_hop_seconds: float, window_seconds: float, k: int = 3, n: int = 5,
                        heldout_files: int = 0) -> tuple[float, dict[str, Any]]:
    """``(threshold, threshold_basis)`` from held-out normal window scores. See the module docstring."""
    s = np.asarray(heldout_window_scores, dtype=np.float64).reshape(-1)
    if s.size < 10:
        raise CalibrationError(f"only {s.size} held-out windows; calibration needs at least 10 "
                               "(give more normal audio)")
    if not np.all(np.isfinite(s)):
        raise CalibrationError("held-out scores contain NaN or infinity")
    if np.any(s < 0):
        raise CalibrationError("held-out scores must be non-negative (MSE or distance)")
    p = window_exceedance_for(target_alarms_per_hour, window_hop_seconds, window_seconds, k, n)
    u, beta = _tail_fit(s)
    tail_p = 1.0 - TAIL_QUANTILE
    fitted = math.exp(u + beta * math.log(tail_p / p)) if p < tail_p else float(np.quantile(s, 1.0 - p))
    if s.size * p >= 1.0:
        floor, floor_kind = float(np.quantile(s, 1.0 - p)), "empirical quantile"
    else:
        floor, floor_kind = float(np.max(s)), "held-out maximum"
    threshold = max(fitted, floor)
    p_at = _tail_exceedance(threshold, u, beta, s)
    c, k_eff, n_eff, _ = _trial_model(window_hop_seconds, window_seconds, k, n)
    basis = {
        "method": "exponential tail of log scores above their 90th percentile (peaks over threshold), "
                  "fitted to held-out normal window scores of the int8 model as served; "
                  f"not below the {floor_kind}",
        "target_false_alarms_per_hour": target_alarms_per_hour,
        "target_false_alarms_per_week": target_alarms_per_hour * 168.0,
        "window_hop_seconds": window_hop_seconds,
        "window_seconds": window_seconds,
        "trigger_k": k,
        "trigger_n": n,
        "rate_model": {"windows_per_trial": c, "k_eff": k_eff, "n_eff": n_eff},
        "window_exceedance_target": p,
        "tail_fit": {"log_u": u, "log_beta": beta, "tail_quantile": TAIL_QUANTILE, "fitted_threshold": fitted,
                     "floor": floor, "floor_kind": floor_kind},
        "heldout_files": int(heldout_files),
        "heldout_windows": int(s.size),
        "heldout_percentiles": {str(q): float(np.percentile(s, q)) for q in (50, 90, 99, 100)},
        "heldout_windows_above": int(np.sum(s > threshold)),
        "expected_window_exceedance": p_at,
        "expected_false_alarms_per_hour": episode_rate_per_hour(p_at, window_hop_seconds, window_seconds, k, n),
    }
    return threshold, basis


def count_alerts(window_scores: Union[Sequence[float], np.ndarray], threshold: float, *, k: int = 3, n: int = 5,
                 clear_windows: int = 5, window_hop_seconds: float = 0.5, cooldown_seconds: float = 30.0) -> int:
    """Alerts the real detector raises over one recording's window scores (no silence/clipping)."""
    from edge_monitor.detector import Detector, DetectorSettings
    from edge_monitor.events import AlertEvent

    det = Detector(DetectorSettings(threshold=float(threshold), trigger_k=k, trigger_n=n,
                                    clear_windows=clear_windows, cooldown_seconds=cooldown_seconds),
                   machine="calibration")
    starts = 0
    for i, score in enumerate(window_scores):
        for ev in det.process(float(score), i * window_hop_seconds):
            if isinstance(ev, AlertEvent) and ev.type == "start":
                starts += 1
    return starts


__all__ = ["CalibrationError", "alarms_per_hour", "episode_rate_per_hour", "window_exceedance_for",
           "calibrate_threshold", "count_alerts", "SECONDS_PER"]
