"""Run a model bundle: int8 TFLite inference and the score that the detector sees.

The interpreter comes from ``ai_edge_litert``, else ``tflite_runtime``, else
``tensorflow.lite`` (the last only when TensorFlow happens to be installed; the
daemon never needs it), unless ``EDGE_MONITOR_TFLITE_BACKEND`` names one. Inputs
are quantised and outputs dequantised with the scale and zero-point read from the
interpreter.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from edge_monitor.bundle import BundleError, file_sha256, load_metadata
from edge_monitor.features import FeatureError, FeatureSpec, normalise

_LOGGER = logging.getLogger(__name__)


class ModelError(BundleError):
    """The model can't be loaded or doesn't fit the audio/config. One sentence, naming the file."""


BACKEND_ENV = "EDGE_MONITOR_TFLITE_BACKEND"
"""Set to ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow`` to use that runtime instead of the first found."""
_BACKEND_MODULES = {"ai_edge_litert": "ai_edge_litert.interpreter", "tflite_runtime": "tflite_runtime.interpreter",
                    "tensorflow": "tensorflow"}


def interpreter_class() -> tuple[Any, str]:
    """The TFLite interpreter class and the backend's name: ``$EDGE_MONITOR_TFLITE_BACKEND``, else the first found."""
    wanted = os.environ.get(BACKEND_ENV, "").strip()
    if wanted:
        if wanted not in _BACKEND_MODULES:
            raise ModelError(f"{BACKEND_ENV}={wanted!r} is not a TFLite runtime; use one of "
                             f"{', '.join(_BACKEND_MODULES)}")
        try:
            module = importlib.import_module(_BACKEND_MODULES[wanted])
        except ImportError:
            raise ModelError(f"{BACKEND_ENV}={wanted} but {wanted} is not installed") from None
        return (module.lite.Interpreter if wanted == "tensorflow" else module.Interpreter), wanted
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore
        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore
        return tf.lite.Interpreter, "tensorflow"
    except ImportError:
        raise ModelError("no TFLite runtime is installed: `pip install ai-edge-litert` "
                         "(or tflite-runtime with numpy<2)") from None


class ModelBundle:
    """A loaded, validated bundle: metadata plus the model bytes."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        try:
            self.meta, self.model_bytes = load_metadata(self.path)
        except ModelError:
            raise
        except BundleError as exc:
            raise ModelError(str(exc)) from None
        try:
            self.spec = FeatureSpec.from_dict(self.meta["feature_spec"])
        except (FeatureError, TypeError) as exc:
            raise ModelError(f"model {self.path}: its feature spec is unusable: {exc}") from None
        self.kind: str = self.meta["kind"]
        self.name: str = str(self.meta.get("name", self.path.stem))
        self.version: str = str(self.meta.get("version", "0"))
        self.threshold: float = float(self.meta["threshold"])
        self.labels: list[str] = list(self.meta.get("labels") or [])
        self.alert_labels: list[str] = list(self.meta.get("alert_labels") or [])
        self.sha256 = file_sha256(self.model_bytes)

    @property
    def ident(self) -> str:
        """Short identity for alerts and logs: ``name@version#sha8``."""
        return f"{self.name}@{self.version}#{self.sha256[:8]}"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hide the runtime's native start-up chatter (e.g. the XNNPACK INFO line) on fd 2."""
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ModelRunner:
    """Scores feature windows with one bundle. ``process`` is pure apart from the interpreter's state."""

    def __init__(self, bundle: ModelBundle, threads: int = 1) -> None:
        self.bundle = bundle
        cls, self.backend = interpreter_class()
        try:
            with _quiet_native_stderr():
                self._interp = cls(model_content=bundle.model_bytes, num_threads=threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {bundle.path}: the TFLite runtime rejected it ({first})") from None
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelError(f"model {bundle.path}: expected one input and one output tensor, "
                             f"found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        spec = bundle.spec
        want = (1, spec.frames_per_window, spec.n_features)
        shape = tuple(int(d) for d in self._in["shape"])
        if shape[:3] != want or any(d != 1 for d in shape[3:]):
            raise ModelError(f"model {bundle.path}: its input shape {list(shape)} does not match its feature spec "
                             f"({spec.frames_per_window} frames x {spec.n_features} features)")
        self._in_shape = shape
        self._in_scale, self._in_zero = self._quant(self._in)
        self._out_scale, self._out_zero = self._quant(self._out)
        self._in_buf = np.zeros(shape, dtype=self._in["dtype"])
        self._prepare_score()

    @staticmethod
    def _quant(detail: dict) -> tuple[float, int]:
        scale, zero = detail.get("quantization", (0.0, 0))
        return float(scale), int(zero)

    def _prepare_score(self) -> None:
        meta = self.bundle.meta
        kind = self.bundle.kind
        score = meta.get("score") or {}
        path = self.bundle.path
        n_out = int(np.prod(self._out["shape"]))
        self._frame_dim = 0
        if kind == "autoencoder":
            if n_out != int(np.prod(self._in_shape)):
                raise ModelError(f"model {path}: an autoencoder's output must match its input size")
        elif kind == "embedding" and score.get("type") == "frame_norm":
            # the model whitens every frame itself: (frames, d) out, score = mean frame length
            out_shape = tuple(int(v) for v in self._out["shape"])
            if len(out_shape) != 3 or out_shape[1] != self.bundle.spec.frames_per_window:
                raise ModelError(f"model {path}: a frame_norm model must output one vector per frame, "
                                 f"got shape {list(out_shape)}")
            self._frame_dim = out_shape[2]
            self._prepare_frame_norm(score, path)
        elif kind == "embedding":
            try:
                self._mean = np.asarray(score["mean"], dtype=np.float64)
                self._precision = np.asarray(score["precision"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"model {path}: an embedding model needs score.mean and score.precision") from None
            if self._mean.shape != (n_out,) or self._precision.shape != (n_out, n_out):
                raise ModelError(f"model {path}: embedding statistics do not match its {n_out}-dim output")
        elif kind == "classifier":
            labels = self.bundle.labels
            if n_out != len(labels):
                raise ModelError(f"model {path}: it outputs {n_out} values but lists {len(labels)} labels")
            self._alert_idx = np.array([labels.index(a) for a in self.bundle.alert_labels], dtype=np.intp)

    def _prepare_frame_norm(self, score: dict, path: Any) -> None:
        """``frame_norm`` scores: the offset, and the optional outlier-exposure column and the two scales."""
        def number(key: str, default: float) -> float:
            value = score.get(key, default)
            if isinstance(value, bool):
                raise ModelError(f"model {path}: score.{key} must be a number")
            try:
                out = float(value)
            except (TypeError, ValueError):
                raise ModelError(f"model {path}: score.{key} must be a number") from None
            if not np.isfinite(out):
                raise ModelError(f"model {path}: score.{key} must be finite, got {out}")
            return out

        self._offset = number("offset", 0.0)
        column = score.get("logit_column")
        self._logit_col = None
        if column is None:
            if self._offset < 0:
                raise ModelError(f"model {path}: score.offset must be finite and >= 0, got {self._offset}")
            self._norm_scale, self._logit_scale = 1.0, 1.0
            return
        if isinstance(column, bool) or not isinstance(column, int) or column != self._frame_dim - 1 or column < 1:
            raise ModelError(f"model {path}: score.logit_column must be the last output column "
                             f"({self._frame_dim - 1}), got {column!r}")
        self._logit_col = column
        self._norm_scale, self._logit_scale = number("norm_scale", 1.0), number("logit_scale", 1.0)
        if self._norm_scale <= 0 or self._logit_scale <= 0:
            raise ModelError(f"model {path}: score.norm_scale and score.logit_scale must be > 0")

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The model's output tensor shape, batch included."""
        return tuple(int(v) for v in self._out["shape"])

    def infer(self, window: np.ndarray) -> np.ndarray:
        """Raw dequantised model output for one normalised window ``(frames, n_features)`` float32."""
        x = window.reshape(self._in_shape)
        if self._in_scale:
            q = np.rint(x / np.float32(self._in_scale)) + self._in_zero
            info = np.iinfo(self._in_buf.dtype)
            np.clip(q, info.min, info.max, out=q)
            self._in_buf[...] = q
        else:
            self._in_buf[...] = x
        self._interp.set_tensor(self._in["index"], self._in_buf)
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        if self._out_scale:
            return (y.astype(np.float32) - np.float32(self._out_zero)) * np.float32(self._out_scale)
        return y.astype(np.float32)

    def process(self, features: np.ndarray) -> float:
        """Score one window of raw features ``(frames_per_window, n_features)`` float32; higher is more anomalous."""
        kind = self.bundle.kind
        if kind == "classifier":
            return self.classify(features)[0]
        x = normalise(self.bundle.spec, features)
        y = self.infer(x).reshape(-1)
        if kind == "autoencoder":
            d = x.reshape(-1) - y
            return float(np.mean(d * d))
        if kind == "embedding" and self._frame_dim:
            z = y.reshape(-1, self._frame_dim).astype(np.float64)
            if self._logit_col is None:
                return max(float(np.sqrt((z * z).sum(axis=1)).mean()) - self._offset, 0.0)
            # distance to this machine's normal frames + log-odds of "another machine" (outlier bank)
            w = z[:, :self._logit_col]
            value = (float(np.sqrt((w * w).sum(axis=1)).mean()) / self._norm_scale
                     + float(z[:, self._logit_col].mean()) / self._logit_scale)
            return max(value - self._offset, 0.0)
        d = y.astype(np.float64) - self._mean
        return float(np.sqrt(max(float(d @ self._precision @ d), 0.0)))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Classifier only: label probabilities for one window, in ``bundle.labels`` order."""
        y = self.infer(normalise(self.bundle.spec, features)).reshape(-1).astype(np.float64)
        if y.min() < -1e-3 or abs(y.sum() - 1.0) > 0.05:  # logits: apply softmax
            e = np.exp(y - y.max())
            y = e / e.sum()
        return y

    def classify(self, features: np.ndarray) -> tuple[float, np.ndarray]:
        """Classifier only: ``(score, probabilities)``; the score is the summed probability of the alert labels."""
        probs = self.probabilities(features)
        return float(probs[self._alert_idx].sum()), probs

    def process_many(self, windows: np.ndarray) -> np.ndarray:
        """Scores of ``(n, frames, n_features)`` windows as ``(n,)`` float64."""
        return np.array([self.process(w) for w in windows], dtype=np.float64)

    def reset(self) -> None:
        """Nothing to forget: each window is scored on its own."""

    def close(self) -> None:
        """Release the interpreter."""
        self._interp = None


def load_model(path: Union[str, Path], threads: int = 1, expect_rate_hz: Optional[int] = None) -> ModelRunner:
    """Load and validate a bundle, ready to score. Raises ModelError with one clear sentence."""
    bundle = ModelBundle(path)
    if expect_rate_hz is not None and expect_rate_hz != bundle.spec.sample_rate:
        raise ModelError(f"model {path}: it was trained at {bundle.spec.sample_rate} Hz "
                         f"but the audio source delivers {expect_rate_hz} Hz")
    return ModelRunner(bundle, threads=threads)
