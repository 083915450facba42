"""``edge-monitor train``: an unsupervised per-machine detector from normal recordings only.

Steps (each reported through ``progress``)::

    read WAVs (mono mix or chosen channels, 16 kHz)  -> calibration folds (below)
    log-mel features, normalisation fitted on the training part
    train the model (method below) for a fixed epoch budget, single-threaded, seeded
    full-int8 TFLite conversion with a representative dataset (batch size 1)
    score the held-out normals with the int8 model exactly as the daemon does
    threshold at the user's false-alarm target (edge_monitor.training.calibrate)
    write the bundle (metadata per edge_monitor.bundle)

Methods (chosen by measurement, see docs/detection.md):

* ``frames``: every 32 ms log-mel frame (128 bands, the frame's overall level removed) is
  whitened with a Ledoit-Wolf covariance of the normal frames; a window's score is the mean
  Mahalanobis distance of its frames (kind ``embedding``, score type ``frame_norm``). Default.
* ``stats``: Mahalanobis distance of per-band log-mel mean (minus the window's
  overall level) and standard deviation over a 1 s window (kind ``embedding``).
* ``oe_cnn``: CNN embedding trained to separate the machine's normal windows from
  synthetic spectral faults applied to them (outlier exposure), Mahalanobis on
  its embedding (kind ``embedding``).
* ``conv_ae``: convolutional autoencoder on 32 x 64 log-mel patches (kind ``autoencoder``).
* ``dense_ae``: the DCASE 2020 baseline, dense autoencoder on 5 stacked frames of
  128 mels (kind ``autoencoder``).

Calibration data: ``frames`` and ``stats`` are fitted once per fold of a 5-fold split over the
recordings (one fold per recording with two to four of them; five contiguous parts of a single
recording), so the threshold sees how much unseen recordings of the same machine differ; the
shipped model is then fitted on everything. The gradient-trained
methods hold out one split instead: every fifth file (sorted by path), or with
fewer files the last 20% of every file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from edge_monitor.features import FeatureError, FeatureSpec, extract, to_mono_float, windows
from edge_monitor.wavio import WavError, read_wav

_LOGGER = logging.getLogger(__name__)

METHODS = ("frames", "stats", "oe_cnn", "conv_ae", "dense_ae")
DEFAULT_METHOD = "frames"
MIN_TRAIN_SECONDS = 5.0
RECOMMENDED_TRAIN_SECONDS = 60.0
FEW_RECORDINGS = 3               # fewer recordings than this: warn that the threshold has not seen other sessions
HELDOUT_FRACTION = 0.2
MIN_HELDOUT_SECONDS = 3.0
MAX_TRAIN_WINDOWS = 6000           # deterministic subsample above this (keeps 10 min under 2 min of training)
REPRESENTATIVE_WINDOWS = 200
CALIBRATION_OVERSAMPLE = 8       # held-out windows scored 8x denser than the daemon's hop
CALIBRATION_FOLDS = 5            # K-fold calibration for methods cheap enough to fit K + 1 times
CROSS_FITTED_METHODS = ("frames", "stats")
FRAMES_OFFSET_PERCENTILE = 5.0   # frames: score offset, percentile of the training windows' own scores
MAX_TRAIN_FRAMES = 40000         # frames: deterministic subsample above this (about 21 min of audio)
STATS_IGNORE_LEVEL = True        # stats: remove each window's overall level from the band means

_SPECS = {
    "frames": FeatureSpec(n_mels=128, frames_per_window=32),
    "stats": FeatureSpec(n_mels=64, frames_per_window=32),
    "oe_cnn": FeatureSpec(n_mels=64, frames_per_window=32),
    "conv_ae": FeatureSpec(n_mels=64, frames_per_window=32),
    "dense_ae": FeatureSpec(n_mels=128, frames_per_window=5),
}
_TRAIN_HOP_FRAMES = {"frames": 8, "stats": 2, "oe_cnn": 4, "conv_ae": 4, "dense_ae": 1}
_DEFAULT_EPOCHS = {"frames": 0, "stats": 0, "oe_cnn": 12, "conv_ae": 30, "dense_ae": 40}

Progress = Callable[[str], None]


class TrainingInputError(ValueError):
    """Unusable training input (no files, unreadable WAV, wrong rate, too little audio). One clear sentence."""


@dataclasses.dataclass
class _Clip:
    path: str
    audio: np.ndarray  # (n,) float32 mono


# ---------------------------------------------------------------- input

def find_wavs(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """WAV files named directly or found (recursively) under directories, sorted per argument."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() == ".wav")
            if not found:
                raise TrainingInputError(f"{p}: no .wav files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise TrainingInputError(f"{p}: no such file or directory")
    return out


def load_clips(paths: Sequence[Path], sample_rate_hz: int, channel: Any = "mean") -> list[_Clip]:
    """Read every WAV as mono float32; TrainingInputError names the first bad file."""
    clips = []
    for p in paths:
        try:
            audio, rate = read_wav(p)
        except WavError as exc:
            raise TrainingInputError(str(exc)) from None
        except OSError as exc:
            raise TrainingInputError(f"{p}: cannot read it ({exc.strerror})") from None
        if int(rate) != int(sample_rate_hz):
            raise TrainingInputError(f"{p}: sampled at {rate} Hz but training needs {sample_rate_hz} Hz; "
                                     f"resample it first (e.g. `sox in.wav -r {sample_rate_hz} out.wav`)")
        try:
            mono = to_mono_float(audio, channel)
        except FeatureError as exc:
            raise TrainingInputError(f"{p}: {exc}") from None
        clips.append(_Clip(str(p), np.ascontiguousarray(mono, dtype=np.float32)))
    return clips


def split_heldout(clips: list[_Clip], fraction: float = HELDOUT_FRACTION,
                  sample_rate_hz: int = 16000) -> tuple[list[_Clip], list[_Clip]]:
    """``(train, heldout)``: every 1/fraction-th file when there are >= 5 files, else the tail of each file
    (``fraction`` of it, at least MIN_HELDOUT_SECONDS but never more than half)."""
    every = max(2, int(round(1.0 / fraction)))
    if len(clips) >= 5:
        held = [c for i, c in enumerate(clips) if i % every == every - 1]
        train = [c for i, c in enumerate(clips) if i % every != every - 1]
        return train, held
    train, held = [], []
    for c in clips:
        held_n = max(fraction * c.audio.size, min(MIN_HELDOUT_SECONDS * sample_rate_hz, 0.5 * c.audio.size))
        cut = int(round(c.audio.size - held_n))
        train.append(_Clip(c.path + f"[0:{cut}]", c.audio[:cut]))
        held.append(_Clip(c.path + f"[{cut}:]", c.audio[cut:]))
    return train, held


def calibration_folds(clips: list[_Clip], n_folds: int,
                      sample_rate_hz: int = 16000) -> list[tuple[list[_Clip], list[_Clip]]]:
    """``[(train, heldout), ...]`` for calibration.

    ``n_folds == 1``: the single split of ``split_heldout``. Otherwise K-fold over recordings: with at
    least ``n_folds`` files, file ``i`` is held out in fold ``i % n_folds``; with 2 to ``n_folds - 1`` files,
    each file is held out in a fold of its own (leave one recording out), so the threshold sees how far
    another recording of the machine moves, as it does with more files. Only one file (or a fold that would
    train on under MIN_TRAIN_SECONDS) falls back to ``n_folds`` contiguous parts of every file, fold ``k``
    holding out part ``k`` of each: the variation inside one recording, all one recording can show.
    """
    if n_folds <= 1:
        return [split_heldout(clips, sample_rate_hz=sample_rate_hz)]
    total = sum(c.audio.size for c in clips)
    if len(clips) >= n_folds:
        parts = [(i % n_folds, c) for i, c in enumerate(clips)]
    elif len(clips) >= 2 and all(total - c.audio.size >= MIN_TRAIN_SECONDS * sample_rate_hz for c in clips):
        n_folds = len(clips)
        parts = list(enumerate(clips))
    else:
        parts = []
        for c in clips:
            edges = np.linspace(0, c.audio.size, n_folds + 1).round().astype(int)
            parts += [(k, _Clip(c.path + f"[{edges[k]}:{edges[k + 1]}]", c.audio[edges[k]:edges[k + 1]]))
                      for k in range(n_folds)]
    return [([c for f, c in parts if f != k], [c for f, c in parts if f == k]) for k in range(n_folds)]


def parse_channel(text: str) -> Any:
    """``mean`` | ``N`` | ``N,M,...`` (averaged) -> the ``channel`` argument of ``to_mono_float``."""
    from edge_monitor.training.datasets import parse_channel as _parse

    try:
        return _parse(text)
    except ValueError as exc:
        raise TrainingInputError(str(exc)) from None


# ---------------------------------------------------------------- features and augmentation

def _fit_norm(feats: list[np.ndarray]) -> tuple[float, float]:
    allf = np.concatenate(feats, axis=0).astype(np.float64)
    return float(allf.mean()), float(max(allf.std(), 1e-3))


def _window_stack(spec: FeatureSpec, feats: list[np.ndarray], hop_frames: int) -> np.ndarray:
    parts = [np.array(windows(spec, f, hop_frames)) for f in feats]
    parts = [p for p in parts if p.shape[0]]
    if not parts:
        return np.zeros((0, spec.frames_per_window, spec.n_features), np.float32)
    return np.concatenate(parts, axis=0).astype(np.float32)


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if x.shape[0] <= limit:
        return x
    return x[np.sort(rng.choice(x.shape[0], limit, replace=False))]


AUGMENTATIONS = ("tone", "hiss", "impulses", "modulation", "tilt")


def augment_db(window_db: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A SYNTHETIC spectral fault applied to a ``(frames, mels)`` dB window (outlier exposure and representative data)."""
    x = np.array(window_db, dtype=np.float64)
    t, f = x.shape
    level = np.median(x, axis=0)

    def add_power(db: np.ndarray, add_db: np.ndarray) -> np.ndarray:
        return 10.0 * np.log10(10.0 ** (db / 10.0) + 10.0 ** (add_db / 10.0))

    if kind == "tone":
        b = int(rng.integers(0, f))
        width = int(rng.integers(1, 3))
        sl = slice(b, min(f, b + width))
        x[:, sl] = add_power(x[:, sl], level[sl] + rng.uniform(0.0, 12.0))
    elif kind == "hiss":
        c = int(rng.integers(f // 4, f - 2))
        add = level[c:].mean() + rng.uniform(-3.0, 8.0) + rng.normal(0, 1.0, (t, f - c))
        x[:, c:] = add_power(x[:, c:], add)
    elif kind == "impulses":
        lo = int(rng.integers(0, f // 2))
        hi = int(rng.integers(lo + f // 4, f + 1))
        for fr in rng.choice(t, int(rng.integers(1, 5)), replace=False):
            x[fr, lo:hi] = add_power(x[fr, lo:hi], level[lo:hi] + rng.uniform(3.0, 18.0))
    elif kind == "modulation":
        period = rng.uniform(2.0, 10.0)
        depth = rng.uniform(1.0, 6.0)
        x += depth * np.sin(2 * np.pi * np.arange(t) / period + rng.uniform(0, 2 * np.pi))[:, None]
    elif kind == "tilt":
        x += rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 10.0) * (np.arange(f) / (f - 1) - 0.5)[None, :]
    else:
        raise ValueError(f"unknown augmentation {kind!r}")
    return x.astype(np.float32)


def _augmented(raw_windows: np.ndarray, per_kind: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(windows_db, class ids 1..)`` with ``per_kind`` random windows per augmentation."""
    xs, ys = [], []
    for ci, kind in enumerate(AUGMENTATIONS, start=1):
        for i in rng.choice(raw_windows.shape[0], per_kind, replace=raw_windows.shape[0] < per_kind):
            xs.append(augment_db(raw_windows[i], kind, rng))
            ys.append(ci)
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.int32)


# ---------------------------------------------------------------- TensorFlow setup

def _setup_tf(seed: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: keep its setting
        _LOGGER.debug("TensorFlow threads already configured")
    tf.keras.utils.set_random_seed(int(seed))


def _epoch_logger(progress: Progress, name: str, epochs: int) -> Any:
    import keras

    class _Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            loss = (logs or {}).get("loss", float("nan"))
            progress(f"  {name} epoch {epoch + 1}/{epochs} loss {loss:.4f}")

    return _Log()


def _copy_to_batch1(model: Any, builder: Callable[..., Any]) -> Any:
    """Rebuild with a fixed batch size of 1 (needed for int8 conversion of upsampling) and copy weights."""
    fixed = builder(batch_size=1)
    fixed.set_weights(model.get_weights())
    return fixed


# ---------------------------------------------------------------- methods

@dataclasses.dataclass
class _Trained:
    export_model: Any
    kind: str
    epochs: int
    final_loss: Optional[float]


def _train_autoencoder(method: str, x: np.ndarray, epochs: int, progress: Progress) -> _Trained:
    import keras

    from edge_monitor.training import models

    frames, nf = x.shape[1:]
    if method == "conv_ae":
        def build(batch_size: Optional[int] = None) -> Any:
            return models.conv_autoencoder(frames, nf, batch_size=batch_size)
        batch = 32
    else:
        def build(batch_size: Optional[int] = None) -> Any:
            return models.dense_autoencoder(frames, nf, batch_size=batch_size)
        batch = 64
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    hist = model.fit(x, x, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                     callbacks=[_epoch_logger(progress, method, epochs)])
    losses = hist.history.get("loss") or [None]
    return _Trained(_copy_to_batch1(model, build), "autoencoder", epochs, losses[-1])


def _train_stats(x: np.ndarray) -> _Trained:
    from edge_monitor.training import models

    frames, nf = x.shape[1:]
    # Remove each window's overall level from its band means: a louder or quieter recording (gain, distance,
    # a moved microphone) is not a fault by itself; the spectral shape and the variability still count.
    level_free = np.eye(2 * nf)
    if STATS_IGNORE_LEVEL:
        level_free[:nf, :nf] -= 1.0 / nf
    pooled = models.mean_std_pool(x) @ level_free
    mean = pooled.mean(axis=0)
    cov = _shrunk_cov(pooled - mean)
    vals, vecs = np.linalg.eigh(cov)
    whiten = vecs / np.sqrt(np.maximum(vals, 1e-9))[None, :]
    weights = level_free @ whiten
    model = models.stats_embedding(frames, nf, weights, -mean @ whiten, batch_size=1)
    return _Trained(model, "embedding", 0, None)


def _train_oe_cnn(x_norm: np.ndarray, x_db: np.ndarray, spec: FeatureSpec, epochs: int, rng: np.random.Generator,
                  progress: Progress) -> _Trained:
    import keras

    from edge_monitor.features import normalise
    from edge_monitor.training import models

    n = x_norm.shape[0]
    aug_db, aug_y = _augmented(x_db, max(32, n // 2), rng)
    x = np.concatenate([x_norm, normalise(spec, aug_db)], axis=0)
    y = np.concatenate([np.zeros(n, np.int32), aug_y])
    weights = np.where(y == 0, 0.5 * len(y) / n, 0.5 * len(y) / max(1, len(aug_y))).astype(np.float32)
    frames, nf = x.shape[1:]
    clf, _ = models.cnn_classifier(frames, nf, 1 + len(AUGMENTATIONS))
    clf.compile(optimizer=keras.optimizers.Adam(2e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = clf.fit(x, y, sample_weight=weights, batch_size=64, epochs=epochs, shuffle=True, verbose=0,
                   callbacks=[_epoch_logger(progress, "oe_cnn", epochs)])
    clf1, _ = models.cnn_classifier(frames, nf, 1 + len(AUGMENTATIONS), batch_size=1)
    clf1.set_weights(clf.get_weights())
    emb1 = keras.Model(clf1.input, clf1.get_layer("embedding").output)
    return _Trained(emb1, "embedding", epochs, (hist.history.get("loss") or [None])[-1])


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf covariance of centred samples ``(n, d)``: ``(cov (d, d), shrinkage in [0, 1])``.

    The sample covariance is shrunk towards ``mu * I`` (``mu`` its mean eigenvalue) by the amount that
    minimises the expected squared error (Ledoit & Wolf 2004), so a few seconds of audio still give a
    well-conditioned, honest covariance of 128 bands.
    """
    x = np.asarray(centred, dtype=np.float64)
    n, d = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    target_dist = float(((sample - mu * np.eye(d)) ** 2).sum()) / d
    sq_norms = (x * x).sum(axis=1)
    spread = float((sq_norms ** 2).sum() - n * (sample ** 2).sum()) / (n * n * d)
    shrink = 1.0 if target_dist <= 0 else float(np.clip(spread / target_dist, 0.0, 1.0))
    return (1.0 - shrink) * sample + shrink * mu * np.eye(d), shrink


def _train_frames(frames_norm: np.ndarray, window_frames: int, rng: np.random.Generator,
                  bank_norm: Optional[np.ndarray] = None) -> _Trained:
    """Whitening of single normalised frames ``(n, f)``, each frame's mean over bands removed first.

    With ``bank_norm`` (other machines' level-free frames, on the same normalised scale) one more output
    column: the log-odds that a frame is another machine's, from a logistic regression of the bank against
    this machine's frames (``outlier_bank.fit_logistic``).
    """
    from edge_monitor.training import models
    from edge_monitor.training.outlier_bank import fit_logistic

    x = _subsample(np.asarray(frames_norm, dtype=np.float64), MAX_TRAIN_FRAMES, rng)
    nf = x.shape[1]
    # Remove each frame's overall level: a gain change or a moved microphone is not a fault by itself.
    level_free = np.eye(nf) - 1.0 / nf
    y = x @ level_free
    mean = y.mean(axis=0)
    cov, _ = ledoit_wolf(y - mean)
    vals, vecs = np.linalg.eigh(cov)
    whiten = vecs / np.sqrt(np.maximum(vals, 1e-9))[None, :]
    weights, bias = level_free @ whiten, -mean @ whiten
    if bank_norm is not None and len(bank_norm):
        sd = y.std(axis=0) + 1e-4
        w, b = fit_logistic((y - mean) / sd, (bank_norm - mean) / sd)
        weights = np.hstack([weights, (level_free @ (w / sd))[:, None]])
        bias = np.append(bias, b - float((mean / sd) @ w))
    model = models.frame_whitener(window_frames, nf, weights, bias, batch_size=1)
    return _Trained(model, "embedding", 0, None)


def _shrunk_cov(centred: np.ndarray) -> np.ndarray:
    """Covariance shrunk towards a scaled identity; more shrinkage when there are few samples per dimension."""
    n, d = centred.shape
    cov = centred.T @ centred / max(1, n - 1)
    alpha = min(0.5, max(0.01, d / max(1, n)))
    return (1 - alpha) * cov + alpha * (np.trace(cov) / d) * np.eye(d)


# ---------------------------------------------------------------- the training run

def _write_bundle(tflite: bytes, meta: dict, path: Path) -> None:
    from edge_monitor.training.export import embed_metadata

    data = embed_metadata(tflite, meta)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclasses.dataclass
class _Fitted:
    """A trained, int8-converted model with everything but its threshold."""

    tflite: bytes
    meta: dict[str, Any]
    spec: FeatureSpec
    trained: _Trained
    train_windows: int


def _fit(method: str, train_clips: list[_Clip], base_spec: FeatureSpec, epochs: int, rng: np.random.Generator,
         say: Progress, bank_db: Optional[np.ndarray] = None) -> _Fitted:
    """Features, normalisation, training, int8 conversion and (embeddings) the normal statistics."""
    from edge_monitor.features import normalise
    from edge_monitor.training.export import convert_int8

    raw_feats = [extract(base_spec, c.audio) for c in train_clips]
    mean, std = _fit_norm(raw_feats)
    spec = dataclasses.replace(base_spec, norm_mean=mean, norm_std=std)
    raw_windows = _subsample(_window_stack(spec, raw_feats, _TRAIN_HOP_FRAMES[method]), MAX_TRAIN_WINDOWS, rng)
    if raw_windows.shape[0] < 8:
        raise TrainingInputError(f"the normal audio gives only {raw_windows.shape[0]} training windows; "
                                 "give longer recordings")
    x = normalise(spec, raw_windows)
    say(f"features: {raw_windows.shape[0]} windows of {spec.frames_per_window} x {spec.n_features}, "
        f"normalisation mean {mean:.2f} dB std {std:.2f} dB")
    say(f"training {method} ({epochs} epochs)")
    if method == "frames":
        frames_all = normalise(spec, np.concatenate(raw_feats, axis=0))
        # the bank is level-free dB: on the normalised scale only the division by the std remains
        bank_norm = None if bank_db is None else bank_db / float(spec.norm_std)
        trained = _train_frames(frames_all, spec.frames_per_window, rng, bank_norm)
    elif method == "stats":
        trained = _train_stats(x)
    elif method == "oe_cnn":
        trained = _train_oe_cnn(x, raw_windows, spec, max(1, epochs), rng, say)
    else:
        trained = _train_autoencoder(method, x, max(1, epochs), say)

    say("converting to int8 TFLite")
    rep_idx = np.sort(rng.choice(x.shape[0], min(REPRESENTATIVE_WINDOWS, x.shape[0]), replace=False))
    rep = [x[i:i + 1] for i in rep_idx]
    if trained.kind == "embedding":  # let the output range cover faults too, so anomalies aren't clipped early
        aug_db, _ = _augmented(raw_windows, 8, rng)
        rep += [normalise(spec, a)[None] for a in aug_db]
    tflite = convert_int8(trained.export_model, rep)
    meta: dict[str, Any] = {
        "name": "calibration",
        "version": "1",
        "kind": trained.kind,
        "feature_spec": spec.to_dict(),
        "input_shape": [1, spec.frames_per_window, spec.n_features],
        "threshold": 1.0,  # placeholder until calibration (a bundle needs a positive threshold)
    }
    if trained.kind == "autoencoder":
        meta["score"] = {"type": "mse"}
    elif method == "frames":
        # The whitening is inside the model: a window's score is the mean length of its whitened frames, less
        # the typical length on the training audio (5th percentile), so that normal sound scores near zero.
        # Without the offset every score sits near sqrt(bands), the clear threshold (0.9 x threshold) would sit
        # below normal sound, and the log-scale tail fit of the calibration would see almost no spread.
        meta["score"] = _frames_score_meta(tflite, meta, raw_windows, x, rng, bank_db is not None)
    else:
        meta["score"] = _mahalanobis_score_meta(tflite, meta, trained, x, rng)
    return _Fitted(tflite, meta, spec, trained, int(x.shape[0]))


def _mahalanobis_score_meta(tflite: bytes, meta: dict, trained: _Trained, x: np.ndarray,
                            rng: np.random.Generator) -> dict[str, Any]:
    """Embedding models: the normal statistics, fitted on the int8 model's own outputs (so the runtime
    scores exactly what was fitted)."""
    from edge_monitor.model import load_model

    d = int(np.prod(trained.export_model.output_shape[1:]))
    placeholder = {"type": "mahalanobis", "mean": [0.0] * d, "precision": np.eye(d).tolist()}
    with tempfile.TemporaryDirectory(prefix="edge-monitor-train-") as tmpd:
        tmp_bundle = Path(tmpd) / "model.tflite"
        _write_bundle(tflite, dict(meta, score=placeholder), tmp_bundle)
        runner = load_model(tmp_bundle)
        fit_idx = np.sort(rng.choice(x.shape[0], min(3000, x.shape[0]), replace=False))
        emb = np.stack([runner.infer(x[i]).reshape(-1) for i in fit_idx]).astype(np.float64)
        runner.close()
    emb_mean = emb.mean(axis=0)
    precision = np.linalg.inv(_shrunk_cov(emb - emb_mean))
    return {"type": "mahalanobis", "mean": emb_mean.tolist(), "precision": precision.tolist()}


def _frames_score_meta(tflite: bytes, meta: dict, raw_windows: np.ndarray, x: np.ndarray,
                       rng: np.random.Generator, with_logit: bool) -> dict[str, Any]:
    """``score`` metadata of a ``frames`` model, fitted on the int8 model's own outputs for training windows.

    Without the bank: the mean whitened-frame length less its 5th percentile. With it, the two parts are
    put on one scale first (each divided by the spread, the interquartile range, of its per-frame values on
    the training audio) and added, so neither dominates by its units alone.
    """
    from edge_monitor.model import load_model

    score: dict[str, Any] = {"type": "frame_norm", "offset": 0.0}
    with tempfile.TemporaryDirectory(prefix="edge-monitor-train-") as tmpd:
        tmp_bundle = Path(tmpd) / "model.tflite"
        _write_bundle(tflite, dict(meta, score=score), tmp_bundle)
        runner = load_model(tmp_bundle)
        fit_idx = np.sort(rng.choice(x.shape[0], min(3000, x.shape[0]), replace=False))
        if with_logit:
            out = np.stack([runner.infer(x[i]) for i in fit_idx]).astype(np.float64)
            out = out.reshape(len(fit_idx), -1, out.shape[-1])
            norms, logits = np.sqrt((out[..., :-1] ** 2).sum(axis=-1)), out[..., -1]
            iqr = lambda v: max(float(np.subtract(*np.percentile(v, [75, 25]))), 1e-6)  # noqa: E731
            score.update(logit_column=int(out.shape[-1] - 1), norm_scale=iqr(norms), logit_scale=iqr(logits))
            inside = norms.mean(axis=1) / score["norm_scale"] + logits.mean(axis=1) / score["logit_scale"]
        else:
            inside = np.array([runner.process(raw_windows[i]) for i in fit_idx])
        runner.close()
    score["offset"] = float(np.percentile(inside, FRAMES_OFFSET_PERCENTILE))
    return score


def _heldout_scores(fitted: _Fitted, clips: list[_Clip], window_hop_seconds: float) -> tuple[list, list]:
    """``(dense, daemon)`` window scores of ``clips`` through the int8 runtime the daemon uses.

    Dense scores are taken CALIBRATION_OVERSAMPLE times more often than the daemon's hop: the same per-window
    score distribution, more samples of its tail. Every k-th dense score is the daemon's own sequence.
    """
    from edge_monitor.model import load_model
    from edge_monitor.scoring import hop_frames_for, window_scores

    with tempfile.TemporaryDirectory(prefix="edge-monitor-train-") as tmpd:
        tmp_bundle = Path(tmpd) / "model.tflite"
        _write_bundle(fitted.tflite, fitted.meta, tmp_bundle)
        runner = load_model(tmp_bundle)
        hop_frames = hop_frames_for(runner, window_hop_seconds)
        dense_hop = max(1, hop_frames // CALIBRATION_OVERSAMPLE)
        stride = max(1, hop_frames // dense_hop)
        dense = [window_scores(runner, c.audio, dense_hop) for c in clips]
        runner.close()
    return dense, [s[::stride] for s in dense]


@dataclasses.dataclass
class _Input:
    """The training audio, read and checked."""

    files: list[Path]
    clips: list[_Clip]
    extra: list[_Clip]      # train-only clips (feedback): in every fold's training part, never held out
    total_s: float


@dataclasses.dataclass
class _Scoring:
    """The shipped model and the out-of-fold scores its threshold is calibrated on."""

    fitted: _Fitted
    folds: list[tuple[list[_Clip], list[_Clip]]]
    train_clips: list[_Clip]
    held_clips: list[_Clip]
    dense_scores: list[np.ndarray]
    held_scores: list[np.ndarray]


def _read_input(normal_paths: Sequence[Union[str, Path]], train_only_paths: Sequence[Union[str, Path]],
                spec: FeatureSpec, channel: Any, say: Progress) -> _Input:
    """Find, read and check the normal audio; warn where it is thin."""
    files = find_wavs(normal_paths)
    if not files:
        raise TrainingInputError("no normal recordings were given")
    clips = load_clips(files, spec.sample_rate, channel)
    extra_files = [f for f in find_wavs(train_only_paths) if f not in files] if train_only_paths else []
    extra = load_clips(extra_files, spec.sample_rate, channel) if extra_files else []
    total_s = sum(c.audio.size for c in clips) / spec.sample_rate
    if total_s < MIN_TRAIN_SECONDS:
        raise TrainingInputError(f"only {total_s:.1f} s of normal audio in {len(files)} file(s); "
                                 f"training needs at least {MIN_TRAIN_SECONDS:.0f} s "
                                 f"(recommended {RECOMMENDED_TRAIN_SECONDS:.0f} s to 10 min)")
    if total_s < RECOMMENDED_TRAIN_SECONDS:
        say(f"warning: only {total_s:.0f} s of normal audio; {RECOMMENDED_TRAIN_SECONDS:.0f} s or more is recommended")
    if len(files) < FEW_RECORDINGS:
        # Measured on 40 real machine IDs (docs/detection.md): trained on 1-2 recordings, the calibrated threshold
        # was exceeded by 22 of 73 other normal recordings of the same machines; with 40 recordings, by none of 35.
        learns = ("how much this one recording varies" if len(files) == 1 else
                  "how far one of these two recordings is from the other")
        say(f"warning: all the normal audio comes from {len(files)} recording(s); the threshold can only learn "
            f"{learns}, and other days, loads or shifts of a healthy machine may alert. "
            "Record the machine in each of its normal states and retrain with those recordings too")
    return _Input(files, clips, extra, total_s)


def _fit_and_score(method: str, data: _Input, base_spec: FeatureSpec, n_epochs: int, rng: np.random.Generator,
                   bank_db: Optional[np.ndarray], window_hop_seconds: float, say: Progress,
                   stages: dict[str, float]) -> _Scoring:
    """Cross-fitted methods: K fold models score their held-out parts, then one model on all the audio.
    The others: one model without the held-out split, which then scores it."""
    cross_fit = method in CROSS_FITTED_METHODS
    folds = [(train + data.extra, held) for train, held in
             calibration_folds(data.clips, CALIBRATION_FOLDS if cross_fit else 1, sample_rate_hz=base_spec.sample_rate)]
    if data.extra:
        say(f"{len(data.extra)} clip(s) given as train-only normal audio (feedback): in every fold's training part")
    if cross_fit:
        say(f"read {len(data.files)} file(s), {data.total_s:.1f} s of audio; {len(folds)}-fold calibration over "
            f"{sum(len(held) for _, held in folds)} part(s)")
    else:
        say(f"read {len(data.files)} file(s), {data.total_s:.1f} s of audio; {len(folds[0][0])} training part(s), "
            f"{len(folds[0][1])} held out for calibration")
    t0 = time.perf_counter()
    if not cross_fit:
        train_clips, held_clips = folds[0]
        fitted = _fit(method, train_clips, base_spec, n_epochs, rng, say, bank_db)
        stages["train_s"] = time.perf_counter() - t0
        dense, held = _heldout_scores(fitted, held_clips, window_hop_seconds)
        return _Scoring(fitted, folds, train_clips, held_clips, dense, held)
    dense_scores: list[np.ndarray] = []
    held_scores: list[np.ndarray] = []
    held_clips = []
    quiet: Progress = lambda _msg: None  # noqa: E731 - fold models would repeat every line
    for i, (fold_train, fold_held) in enumerate(folds, start=1):
        say(f"calibration fold {i}/{len(folds)}: fitting on {len(fold_train)} part(s), scoring {len(fold_held)}")
        fold_model = _fit(method, fold_train, base_spec, n_epochs, rng, quiet, bank_db)
        dense, daemon_seq = _heldout_scores(fold_model, fold_held, window_hop_seconds)
        dense_scores += dense
        held_scores += daemon_seq
        held_clips += fold_held
    stages["cross_fit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_clips = data.clips + data.extra
    fitted = _fit(method, train_clips, base_spec, n_epochs, rng, say, bank_db)
    stages["train_s"] = time.perf_counter() - t0
    return _Scoring(fitted, folds, train_clips, held_clips, dense_scores, held_scores)


def _calibrate(sc: _Scoring, cross_fit: bool, target_per_hour: float, window_hop_seconds: float,
               trigger_k: int, trigger_n: int, say: Progress) -> tuple[float, dict[str, Any]]:
    """The threshold at the target false-alarm rate, and its basis (what the held-out audio showed)."""
    from edge_monitor.training.calibrate import calibrate_threshold, count_alerts

    spec = sc.fitted.spec
    all_held = np.concatenate(sc.dense_scores) if sc.dense_scores else np.zeros(0)
    # the detector's window: the model window plus the hop (at least one hop of audio per score)
    window_seconds = max(spec.window_seconds, window_hop_seconds)
    threshold, basis = calibrate_threshold(all_held, target_alarms_per_hour=target_per_hour,
                                           window_hop_seconds=window_hop_seconds, window_seconds=window_seconds,
                                           k=trigger_k, n=trigger_n, heldout_files=len(sc.held_clips))
    held_seconds = sum(c.audio.size for c in sc.held_clips) / spec.sample_rate
    alerts = sum(count_alerts(s, threshold, k=trigger_k, n=trigger_n, window_hop_seconds=window_hop_seconds)
                 for s in sc.held_scores)
    basis["heldout_seconds"] = held_seconds
    basis["heldout_alerts"] = alerts
    whole = {id(c) for c in sc.train_clips}  # held-out recordings are the input clips themselves; parts are new
    over = "recordings" if all(id(c) in whole for c in sc.held_clips) else "contiguous parts of each recording"
    basis["heldout_scheme"] = (f"{len(sc.folds)}-fold out-of-fold scores over {over} (each scored by a model "
                               "fitted without it); the shipped model is fitted on all the audio" if cross_fit else
                               "one held-out split (every fifth recording, or the last 20% of each when there "
                               "are fewer than 5); the shipped model is fitted without it")
    say(f"threshold {threshold:.4g}: held-out median {basis['heldout_percentiles']['50']:.4g}, "
        f"max {basis['heldout_percentiles']['100']:.4g}; {alerts} alert(s) in {held_seconds:.0f} s of held-out "
        f"normal audio; expected {basis['expected_false_alarms_per_hour'] * 168:.3g} false alarm(s) per week")
    return threshold, basis


def _training_record(method: str, data: _Input, sc: _Scoring, machine_type: str, channel: Any,
                     bank_db: Optional[np.ndarray], seed: int) -> dict[str, Any]:
    """The bundle's ``training`` metadata: what the model was trained on, and how."""
    return {
        "method": method, "files": len(data.files), "train_only_files": len(data.extra), "seconds": data.total_s,
        "train_parts": len(sc.train_clips), "heldout_parts": len(sc.held_clips), "calibration_folds": len(sc.folds),
        "train_windows": sc.fitted.train_windows, "sources": sorted({str(Path(f).parent) for f in data.files}),
        "machine_type": machine_type, "channel": channel if isinstance(channel, (str, int)) else list(channel),
        "epochs": sc.fitted.trained.epochs, "final_loss": sc.fitted.trained.final_loss,
        "outlier_bank_frames": 0 if bank_db is None else int(len(bank_db)), "seed": seed,
    }


def train_unsupervised(normal_paths: Sequence[Union[str, Path]], out_path: Union[str, Path], *,
                       method: str = DEFAULT_METHOD, target_false_alarms_per_hour: float = 1.0 / 168.0,
                       window_hop_seconds: float = 0.5, trigger_k: int = 3, trigger_n: int = 5,
                       seed: int = 0, epochs: Optional[int] = None, channel: Any = "mean",
                       name: Optional[str] = None, machine_type: str = "unknown",
                       outlier_bank: bool = False, outlier_exclude: Sequence[str] = (),
                       train_only_paths: Sequence[Union[str, Path]] = (),
                       progress: Optional[Progress] = None) -> dict[str, Any]:
    """Train, convert to int8, calibrate and write a bundle; returns the training summary dict.

    ``normal_paths``: WAV files and/or directories of normal recordings (16 kHz, any channel count).
    Raises TrainingInputError for unusable input. ``outlier_bank`` (``frames`` only): contrast the machine
    with the shipped bank of other machines' sound, less the machines named in ``outlier_exclude``.
    ``train_only_paths`` (the clips of alerts marked "false alarm", ``train --feedback``): normal sound that
    every model trains on, including each calibration fold's, and that is never held out; held out, a sound
    the machine makes only rarely would still score as anomalous and lift the threshold above real faults.

    Calibration (``frames``, ``stats``: cheap to fit): K-fold over recordings. Each fold's model is fitted
    without that fold's recordings and scores them, so every recording contributes out-of-fold scores that
    include the variation *between* recordings; the shipped model is then fitted on all the audio.
    Gradient-trained methods use one split instead (every fifth recording held out) and ship the model
    fitted without it.
    """
    say: Progress = progress or (lambda msg: _LOGGER.info("%s", msg))
    if method not in METHODS:
        raise TrainingInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    out = Path(out_path)
    if not out.parent.exists():
        raise TrainingInputError(f"{out.parent}: output directory does not exist")
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    base_spec = _SPECS[method]
    data = _read_input(normal_paths, train_only_paths, base_spec, channel, say)
    n_epochs = _DEFAULT_EPOCHS[method] if epochs is None else int(epochs)
    rng = np.random.default_rng(seed)
    _setup_tf(seed)
    bank_db = None
    if method == "frames" and outlier_bank:
        from edge_monitor.training.outlier_bank import load_bank

        bank_db = load_bank(exclude=outlier_exclude)
    stages["read_s"] = time.perf_counter() - t_start
    sc = _fit_and_score(method, data, base_spec, n_epochs, rng, bank_db, window_hop_seconds, say, stages)
    t0 = time.perf_counter()
    threshold, basis = _calibrate(sc, method in CROSS_FITTED_METHODS, target_false_alarms_per_hour,
                                  window_hop_seconds, trigger_k, trigger_n, say)
    stages["calibrate_s"] = time.perf_counter() - t0
    training = _training_record(method, data, sc, machine_type, channel, bank_db, seed)
    meta = dict(sc.fitted.meta, name=name or out.stem, threshold=float(threshold), threshold_basis=basis,
                training=training)
    _write_bundle(sc.fitted.tflite, meta, out)
    stages["total_s"] = time.perf_counter() - t_start
    training["timings"] = stages
    say(f"wrote {out} ({out.stat().st_size // 1024} KiB) in {stages['total_s']:.1f} s")
    return {"out": str(out), "threshold": float(threshold), "threshold_basis": basis, **training,
            "heldout_window_scores": [s.tolist() for s in sc.held_scores]}


# ---------------------------------------------------------------- CLI

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edge-monitor train``."""
    parser.add_argument("--normal", action="append", required=True, metavar="DIR",
                        help="folder (searched recursively) or WAV file of NORMAL recordings; repeatable")
    parser.add_argument("--out", required=True, metavar="M.tflite", help="model bundle to write")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"detector type (default {DEFAULT_METHOD}; see docs/detection.md)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--false-alarms-per-week", type=float, metavar="N",
                      help="target false alarms per week for the default threshold (default 1)")
    rate.add_argument("--false-alarms-per-day", type=float, metavar="N", help="target false alarms per day")
    rate.add_argument("--false-alarms-per-hour", type=float, metavar="N", help="target false alarms per hour")
    parser.add_argument("--window-hop-seconds", type=float, default=0.5,
                        help="time between scored windows in the daemon (seconds, default 0.5)")
    parser.add_argument("--trigger-k", type=int, default=3, help="anomalous windows needed (default 3) ...")
    parser.add_argument("--trigger-n", type=int, default=5, help="... among this many (default 5)")
    parser.add_argument("--channel", default="mean",
                        help="multi-channel files: 'mean' (default), a channel index, or indices '0,1' to average")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per method)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed and data give the same model)")
    parser.add_argument("--name", default=None, help="model name stored in the bundle (default: file stem)")
    parser.add_argument("--machine-type", default="unknown", help="machine type stored in the training summary")
    parser.add_argument("--outlier-bank", action="store_true",
                        help="frames: also contrast the machine with the shipped sounds of other real machines "
                             "(see docs/detection.md for what it does and does not gain)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run_train(args: argparse.Namespace) -> int:
    """Run ``edge-monitor train``: 0 ok, 2 bad input (one sentence on stderr), 1 failure."""
    from edge_monitor.training.calibrate import CalibrationError, alarms_per_hour

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        if args.false_alarms_per_hour is not None:
            target = alarms_per_hour(args.false_alarms_per_hour, "hour")
        elif args.false_alarms_per_day is not None:
            target = alarms_per_hour(args.false_alarms_per_day, "day")
        else:
            target = alarms_per_hour(1.0 if args.false_alarms_per_week is None else args.false_alarms_per_week, "week")
        if not 1 <= args.trigger_k <= args.trigger_n:
            raise TrainingInputError(f"need 1 <= --trigger-k <= --trigger-n, got {args.trigger_k} and {args.trigger_n}")
        if not args.window_hop_seconds > 0:
            raise TrainingInputError(f"--window-hop-seconds must be positive, got {args.window_hop_seconds}")
        if args.epochs is not None and args.epochs < 1:
            raise TrainingInputError(f"--epochs must be at least 1, got {args.epochs}")
        summary = train_unsupervised(
            args.normal, args.out, method=args.method, target_false_alarms_per_hour=target,
            window_hop_seconds=args.window_hop_seconds, trigger_k=args.trigger_k, trigger_n=args.trigger_n,
            seed=args.seed, epochs=args.epochs, channel=parse_channel(args.channel), name=args.name,
            machine_type=args.machine_type, outlier_bank=args.outlier_bank,
            train_only_paths=getattr(args, "feedback_clips", None) or (), progress=progress)
    except (TrainingInputError, CalibrationError) as exc:
        print(f"edge-monitor train: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a failure must end with a message, not a traceback
        _LOGGER.debug("training failed", exc_info=True)
        print(f"edge-monitor train: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    progress(f"threshold {summary['threshold']:.4g} ({summary['method']}), model {summary['out']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point (``python -m edge_monitor.training.unsupervised``)."""
    parser = argparse.ArgumentParser(prog="edge-monitor train", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

