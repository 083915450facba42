"""Candidate detectors measured in numpy on the per-machine benchmark's groups and folds.

    python -m benchmarks.detector_candidates --data ../shared/data/real [--yamnet ../shared/models/yamnet_int8]

This is the screening step that chose the default ``frames`` method: the same machine IDs and
folds as ``python -m edge_monitor.training.per_machine`` (leave one normal out at file level,
a 70/30 time split at window level), but each candidate is a few lines of float64 numpy with no
int8 conversion and no calibration, so many ideas can be compared in minutes. The winner was
then built into ``edge-monitor train`` and re-measured through the product path.

Every candidate produces window scores (one 32-frame window every 16 frames, 0.5 s), the file
score is an aggregate of them (``mean`` as ``edge-monitor score``, or ``p90``/``max``), and the
AUC is averaged over folds within an ID, then over IDs. Needs the ``[dev]`` extra (librosa,
scikit-learn); the YAMNet rows also need its int8 model folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edge_monitor.features import FeatureSpec, extract
from edge_monitor.scoring import load_mono
from edge_monitor.training.metrics import MetricsError, roc_auc
from edge_monitor.training.per_machine import find_groups, folds

WINDOW_FRAMES = 32
HOP_FRAMES = 16
AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda w: float(np.mean(w)), "p90": lambda w: float(np.percentile(w, 90)),
    "max": lambda w: float(np.max(w))}
Scorer = Callable[[np.ndarray], np.ndarray]   # audio -> window scores
Fitter = Callable[[list[np.ndarray]], Scorer]  # normal audios -> scorer
_BANK: dict[str, np.ndarray] = {}              # the outlier bank of the group being evaluated (other machines)


# ---------------------------------------------------------------- features

def logmel(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """``(frames, n_mels)`` dB log-mel, n_fft 1024, hop 512 (the product's extractor)."""
    return extract(FeatureSpec(n_mels=n_mels), audio).astype(np.float64)


def linear_db(audio: np.ndarray, pool: int = 2) -> np.ndarray:
    """``(frames, 512 / pool)`` dB power spectrum on a linear frequency axis, n_fft 1024, hop 512."""
    n = 1 + (audio.size - 1024) // 512
    fr = np.lib.stride_tricks.as_strided(audio, (n, 1024), (audio.strides[0] * 512, audio.strides[0]))
    power = np.abs(np.fft.rfft(fr * np.hanning(1025)[:-1], axis=1)) ** 2
    power = power[:, 1:1 + (512 // pool) * pool].reshape(n, -1, pool).sum(axis=2)
    return 10.0 * np.log10(np.maximum(power, 1e-10))


def level_free(frames: np.ndarray) -> np.ndarray:
    """Each frame less its mean over bands (a gain change is not a fault)."""
    return frames - frames.mean(axis=1, keepdims=True)


def with_context(frames: np.ndarray, kind: str) -> np.ndarray:
    """Frames with time context: ``delta`` appends x[t] - x[t-2], ``stack2`` appends x[t-1]."""
    if kind == "delta":
        return np.hstack([frames, np.vstack([np.zeros((2, frames.shape[1])), frames[2:] - frames[:-2]])])
    return np.hstack([frames, np.vstack([frames[:1], frames[:-1]])])


def centred(frames: np.ndarray, horizon: Optional[int] = None) -> np.ndarray:
    """Each frame less the mean of its recording (``horizon=None``) or of the last ``horizon`` frames."""
    if horizon is None:
        return frames - frames.mean(axis=0)
    c = np.cumsum(np.vstack([np.zeros((1, frames.shape[1])), frames]), axis=0)
    i = np.arange(1, frames.shape[0] + 1)
    lo = np.maximum(0, i - horizon)
    return frames - (c[i] - c[lo]) / (i - lo)[:, None]


def smoothed(frames: np.ndarray, n: int) -> np.ndarray:
    """The moving average of ``n`` consecutive frames."""
    c = np.cumsum(np.vstack([np.zeros((1, frames.shape[1])), frames]), axis=0)
    return (c[n:] - c[:-n]) / n


def window_stats(frames: np.ndarray, hop: int, remove_level: bool) -> np.ndarray:
    """``(windows, 2 * bands)``: per-band mean (optionally less its level) and std over 32-frame windows."""
    n = 1 + (frames.shape[0] - WINDOW_FRAMES) // hop
    idx = np.arange(WINDOW_FRAMES)[None, :] + hop * np.arange(n)[:, None]
    w = frames[idx]
    mean = w.mean(axis=1)
    if remove_level:
        mean = mean - mean.mean(axis=1, keepdims=True)
    return np.concatenate([mean, w.std(axis=1)], axis=1)


# ---------------------------------------------------------------- distance models

def ledoit_wolf(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Mahalanobis distance under scikit-learn's Ledoit-Wolf covariance."""
    from sklearn.covariance import LedoitWolf

    est = LedoitWolf().fit(x)
    mu, prec = est.location_, est.precision_
    return lambda y: np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", y - mu, prec, y - mu), 0.0))


def knn(x: np.ndarray, k: int = 1, whiten: bool = False,
        bank: Optional[np.ndarray] = None) -> Callable[[np.ndarray], np.ndarray]:
    """Mean distance to the k nearest vectors of ``bank`` (default: every other normal vector), z-scored
    or Ledoit-Wolf whitened with the normal vectors' statistics."""
    mu = x.mean(axis=0)
    if whiten:
        from sklearn.covariance import LedoitWolf

        vals, vecs = np.linalg.eigh(LedoitWolf().fit(x).covariance_)
        w = vecs / np.sqrt(np.maximum(vals, 1e-9))
    else:
        w = np.diag(1.0 / (x.std(axis=0) + 1e-3))
    bank = ((x[::2] if bank is None else bank) - mu) @ w
    bank_sq = (bank ** 2).sum(axis=1)

    def dist(y: np.ndarray) -> np.ndarray:
        z = (y - mu) @ w
        d = np.sqrt(np.maximum((z ** 2).sum(axis=1)[:, None] - 2 * z @ bank.T + bank_sq[None, :], 0.0))
        return np.sort(d, axis=1)[:, :k].mean(axis=1)
    return dist


def gmm(x: np.ndarray, components: int = 4) -> Callable[[np.ndarray], np.ndarray]:
    """Negative log-likelihood under a diagonal Gaussian mixture."""
    from sklearn.mixture import GaussianMixture

    g = GaussianMixture(components, covariance_type="diag", reg_covar=1e-2, random_state=0).fit(x)
    return lambda y: -g.score_samples(y)


def logistic_vs_bank(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Log-odds of "another machine" from a logistic regression of the outlier bank against ``x``."""
    from edge_monitor.training.outlier_bank import fit_logistic

    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-3
    w, b = fit_logistic((x - mu) / sd, (_BANK["frames"] - mu) / sd)
    return lambda y: (y - mu) / sd @ w + b


def session_covariance(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Ledoit-Wolf plus the covariance of whole-recording mean shifts seen on *other* machines' clips."""
    from sklearn.covariance import LedoitWolf

    est = LedoitWolf().fit(x)
    prec = np.linalg.inv(est.covariance_ + 0.3 * _BANK["session_cov"])
    mu = est.location_
    return lambda y: np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", y - mu, prec, y - mu), 0.0))


def pca_residual(x: np.ndarray, k: int = 16) -> Callable[[np.ndarray], np.ndarray]:
    """Length of what is left of a frame outside the ``k`` principal directions of the normal frames."""
    mu = x.mean(axis=0)
    v = np.linalg.svd(x - mu, full_matrices=False)[2][:k].T
    return lambda y: np.sqrt(((y - mu - (y - mu) @ v @ v.T) ** 2).sum(axis=1))


def nuisance_projection(x: np.ndarray, k: int = 8) -> Callable[[np.ndarray], np.ndarray]:
    """Ledoit-Wolf after removing the ``k`` main directions in which other machines' recordings move
    from one session to the next (nuisance attribute projection)."""
    vecs = np.linalg.eigh(_BANK["session_cov"])[1][:, ::-1][:, :k]
    proj = np.eye(x.shape[1]) - vecs @ vecs.T
    dist = ledoit_wolf(x @ proj)
    return lambda y: dist(y @ proj)


def prior_shrinkage(x: np.ndarray, weight: float = 0.3) -> Callable[[np.ndarray], np.ndarray]:
    """Ledoit-Wolf covariance shrunk further toward other machines' mean within-recording covariance."""
    from sklearn.covariance import LedoitWolf

    est = LedoitWolf().fit(x)
    prior = _BANK["within_cov"] * np.trace(est.covariance_) / np.trace(_BANK["within_cov"])
    prec = np.linalg.inv((1 - weight) * est.covariance_ + weight * prior)
    mu = est.location_
    return lambda y: np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", y - mu, prec, y - mu), 0.0))


def knn_ratio(x: np.ndarray, k: int = 5) -> Callable[[np.ndarray], np.ndarray]:
    """Log of (mean distance to the k nearest normal frames / to the k nearest outlier-bank frames), whitened."""
    own, other = knn(x, k, whiten=True, bank=x[::2]), knn(x, k, whiten=True, bank=_BANK["frames"])
    return lambda y: np.log(own(y) + 1e-9) - np.log(other(y) + 1e-9)


def two_part(feat: Callable[[np.ndarray], np.ndarray], combine: str, weight: float = 1.0) -> Fitter:
    """Ledoit-Wolf distance and the bank's log-odds, each scaled by its median and IQR on the training frames."""
    def fit(normals: list[np.ndarray]) -> Scorer:
        x = np.concatenate([feat(a) for a in normals])
        parts = [ledoit_wolf(x), logistic_vs_bank(x)]
        scale = [(float(np.median(p(x))), _iqr(p(x))) for p in parts]

        def score(audio: np.ndarray) -> np.ndarray:
            f = feat(audio)
            a, b = (_windows((p(f) - m) / s) for p, (m, s) in zip(parts, scale))
            return np.maximum(a, b) if combine == "max" else a + weight * b
        return score
    return fit


def _iqr(v: np.ndarray) -> float:
    """Interquartile range (never 0): the scale each part of a combined score is divided by."""
    return float(np.subtract(*np.percentile(v, [75, 25]))) + 1e-9


def _windows(d: np.ndarray) -> np.ndarray:
    n = 1 + (d.size - WINDOW_FRAMES) // HOP_FRAMES
    csum = np.concatenate([[0.0], np.cumsum(d)])
    starts = np.arange(max(n, 0)) * HOP_FRAMES
    return (csum[starts + WINDOW_FRAMES] - csum[starts]) / WINDOW_FRAMES


def set_bank(data: Path, group: dict, level_free_frames: Callable[[Path], np.ndarray]) -> None:
    """The outlier bank and session covariance for ``group``: every other machine's normal clips under ``data``."""
    from edge_monitor.training.outlier_bank import FRAMES_PER_CLIP, machine_key
    from edge_monitor.training.per_machine import bank_key

    rng = np.random.default_rng(0)
    own = bank_key(group)
    by_machine: dict[str, list[np.ndarray]] = {}
    for path in sorted(data.rglob("*.wav")):
        key = machine_key(path, data)
        if key is not None and key != own:
            by_machine.setdefault(key, []).append(level_free_frames(path))
    picks, shifts, within = [], [], []
    for clips in by_machine.values():
        picks += [c[rng.choice(len(c), min(FRAMES_PER_CLIP, len(c)), replace=False)] for c in clips]
        within += [np.cov(c.T) for c in clips]
        if len(clips) >= 2:
            means = np.array([c.mean(axis=0) for c in clips])
            shifts.append((means - means.mean(axis=0)) * np.sqrt(len(clips) / (len(clips) - 1)))
    _BANK["frames"] = np.concatenate(picks)
    d = np.concatenate(shifts)
    _BANK["session_cov"] = d.T @ d / len(d)
    _BANK["within_cov"] = np.mean(within, axis=0)


# ---------------------------------------------------------------- candidates

def frame_model(feat: Callable[[np.ndarray], np.ndarray],
                model: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]) -> Fitter:
    """Per-frame distance, averaged over each window."""
    def fit(normals: list[np.ndarray]) -> Scorer:
        dist = model(np.concatenate([feat(a) for a in normals]))

        def score(audio: np.ndarray) -> np.ndarray:
            d = dist(feat(audio))
            n = 1 + (d.size - WINDOW_FRAMES) // HOP_FRAMES
            csum = np.concatenate([[0.0], np.cumsum(d)])
            starts = np.arange(max(n, 0)) * HOP_FRAMES
            return (csum[starts + WINDOW_FRAMES] - csum[starts]) / WINDOW_FRAMES
        return score
    return fit


def ensemble(feats: Sequence[Callable[[np.ndarray], np.ndarray]], combine: str = "sum") -> Fitter:
    """Several Ledoit-Wolf frame models, each window score less its median and divided by its
    interquartile range on the training audio (a rank-like normalisation), summed or maxed."""
    def fit(normals: list[np.ndarray]) -> Scorer:
        parts = []
        for feat in feats:
            x = np.concatenate([feat(a) for a in normals])
            dist = ledoit_wolf(x)
            t = _windows(dist(x))
            parts.append((feat, dist, float(np.median(t)), _iqr(t)))

        def score(audio: np.ndarray) -> np.ndarray:
            v = [(_windows(dist(feat(audio))) - m) / s for feat, dist, m, s in parts]
            v = [w[:min(len(u) for u in v)] for w in v]
            return np.max(v, axis=0) if combine == "max" else np.sum(v, axis=0)
        return score
    return fit


def patch_model(bands: int, frames: int) -> Fitter:
    """Time-frequency patches: ``bands`` adjacent level-free bands over ``frames`` consecutive frames,
    one Ledoit-Wolf model per band group, the patch distances summed over the groups."""
    def patches(f: np.ndarray, b0: int) -> np.ndarray:
        n = f.shape[0] - frames + 1
        return np.concatenate([f[i:i + n, b0:b0 + bands] for i in range(frames)], axis=1)

    def fit(normals: list[np.ndarray]) -> Scorer:
        feats = [level_free(logmel(a, 128)) for a in normals]
        models = [(b0, ledoit_wolf(np.concatenate([patches(f, b0) for f in feats]))) for b0 in range(0, 128, bands)]
        def score(audio: np.ndarray) -> np.ndarray:
            f = level_free(logmel(audio, 128))
            return _windows(np.sum([m(patches(f, b0)) for b0, m in models], axis=0))
        return score
    return fit


def half_centred(feat: Callable[[np.ndarray], np.ndarray], share: float = 0.5) -> Fitter:
    """Ledoit-Wolf frames; a scored recording is first moved ``share`` of the way from its own mean
    spectrum to the training mean (a session shift is taken as partly not a fault)."""
    def fit(normals: list[np.ndarray]) -> Scorer:
        x = np.concatenate([feat(a) for a in normals])
        dist, mu = ledoit_wolf(x), x.mean(axis=0)

        def score(audio: np.ndarray) -> np.ndarray:
            f = feat(audio)
            return _windows(dist(f - share * (f.mean(axis=0) - mu)))
        return score
    return fit


def window_centred(feat: Callable[[np.ndarray], np.ndarray]) -> Fitter:
    """Each 32-frame window less its own mean frame, Ledoit-Wolf on such centred training frames."""
    def view(f: np.ndarray, hop: int) -> np.ndarray:
        n = 1 + (f.shape[0] - WINDOW_FRAMES) // hop
        w = f[np.arange(WINDOW_FRAMES)[None, :] + hop * np.arange(n)[:, None]]
        return w - w.mean(axis=1, keepdims=True)

    def fit(normals: list[np.ndarray]) -> Scorer:
        dist = ledoit_wolf(np.concatenate([view(feat(a), 4).reshape(-1, 128) for a in normals]))

        def score(audio: np.ndarray) -> np.ndarray:
            v = view(feat(audio), HOP_FRAMES)
            return dist(v.reshape(-1, v.shape[2])).reshape(v.shape[:2]).mean(axis=1)
        return score
    return fit


def window_model(feat: Callable[[np.ndarray, int], np.ndarray],
                 model: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]) -> Fitter:
    """Distance of whole-window statistics (training windows every 2 frames)."""
    def fit(normals: list[np.ndarray]) -> Scorer:
        dist = model(np.concatenate([feat(a, 2) for a in normals]))
        return lambda audio: dist(feat(audio, HOP_FRAMES))
    return fit


def yamnet_embedder(folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    """YAMNet's 1024-d embedding (tensor 90) of 0.96 s patches every 0.24 s: audio -> (patches, 1024)."""
    import librosa
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(folder / "yamnet_spectra_in.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    emb = next(t for t in interp.get_tensor_details() if t["index"] == 90)
    scale, zero = emb["quantization"]
    mel = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None)
    hann = np.hanning(401)[:-1]

    def embed(audio: np.ndarray) -> np.ndarray:
        n = 1 + (audio.size - 400) // 160
        fr = np.lib.stride_tricks.as_strided(audio, (n, 400), (audio.strides[0] * 160, audio.strides[0]))
        logm = np.log(np.abs(np.fft.rfft(fr * hann, 512, axis=1)) @ mel.T + 0.001).astype(np.float32)
        out = []
        for i in range(0, n - 96 + 1, 24):
            interp.set_tensor(inp["index"], logm[None, i:i + 96])
            interp.invoke()
            out.append((interp.get_tensor(90).astype(np.float32).reshape(-1) - zero) * scale)
        return np.array(out, dtype=np.float64)
    return embed


def yamnet_model(folder: Path, model: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]) -> Fitter:
    """YAMNet's embedding, then a distance model; one score per 0.96 s patch."""
    embed = yamnet_embedder(folder)

    def fit(normals: list[np.ndarray]) -> Scorer:
        dist = model(np.concatenate([embed(a) for a in normals]))
        return lambda audio: dist(embed(audio))
    return fit


def frames_plus_yamnet(folder: Path, weight: float = 1.0) -> Fitter:
    """``frames`` plus the Ledoit-Wolf distance of YAMNet's embedding, each divided by its interquartile
    range on the training audio; the patch scores are interpolated onto the frame model's windows."""
    embed = yamnet_embedder(folder)

    def fit(normals: list[np.ndarray]) -> Scorer:
        x = np.concatenate([level_free(logmel(a, 128)) for a in normals])
        e = np.concatenate([embed(a) for a in normals])
        frames, yam = ledoit_wolf(x), ledoit_wolf(e)
        s_f = _iqr(_windows(frames(x)))
        s_y = _iqr(yam(e))

        def score(audio: np.ndarray) -> np.ndarray:
            a = _windows(frames(level_free(logmel(audio, 128)))) / s_f
            b = yam(embed(audio)) / s_y
            return a + weight * np.interp(np.linspace(0, b.size - 1, a.size), np.arange(b.size), b)
        return score
    return fit


def candidates(yamnet: Optional[Path]) -> dict[str, Fitter]:
    """Every candidate by name. The first is the peer, the second the shipped default."""
    c: dict[str, Fitter] = {
        "peer: log-mel 128 frames, Ledoit-Wolf": frame_model(lambda a: logmel(a, 128), ledoit_wolf),
        "frames (default): level-free log-mel 128 frames, Ledoit-Wolf": frame_model(
            lambda a: level_free(logmel(a, 128)), ledoit_wolf),
        "log-mel 64 frames, Ledoit-Wolf": frame_model(lambda a: logmel(a, 64), ledoit_wolf),
        "log-mel 256 frames (finer frequency), Ledoit-Wolf": frame_model(lambda a: logmel(a, 256), ledoit_wolf),
        "linear spectrum 256 bins, Ledoit-Wolf": frame_model(lambda a: linear_db(a, 2), ledoit_wolf),
        "level-free 128 frames, kNN-5 memory bank (whitened)": frame_model(
            lambda a: level_free(logmel(a, 128)), lambda x: knn(x, 5, whiten=True)),
        "level-free 128 frames, GMM 4 diagonal": frame_model(lambda a: level_free(logmel(a, 128)), gmm),
        "window mean+std 64, level-free, Ledoit-Wolf (like stats)": window_model(
            lambda a, h: window_stats(logmel(a, 64), h, True), ledoit_wolf),
        "window mean+std 128, kNN-1 memory bank": window_model(
            lambda a, h: window_stats(logmel(a, 128), h, False), knn),
    }
    lf128 = lambda a: level_free(logmel(a, 128))  # noqa: E731
    c.update({
        "level-free 128 frames, logistic regression against other machines (outlier bank)": frame_model(
            lf128, logistic_vs_bank),
        "frames + outlier-bank logistic, IQR-scaled sum (train --outlier-bank)": two_part(lf128, "sum"),
        "frames + outlier-bank logistic, sum with the logistic at half weight": two_part(lf128, "sum", 0.5),
        "frames + outlier-bank logistic, sum with the logistic at double weight": two_part(lf128, "sum", 2.0),
        "frames + outlier-bank logistic, maximum of the two": two_part(lf128, "max"),
        "level-free 128 frames, Ledoit-Wolf + other machines' between-recording covariance": frame_model(
            lf128, session_covariance),
        "time context: level-free 128 frames + their 2-frame delta (256), Ledoit-Wolf": frame_model(
            lambda a: with_context(lf128(a), "delta"), ledoit_wolf),
        "time context: two consecutive level-free 128 frames stacked (256), Ledoit-Wolf": frame_model(
            lambda a: with_context(lf128(a), "stack2"), ledoit_wolf),
    })
    c.update({
        "recording-centred: each recording less its own mean spectrum, Ledoit-Wolf": frame_model(
            lambda a: centred(lf128(a)), ledoit_wolf),
        "running-mean centred: each frame less the mean of the last 10 s, Ledoit-Wolf": frame_model(
            lambda a: centred(lf128(a), 312), ledoit_wolf),
        "window-centred: each 1 s window less its own mean, Ledoit-Wolf": window_centred(lf128),
        "half-centred: a recording moved halfway from its mean to the training mean, Ledoit-Wolf": half_centred(
            lf128),
        "level-free 128 frames averaged over 4 frames (128 ms), Ledoit-Wolf": frame_model(
            lambda a: smoothed(lf128(a), 4), ledoit_wolf),
        "level-free 128 frames, residual outside 16 principal directions": frame_model(lf128, pca_residual),
        "level-free 128 frames, 8 between-recording directions of other machines projected out": frame_model(
            lf128, nuisance_projection),
        "level-free 128 frames, Ledoit-Wolf shrunk 0.3 toward other machines' covariance": frame_model(
            lf128, prior_shrinkage),
        "level-free 128 frames, kNN-5 distance ratio own / outlier bank": frame_model(lf128, knn_ratio),
        "time-frequency patches: 16 bands x 4 frames, Ledoit-Wolf per band group, summed": patch_model(16, 4),
        "time-frequency patches: 32 bands x 2 frames, Ledoit-Wolf per band group, summed": patch_model(32, 2),
        "ensemble: level-free 64 + 128 + 256-band frames and 256-bin linear, normalised sum": ensemble(
            [lambda a: level_free(logmel(a, 64)), lf128, lambda a: level_free(logmel(a, 256)),
             lambda a: level_free(linear_db(a, 2))]),
        "ensemble: level-free 64 / 128 / 256-band frames, normalised maximum": ensemble(
            [lambda a: level_free(logmel(a, 64)), lf128, lambda a: level_free(logmel(a, 256))], "max"),
    })
    if yamnet is not None and (yamnet / "yamnet_spectra_in.tflite").exists():
        c["YAMNet int8 embedding, Ledoit-Wolf"] = yamnet_model(yamnet, ledoit_wolf)
        c["frames + YAMNet embedding distance, IQR-scaled sum"] = frames_plus_yamnet(yamnet)
    return c


# ---------------------------------------------------------------- running

def evaluate(fit: Fitter, group_folds: list[tuple[dict, list[dict]]],
             data: Optional[Path] = None) -> dict[str, dict[str, Optional[float]]]:
    """``{group name: {aggregate: mean fold AUC}}``; with ``data``, each group's outlier bank leaves it out."""
    out: dict[str, dict[str, Optional[float]]] = {}
    frames_of: dict[Path, np.ndarray] = {}

    def lf(path: Path) -> np.ndarray:
        if path not in frames_of:
            frames_of[path] = level_free(logmel(load_mono(path, 16000, 0), 128))
        return frames_of[path]
    for group, fl in group_folds:
        if data is not None:
            set_bank(data, group, lf)
        per_agg: dict[str, list[float]] = {a: [] for a in AGGREGATES}
        for fold in fl:
            scorer = fit([load_mono(p, 16000, 0) for p in fold["train"]])
            scored = [(lab, scorer(load_mono(p, 16000, 0))) for p, lab in fold["test"]]
            for agg, f in AGGREGATES.items():
                if fold["level"] == "file":
                    labels, values = [lab for lab, _ in scored], [f(w) for _, w in scored]
                else:
                    labels = [lab for lab, w in scored for _ in w]
                    values = [float(v) for _, w in scored for v in w]
                try:
                    per_agg[agg].append(roc_auc(labels, values))
                except MetricsError:
                    pass
        out[f"{group['set']} {group['name']}"] = {a: float(np.mean(v)) if v else None for a, v in per_agg.items()}
    return out


def session_shift(group_folds: list[tuple[dict, list[dict]]]) -> str:
    """Why the leave-one-out folds are hard: each clip's mean frame distance (level-free 128 frames,
    Ledoit-Wolf on the fold's training clips) as a multiple of the training audio's own, for the
    held-out normal clips and the anomalous clips, and how often a normal clip scores above a fault."""
    normal, faults, above, pairs = [], [], 0, 0
    for _group, fl in group_folds:
        for fold in (f for f in fl if f["level"] == "file"):
            x = np.concatenate([level_free(logmel(load_mono(p, 16000, 0), 128)) for p in fold["train"]])
            dist = ledoit_wolf(x)
            base = float(np.mean(dist(x)))
            ratio = {p: float(np.mean(dist(level_free(logmel(load_mono(p, 16000, 0), 128))))) / base
                     for p, _ in fold["test"]}
            n = [ratio[p] for p, lab in fold["test"] if lab == 0]
            a = [ratio[p] for p, lab in fold["test"] if lab == 1]
            normal += n
            faults += a
            above += sum(v <= m for v in a for m in n)
            pairs += len(a) * len(n)

    def q(v: list[float]) -> str:
        return "median {:.2f} (quartiles {:.2f}-{:.2f})".format(*np.percentile(v, [50, 25, 75]))
    return (f"{len(normal)} leave-one-out folds. Mean frame distance / the training audio's: held-out normal "
            f"clips {q(normal)}; {len(faults)} anomalous clip scorings {q(faults)}; a normal clip scores at or "
            f"above the fault in {above} of {pairs} pairs.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: prints one Markdown row per candidate and aggregate."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--yamnet", type=Path, default=None, help="folder with yamnet_spectra_in.tflite (optional)")
    p.add_argument("--only", default="", help="run only candidates whose name contains this text")
    p.add_argument("--session-shift", action="store_true",
                   help="print how far held-out normal clips and faults move from the training audio, then stop")
    args = p.parse_args(argv)
    groups = find_groups(args.data)
    if not groups:
        print(f"no machine IDs with normal and anomalous clips under {args.data}", file=sys.stderr)
        return 2
    if args.session_shift:
        with tempfile.TemporaryDirectory() as tmp:
            print(session_shift([(g, folds(g, Path(tmp))) for g in groups]))
        return 0
    sets = sorted({g["set"] for g in groups})
    print("| candidate | file score | mean AUC, all IDs | " + " | ".join(sets) + " |")
    print("|---|---|---" + "|---" * len(sets) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        group_folds = [(g, folds(g, Path(tmp))) for g in groups]
        for name, fit in candidates(args.yamnet).items():
            if args.only and args.only not in name:
                continue
            res = evaluate(fit, group_folds, args.data)
            for agg in AGGREGATES:
                vals = {k: v[agg] for k, v in res.items() if v[agg] is not None}
                by_set = [np.mean([v for k, v in vals.items() if k.startswith(s + " ")]) for s in sets]
                print(f"| {name} | {agg} | {np.mean(list(vals.values())):.3f} | "
                      + " | ".join(f"{v:.3f}" for v in by_set) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
