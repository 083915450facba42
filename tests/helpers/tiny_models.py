"""Tiny int8 model bundles for tests, exported once per test session with the real exporter.

The models are untrained or barely trained Keras networks: they exist to exercise
loading, int8 quantisation, scoring and the pipeline, not to detect anything.
Their representative data and normalisation come from SYNTHETIC fan audio
(``edge_monitor.training.synthetic``).

Use them through the session fixtures::

    from tests.helpers.tiny_models import tiny_autoencoder, tiny_classifier  # noqa: F401

Each fixture needs TensorFlow and skips the test when it is not installed. The
exported files are cached per session, so importing the fixtures into several
test modules exports each model only once.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from edge_monitor.features import FeatureSpec, extract, windows

TINY_SPEC = FeatureSpec(n_mels=32, frames_per_window=16)
"""16 kHz, 1024-point FFT, 512-sample hop, 32 mel bands, 16 frames (0.54 s) per window."""

TINY_THRESHOLD = 0.5
"""The threshold written into the tiny bundles' metadata (arbitrary: the models are untrained)."""

CLASSIFIER_LABELS = ("normal", "bearing", "leak")
"""Output order of the tiny classifier; ``bearing`` and ``leak`` are its alert labels."""

_CACHE: dict[str, TinyModel] = {}
_LOCK = threading.Lock()


def synthetic_windows(spec: FeatureSpec, seconds: float = 6.0, seed: int = 3) -> np.ndarray:
    """Raw feature windows ``(n, frames, n_features)`` of a SYNTHETIC fan clip."""
    from edge_monitor.training.synthetic import generate

    audio = generate("fan", seconds, spec.sample_rate, seed=seed)
    return np.array(windows(spec, extract(spec, audio), 4))


def normalised_spec(spec: FeatureSpec, raw: np.ndarray) -> FeatureSpec:
    """``spec`` with norm_mean/norm_std fitted to raw windows (rounded so the JSON stays short)."""
    return dataclasses.replace(spec, norm_mean=round(float(raw.mean()), 3), norm_std=round(float(raw.std()), 3))


def build_autoencoder(spec: FeatureSpec, seed: int = 0) -> Any:
    """A two-layer convolutional autoencoder, input and output ``(1, frames, n_features, 1)``."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((spec.frames_per_window, spec.n_features, 1), batch_size=1)
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = layers.Conv2D(1, 3, padding="same")(x)
    return keras.Model(inp, out)


def build_classifier(spec: FeatureSpec, n_labels: int, seed: int = 0) -> Any:
    """A one-conv classifier with a softmax output ``(1, n_labels)``."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((spec.frames_per_window, spec.n_features, 1), batch_size=1)
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(n_labels, activation="softmax")(x)
    return keras.Model(inp, out)


def export_tiny(kind: str, out_path: Path, spec: FeatureSpec = TINY_SPEC, *, seed: int = 0,
                meta_overrides: Optional[dict] = None) -> tuple[Path, Any, FeatureSpec, np.ndarray]:
    """Build and export a tiny ``autoencoder`` or ``classifier`` bundle.

    Returns ``(path, keras model, normalised spec, normalised windows (n, frames, n_features))``.
    """
    from edge_monitor.training.export import export_bundle

    raw = synthetic_windows(spec)
    full_spec = normalised_spec(spec, raw)
    norm = (raw - np.float32(full_spec.norm_mean)) / np.float32(full_spec.norm_std)
    meta: dict[str, Any] = {
        "name": f"tiny-{kind}", "version": "1", "kind": kind, "feature_spec": full_spec.to_dict(),
        "input_shape": [1, spec.frames_per_window, spec.n_features, 1], "threshold": TINY_THRESHOLD,
        "threshold_basis": {"method": "fixed for tests"},
        "training": {"note": "untrained test model; SYNTHETIC representative data"},
    }
    if kind == "autoencoder":
        model = build_autoencoder(spec, seed)
        meta["score"] = {"type": "mse"}
    else:
        model = build_classifier(spec, len(CLASSIFIER_LABELS), seed)
        meta.update(score={"type": "alert_probability"}, labels=list(CLASSIFIER_LABELS),
                    alert_labels=["bearing", "leak"])
    meta.update(meta_overrides or {})
    representative = [w[None, :, :, None] for w in norm[:24]]
    out_path.write_bytes(export_bundle(model, representative, meta))
    return out_path, model, full_spec, norm


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """An exported tiny bundle and what it was made from."""

    path: Path
    keras_model: Any
    spec: FeatureSpec            # as stored in the bundle (normalisation fitted)
    windows: np.ndarray          # normalised SYNTHETIC windows (n, frames, n_features) float32


def cached_export(kind: str, base_dir: Path) -> TinyModel:
    """Export ``kind`` once per session into ``base_dir`` (skips the test without TensorFlow)."""
    pytest.importorskip("tensorflow")
    with _LOCK:
        if kind not in _CACHE:
            _CACHE[kind] = TinyModel(*export_tiny(kind, base_dir / f"tiny-{kind}.tflite"))
        return _CACHE[kind]


def cached_bundle(kind: str, base_dir: Path) -> Path:
    """Path of the session's tiny ``kind`` bundle."""
    return cached_export(kind, base_dir).path


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny int8 autoencoder bundle (TINY_SPEC, threshold TINY_THRESHOLD)."""
    return cached_bundle("autoencoder", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny int8 classifier bundle with labels CLASSIFIER_LABELS."""
    return cached_bundle("classifier", tmp_path_factory.getbasetemp())
