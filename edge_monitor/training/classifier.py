"""Supervised sound classifiers: ``edge-monitor train-classifier --data DIR --out M.tflite``.

A dataset is a folder whose sub-folder names are the labels::

    DIR/normal/*.wav       DIR/fan/**/*.wav
    DIR/abnormal/*.wav     DIR/pump/**/*.wav      (WAVs anywhere below a label folder)

The model is a small CNN on log-mel windows (the default ``FeatureSpec``: 32
frames x 64 mels, about 1 s). It is trained per window; a file's label is the
arg-max of its windows' mean probabilities. The bundle is an int8 ``.tflite``
of kind ``classifier`` whose score is the summed probability of its alert
labels, compared with an alert-probability threshold (default 0.5).

Two purposes:

* ``detect`` (a ``normal`` label exists, or ``--alert-labels`` names the labels
  that mean trouble): the score is the alert probability and the daemon can use
  the bundle directly.
* ``identify`` (``--alert-labels none``, e.g. a machine-type model): the bundle
  only says which label a sound is. Every label is listed as an alert label
  (bundle metadata requires a non-empty set) and the threshold is 2.0, above the
  largest possible score, so it never alerts. Use :func:`classify_file`.

Files below a folder that contains a ``SYNTHETIC.txt`` marker count as
synthetic; all others as real. Cross-validation reports both separately.

TensorFlow is imported only inside the training functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from edge_monitor.features import FeatureError, FeatureSpec, extract, windows
from edge_monitor.scoring import ScoringError, load_mono
from edge_monitor.training.datasets import channel_arg

_LOGGER = logging.getLogger(__name__)

NORMAL_LABEL = "normal"
DEFAULT_THRESHOLD = 0.5
"""Alert-probability threshold: a window alerts when its alert labels' summed probability exceeds it."""
IDENTIFY_THRESHOLD = 2.0
"""Threshold of ``identify`` bundles: above any possible probability, so they never alert."""
DEFAULT_EPOCHS = 20
DEFAULT_TRAIN_HOP_SECONDS = 0.25
"""Hop between training windows (seconds); windows overlap, which multiplies the training examples."""
GAIN_AUGMENT_DB = 6.0
"""Training windows get a random level offset of up to this many dB, so the model tolerates microphone gain."""
SYNTHETIC_MARKER = "SYNTHETIC.txt"
_BATCH = 64


class ClassifierDataError(ValueError):
    """The dataset or options can't be used to train a classifier. One sentence that names the problem."""


@dataclasses.dataclass(frozen=True)
class LabelledFile:
    """One recording of a classifier dataset."""

    path: Path
    label: str
    synthetic: bool


@dataclasses.dataclass
class WindowSet:
    """Feature windows of a list of files: ``x`` (n, frames, n_mels) float32 raw dB, ``y`` label index, ``file`` index."""

    x: np.ndarray
    y: np.ndarray
    file: np.ndarray


@dataclasses.dataclass
class CrossValidation:
    """File-level K-fold results (float Keras models, files grouped so no file is in two folds)."""

    folds: int
    labels: list[str]
    accuracy: float
    confusion: list[list[int]]                 # rows: true label, columns: predicted label
    by_source: dict[str, dict[str, Any]]       # "real"/"synthetic" -> {"files", "accuracy", "confusion"}
    predictions: list[dict[str, Any]]          # {"file", "label", "predicted", "synthetic"}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (stored in the bundle's ``training.cross_validation``)."""
        return {"folds": self.folds, "labels": self.labels, "accuracy": self.accuracy,
                "confusion": self.confusion, "by_source": self.by_source}


@dataclasses.dataclass
class ClassifierResult:
    """What :func:`train_classifier` produced."""

    out_path: Path
    meta: dict[str, Any]
    cross_validation: Optional[CrossValidation]
    size_bytes: int


# ---------------------------------------------------------------- dataset

def find_labelled_files(data_dir: Union[str, Path]) -> list[LabelledFile]:
    """Every WAV below ``data_dir/<label>/`` (recursively), sorted; ClassifierDataError for an unusable layout."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ClassifierDataError(f"data folder {root} does not exist or is not a folder")
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[LabelledFile] = []
    empty = []
    for d in label_dirs:
        wavs = sorted(p for p in d.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
        if not wavs:
            empty.append(d.name)
            continue
        for w in wavs:
            files.append(LabelledFile(w, d.name, _is_synthetic(w, root)))
    labels = sorted({f.label for f in files})
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "none"
        raise ClassifierDataError(
            f"data folder {root} needs at least two label sub-folders containing WAV files "
            f"(e.g. {root}/normal/ and {root}/abnormal/), found {found}")
    if empty:
        _LOGGER.warning("ignoring label folders without WAV files: %s", ", ".join(empty))
    return files


def _is_synthetic(path: Path, root: Path) -> bool:
    for parent in path.parents:
        if (parent / SYNTHETIC_MARKER).is_file():
            return True
        if parent == root:
            break
    return False


def resolve_alert_labels(labels: Sequence[str], requested: Optional[str]) -> tuple[list[str], str]:
    """``(alert_labels, purpose)`` from the ``--alert-labels`` value (None: default). ClassifierDataError if unusable."""
    labels = list(labels)
    if requested is None or requested.strip() == "":
        if NORMAL_LABEL not in labels:
            raise ClassifierDataError(
                f"the labels {', '.join(labels)} include no 'normal' folder, so say which labels mean an alert "
                "with --alert-labels LABEL[,LABEL...], or pass --alert-labels none for a model that only "
                "identifies (such as a machine-type model)")
        return [lb for lb in labels if lb != NORMAL_LABEL], "detect"
    if requested.strip().lower() == "none":
        return labels, "identify"
    wanted = [a.strip() for a in requested.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in labels]
    if unknown:
        raise ClassifierDataError(f"--alert-labels names {', '.join(unknown)}, which is not among the dataset's "
                                  f"labels ({', '.join(labels)})")
    if set(wanted) == set(labels):
        raise ClassifierDataError("--alert-labels lists every label, so every sound would alert; "
                                  "leave at least one label out, or use --alert-labels none")
    return [lb for lb in labels if lb in wanted], "detect"


def load_windows(files: Sequence[LabelledFile], labels: Sequence[str], spec: FeatureSpec, *,
                 channel: Any = "mean", hop_frames: int = 8,
                 progress: Optional[Callable[[str], None]] = None) -> WindowSet:
    """Raw (un-normalised) feature windows of every file; ClassifierDataError names the first unusable file."""
    xs, ys, fs = [], [], []
    index = {lb: i for i, lb in enumerate(labels)}
    for i, f in enumerate(files):
        try:
            audio = load_mono(f.path, spec.sample_rate, channel)
        except ScoringError as exc:
            raise ClassifierDataError(str(exc)) from None
        try:
            w = windows(spec, extract(spec, audio), hop_frames)
        except FeatureError as exc:
            raise ClassifierDataError(f"{f.path}: {exc}") from None
        if len(w) == 0:
            raise ClassifierDataError(f"{f.path}: too short ({audio.size / spec.sample_rate:.2f} s); a window "
                                      f"needs {spec.window_seconds:.2f} s")
        xs.append(np.array(w, dtype=np.float32))
        ys.append(np.full(len(w), index[f.label], dtype=np.int32))
        fs.append(np.full(len(w), i, dtype=np.int32))
        if progress and (i + 1) % 50 == 0:
            progress(f"features: {i + 1}/{len(files)} files")
    return WindowSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(fs))


# ---------------------------------------------------------------- model

def build_model(frames: int, n_features: int, n_labels: int, seed: int = 0) -> Any:
    """The Keras CNN: 4 conv blocks (8-16-32-32 filters), global average pooling, softmax. About 15k weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((frames, n_features, 1), name="logmel")
    x = inp
    for filters in (8, 16, 32):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(n_labels, activation="softmax", name="probabilities")(x)
    model = keras.Model(inp, out, name="edge_monitor_classifier")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _sample_weights(ws: WindowSet, files: Sequence[LabelledFile], n_labels: int, real_weight: float) -> np.ndarray:
    """Balance labels (each label's windows weigh the same in total) and up-weight real recordings."""
    counts = np.bincount(ws.y, minlength=n_labels).astype(np.float64)
    w = (len(ws.y) / (n_labels * np.maximum(counts, 1.0)))[ws.y]
    real = np.array([not files[i].synthetic for i in ws.file])
    w = w * np.where(real, real_weight, 1.0)
    return (w / w.mean()).astype(np.float32)


def _fit(ws: WindowSet, files: Sequence[LabelledFile], n_labels: int, spec: FeatureSpec, *, epochs: int,
         seed: int, real_weight: float, progress: Optional[Callable[[str], None]], what: str) -> Any:
    """Train a fresh model on normalised windows with per-epoch random gain offsets."""
    model = build_model(spec.frames_per_window, spec.n_features, n_labels, seed)
    rng = np.random.default_rng(seed)
    weights = _sample_weights(ws, files, n_labels, real_weight)
    inv_std = np.float32(1.0 / spec.norm_std)
    base = (ws.x - np.float32(spec.norm_mean)) * inv_std
    batch = int(np.clip(len(base) // 30, 8, _BATCH))  # small datasets still get ~30 steps per epoch
    for epoch in range(epochs):
        offset_db = rng.uniform(-GAIN_AUGMENT_DB, GAIN_AUGMENT_DB, size=len(base)).astype(np.float32)
        x = base + (offset_db * inv_std)[:, None, None]
        hist = model.fit(x[..., None], ws.y, sample_weight=weights, batch_size=batch, epochs=1, shuffle=True,
                         verbose=0)
        if progress and (epoch + 1 == epochs or (epoch + 1) % 5 == 0):
            progress(f"{what}: epoch {epoch + 1}/{epochs} loss {hist.history['loss'][-1]:.3f} "
                     f"accuracy {hist.history['accuracy'][-1]:.3f}")
    return model


def _file_predictions(probs: np.ndarray, file_idx: np.ndarray, n_files: int) -> dict[int, np.ndarray]:
    """Mean window probabilities per file index present in ``file_idx``."""
    out = {}
    for i in np.unique(file_idx):
        out[int(i)] = probs[file_idx == i].mean(axis=0)
    return out


def confusion_matrix(true_idx: Sequence[int], pred_idx: Sequence[int], n_labels: int) -> list[list[int]]:
    """Counts with rows = true label, columns = predicted label."""
    m = np.zeros((n_labels, n_labels), dtype=np.int64)
    for t, p in zip(true_idx, pred_idx):
        m[int(t), int(p)] += 1
    return m.tolist()


def format_confusion(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """A plain-text confusion matrix (rows: true, columns: predicted)."""
    width = max(8, *(len(lb) + 1 for lb in labels))
    head = "true \\ predicted".ljust(width + 8) + "".join(lb.rjust(width) for lb in labels)
    rows = [head] + [lb.ljust(width + 8) + "".join(str(v).rjust(width) for v in row)
                     for lb, row in zip(labels, matrix)]
    return "\n".join(rows)


def cross_validate(files: Sequence[LabelledFile], ws: WindowSet, labels: Sequence[str], spec: FeatureSpec, *,
                   folds: int, epochs: int, seed: int, real_weight: float = 3.0,
                   progress: Optional[Callable[[str], None]] = None) -> CrossValidation:
    """Stratified, file-grouped K-fold cross-validation; each file is predicted by a model that never saw it."""
    n_labels = len(labels)
    rng = np.random.default_rng(seed + 7919)
    fold_of = np.zeros(len(files), dtype=np.int32)
    # Stratify by (label, source) so real clips of each label spread over the folds.
    for key in sorted({(f.label, f.synthetic) for f in files}):
        idx = np.array([i for i, f in enumerate(files) if (f.label, f.synthetic) == key])
        rng.shuffle(idx)
        start = int(rng.integers(folds))
        fold_of[idx] = (start + np.arange(len(idx))) % folds
    predicted: dict[int, int] = {}
    for k in range(folds):
        train_mask = fold_of[ws.file] != k
        test_mask = ~train_mask
        if not test_mask.any():
            continue
        sub = WindowSet(ws.x[train_mask], ws.y[train_mask], ws.file[train_mask])
        model = _fit(sub, files, n_labels, spec, epochs=epochs, seed=seed + k, real_weight=real_weight,
                     progress=progress, what=f"cross-validation fold {k + 1}/{folds}")
        x = (ws.x[test_mask] - np.float32(spec.norm_mean)) * np.float32(1.0 / spec.norm_std)
        probs = model.predict(x[..., None], batch_size=256, verbose=0)
        for i, p in _file_predictions(probs, ws.file[test_mask], len(files)).items():
            predicted[i] = int(np.argmax(p))
    true_idx: list[int] = [labels.index(files[i].label) for i in sorted(predicted)]
    pred_idx: list[int] = [int(predicted[i]) for i in sorted(predicted)]
    by_source: dict[str, dict[str, Any]] = {}
    for name, synthetic in (("real", False), ("synthetic", True)):
        sel = [j for j, i in enumerate(sorted(predicted)) if files[i].synthetic == synthetic]
        if sel:
            t = [true_idx[j] for j in sel]
            guess = [pred_idx[j] for j in sel]
            by_source[name] = {"files": len(sel), "accuracy": float(np.mean(np.equal(t, guess))),
                               "confusion": confusion_matrix(t, guess, n_labels)}
    predictions = [{"file": str(files[i].path), "label": files[i].label, "predicted": labels[predicted[i]],
                    "synthetic": files[i].synthetic} for i in sorted(predicted)]
    return CrossValidation(folds=folds, labels=list(labels), accuracy=float(np.mean(np.equal(true_idx, pred_idx))),
                           confusion=confusion_matrix(true_idx, pred_idx, n_labels), by_source=by_source,
                           predictions=predictions)


# ---------------------------------------------------------------- training API

def _check_options(epochs: int, cv: int, threshold: float) -> None:
    if epochs < 1:
        raise ClassifierDataError(f"--epochs must be at least 1, got {epochs}")
    if cv == 1 or cv < 0:
        raise ClassifierDataError(f"--cv must be 0 (off) or at least 2 folds, got {cv}")
    if not 0.0 < threshold < 1.0:
        raise ClassifierDataError(f"--threshold is an alert probability and must be between 0 and 1, got {threshold}")


def _cross_validation(files: list[LabelledFile], ws: WindowSet, labels: list[str], spec: FeatureSpec,
                      counts: dict[str, int], cv: int, epochs: int, seed: int, real_weight: float,
                      say: Callable[[str], None]) -> CrossValidation:
    """K-fold cross-validation by file, reported as it goes (accuracy and confusion, also per source)."""
    min_files = min(counts.values())
    if min_files < cv:
        say(f"note: label with only {min_files} file(s) for {cv} folds; some folds will lack it")
    result = cross_validate(files, ws, labels, spec, folds=cv, epochs=epochs, seed=seed,
                            real_weight=real_weight, progress=say)
    say(f"cross-validated file accuracy ({cv} folds): {result.accuracy:.3f}")
    say(format_confusion(labels, result.confusion))
    for src, r in result.by_source.items():
        say(f"  {src} files ({r['files']}): accuracy {r['accuracy']:.3f}")
        say(format_confusion(labels, r["confusion"]))
    return result


def _representative(ws: WindowSet, spec: FeatureSpec, seed: int) -> list[np.ndarray]:
    """Up to 300 normalised training windows for the int8 conversion, chosen by the seed."""
    pick = np.random.default_rng(seed).choice(len(ws.y), size=min(300, len(ws.y)), replace=False)
    norm = (ws.x[pick] - np.float32(spec.norm_mean)) * np.float32(1.0 / spec.norm_std)
    return [w[None, :, :, None] for w in norm]


def _training_record(files: list[LabelledFile], ws: WindowSet, counts: dict[str, int], data_dir: Union[str, Path],
                     epochs: int, seed: int, channel: Any, train_hop_seconds: float,
                     cv_result: Optional[CrossValidation], extra: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The bundle's ``training`` metadata."""
    n_real = sum(1 for f in files if not f.synthetic)
    training: dict[str, Any] = {
        "files": len(files), "seconds": round(float(sum(_durations_seconds(files))), 1), "labels": counts,
        "real_files": n_real, "synthetic_files": len(files) - n_real, "windows": int(len(ws.y)),
        "epochs": epochs, "seed": seed, "channel": channel if isinstance(channel, (str, int)) else list(channel),
        "train_hop_seconds": train_hop_seconds, "gain_augment_db": GAIN_AUGMENT_DB,
        "file_label_rule": "arg-max of the mean window probabilities",
        "data_dir": str(data_dir),
    }
    if cv_result is not None:
        training["cross_validation"] = cv_result.to_json()
    if extra:
        training.update(extra)
    return training


def train_classifier(data_dir: Union[str, Path], out_path: Union[str, Path], *,
                     alert_labels: Optional[str] = None, channel: Any = "mean", epochs: int = DEFAULT_EPOCHS,
                     seed: int = 0, cv: int = 0, threshold: float = DEFAULT_THRESHOLD,
                     name: Optional[str] = None, version: str = "1", spec: Optional[FeatureSpec] = None,
                     train_hop_seconds: float = DEFAULT_TRAIN_HOP_SECONDS, real_weight: float = 3.0,
                     description: Optional[str] = None, extra_training: Optional[dict[str, Any]] = None,
                     progress: Optional[Callable[[str], None]] = None) -> ClassifierResult:
    """Train a classifier on ``data_dir/<label>/*.wav`` and write the int8 bundle to ``out_path``.

    ``alert_labels`` is the ``--alert-labels`` string: None (every label but
    ``normal``), ``"none"`` (identify only), or a comma-separated list. ``cv`` > 1
    runs K-fold cross-validation first and stores it in ``training.cross_validation``.
    Raises ClassifierDataError for unusable data or options.
    """
    from edge_monitor.bundle import load_metadata
    from edge_monitor.training.export import export_bundle

    say = progress or _LOGGER.info
    started = time.monotonic()
    _check_options(epochs, cv, threshold)
    files = find_labelled_files(data_dir)
    labels = sorted({f.label for f in files})
    alerts, purpose = resolve_alert_labels(labels, alert_labels)
    base_spec = spec or FeatureSpec()
    hop_frames = max(1, int(round(train_hop_seconds / base_spec.hop_seconds)))
    counts = {lb: sum(1 for f in files if f.label == lb) for lb in labels}
    say(f"dataset {data_dir}: {len(files)} files; " + ", ".join(f"{lb} {n}" for lb, n in counts.items()))
    ws = load_windows(files, labels, base_spec, channel=channel, hop_frames=hop_frames, progress=say)
    mean, std = float(ws.x.mean()), float(ws.x.std())
    spec = dataclasses.replace(base_spec, norm_mean=round(mean, 4), norm_std=round(max(std, 1e-3), 4))
    say(f"{len(ws.y)} training windows of {spec.frames_per_window} frames x {spec.n_features} features")

    cv_result = _cross_validation(files, ws, labels, spec, counts, cv, epochs, seed, real_weight, say) \
        if cv > 1 else None
    model = _fit(ws, files, len(labels), spec, epochs=epochs, seed=seed, real_weight=real_weight,
                 progress=say, what="final model")
    thr = float(threshold) if purpose == "detect" else IDENTIFY_THRESHOLD
    training = _training_record(files, ws, counts, data_dir, epochs, seed, channel, train_hop_seconds, cv_result,
                                extra_training)
    meta: dict[str, Any] = {
        "name": name or Path(out_path).stem, "version": str(version), "kind": "classifier", "purpose": purpose,
        "feature_spec": spec.to_dict(), "input_shape": [1, spec.frames_per_window, spec.n_features, 1],
        "score": {"type": "alert_probability"}, "labels": labels, "alert_labels": alerts, "threshold": thr,
        "training": training, **({"description": description} if description else {}),
    }

    def calibrate(tflite: bytes) -> dict[str, Any]:
        return {"threshold_basis": _threshold_basis(tflite, ws, files, labels, alerts, purpose, thr, spec,
                                                    cv_result)}

    bundle = export_bundle(model, _representative(ws, spec, seed), meta, calibrate=calibrate)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(bundle)
    tmp.replace(out)
    final_meta, _ = load_metadata(out)
    say(f"wrote {out} ({len(bundle) / 1024:.1f} KiB) in {time.monotonic() - started:.0f} s; labels "
        f"{', '.join(labels)}; alert labels {', '.join(alerts) if purpose == 'detect' else '(none: identify only)'}")
    return ClassifierResult(out, final_meta, cv_result, len(bundle))


def _durations_seconds(files: Sequence[LabelledFile]) -> list[float]:
    from edge_monitor.wavio import read_wav_info

    out = []
    for f in files:
        rate, _, frames = read_wav_info(f.path)
        out.append(frames / rate)
    return out


def _threshold_basis(tflite: bytes, ws: WindowSet, files: Sequence[LabelledFile], labels: Sequence[str],
                     alerts: Sequence[str], purpose: str, threshold: float, spec: FeatureSpec,
                     cv_result: Optional[CrossValidation]) -> dict[str, Any]:
    """How the threshold was chosen, and the int8 model's training-set behaviour (window alert rates)."""
    probs = _int8_probabilities(tflite, ws.x, spec)
    pred = probs.argmax(axis=1)
    basis: dict[str, Any] = {"method": "alert_probability", "value": threshold,
                             "int8_training_window_accuracy": round(float(np.mean(pred == ws.y)), 4)}
    if purpose == "identify":
        basis["method"] = "identify_only"
        basis["note"] = ("identification model: the score is the total probability (about 1) and the threshold is "
                         "above it, so it never alerts; use the label with the highest probability")
        return basis
    alert_idx = [labels.index(a) for a in alerts]
    score = probs[:, alert_idx].sum(axis=1)
    normal_mask = ~np.isin(ws.y, alert_idx)
    if normal_mask.any():
        basis["false_alarm_rate"] = round(float(np.mean(score[normal_mask] > threshold)), 4)
        basis["normal_windows"] = int(normal_mask.sum())
    if (~normal_mask).any():
        basis["training_window_recall"] = round(float(np.mean(score[~normal_mask] > threshold)), 4)
    basis["note"] = ("a window alerts when the summed probability of the alert labels exceeds the threshold; "
                     "false_alarm_rate is measured on the training normals' windows with the int8 model")
    if cv_result is not None:
        basis["cross_validated_file_accuracy"] = round(cv_result.accuracy, 4)
    return basis


def _int8_probabilities(tflite: bytes, x_raw: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Label probabilities ``(n, labels)`` of raw windows through the int8 flatbuffer (batch of 1 at a time)."""
    from edge_monitor.model import interpreter_class

    cls, _ = interpreter_class()
    interp = cls(model_content=tflite, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    norm = (x_raw - np.float32(spec.norm_mean)) * np.float32(1.0 / spec.norm_std)
    q = np.clip(np.rint(norm / np.float32(in_scale)) + in_zero, -128, 127).astype(np.int8)
    res = np.empty((len(q), int(np.prod(out["shape"]))), dtype=np.float32)
    for i in range(len(q)):
        interp.set_tensor(inp["index"], q[i].reshape(inp["shape"]))
        interp.invoke()
        res[i] = (interp.get_tensor(out["index"]).reshape(-1).astype(np.float32) - out_zero) * out_scale
    return res


# ---------------------------------------------------------------- using a classifier

def classify_file(runner: Any, path: Union[str, Path], *, channel: Any = "mean",
                  window_hop_seconds: float = 0.5) -> tuple[str, dict[str, float]]:
    """``(label, {label: mean window probability})`` of one WAV for a classifier ``ModelRunner``."""
    from edge_monitor.scoring import hop_frames_for

    spec = runner.bundle.spec
    audio = load_mono(path, spec.sample_rate, channel)
    ws = windows(spec, extract(spec, audio), hop_frames_for(runner, window_hop_seconds))
    if len(ws) == 0:
        raise ScoringError(f"{path}: too short to classify ({audio.size / spec.sample_rate:.2f} s; "
                           f"a window needs {spec.window_seconds:.2f} s)")
    probs = np.mean([runner.probabilities(w) for w in ws], axis=0)
    labels = runner.bundle.labels
    return labels[int(np.argmax(probs))], {lb: float(p) for lb, p in zip(labels, probs)}


# ---------------------------------------------------------------- CLI



def add_train_classifier_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edge-monitor train-classifier``."""
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="dataset folder; each sub-folder is a label (normal/abnormal, fault types, machine types) "
                             "holding WAV files at any depth")
    parser.add_argument("--out", required=True, metavar="M.tflite", help="where to write the int8 model bundle")
    parser.add_argument("--alert-labels", default=None, metavar="A,B",
                        help="labels that mean an alert (default: every label except 'normal'); "
                             "'none' makes an identify-only model that never alerts (e.g. machine type)")
    parser.add_argument("--channel", type=channel_arg, default="mean",
                        help="channel of multi-channel WAVs to use: an index, or 'mean' (default) to average them")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cv", type=int, default=0, metavar="K",
                        help="also run K-fold cross-validation (files grouped) and store accuracy and confusion "
                             "matrix in the bundle (default: off)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"alert-probability threshold (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--name", default=None, help="model name stored in the bundle (default: output file stem)")
    parser.add_argument("--model-version", default="1", help="model version stored in the bundle (default 1)")


def run_train_classifier(args: argparse.Namespace) -> int:
    """Run ``train-classifier``: 0 ok, 2 bad data or options (one sentence on stderr), 1 failure."""
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        train_classifier(args.data, args.out, alert_labels=args.alert_labels, channel=args.channel,
                         epochs=args.epochs, seed=args.seed, cv=args.cv, threshold=args.threshold,
                         name=args.name, version=getattr(args, "model_version", "1"), progress=say)
    except ClassifierDataError as exc:
        say(f"error: {exc}")
        return 2
    except ImportError as exc:
        say(f"error: training needs TensorFlow: pip install 'edge-monitor[train]' ({exc})")
        return 1
    except OSError as exc:
        say(f"error: cannot write {args.out}: {exc.strerror or exc}")
        return 1
    return 0


__all__ = ["train_classifier", "classify_file", "find_labelled_files", "resolve_alert_labels", "cross_validate",
           "add_train_classifier_arguments", "run_train_classifier", "ClassifierDataError", "ClassifierResult",
           "CrossValidation", "format_confusion", "confusion_matrix", "DEFAULT_THRESHOLD", "IDENTIFY_THRESHOLD"]
