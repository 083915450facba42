"""The model bundle: an int8 ``.tflite`` whose metadata travels inside the file.

The metadata is a JSON document stored as a TFLite metadata buffer named
``edge_monitor`` (the same mechanism TFLite's own metadata uses), so it can't be
separated from the model by copying one file without the other. It is read here
with a small flatbuffer reader, without TensorFlow.

Metadata (``format_version`` 1)::

    name, version, created_at        identity of the model
    kind                             "autoencoder" | "embedding" | "classifier"
    feature_spec                     FeatureSpec.to_dict()
    input_shape                      e.g. [1, 32, 64, 1]
    score                            how a window's model output becomes a score:
                                       {"type": "mse"}                                 autoencoder
                                       {"type": "mahalanobis", "mean": [...], "precision": [[...]]}  embedding
                                       {"type": "alert_probability"}                   classifier
    labels, alert_labels             classifier only: output order, and which labels mean an alert
    threshold                        calibrated window-score threshold
    threshold_basis                  how it was calibrated (method, false-alarm rate, held-out counts)
    training                         data summary (files, seconds, sources, machine type)
    tflite_sha256                    SHA-256 of the model flatbuffer before the metadata was embedded
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any, Optional, Union

METADATA_NAME = "edge_monitor"
MAX_METADATA_BYTES = 64 * 1024 * 1024
"""Metadata is a few kB to a few MB (embedding statistics); a larger claim is corruption."""
FORMAT_VERSION = 1
KINDS = ("autoencoder", "embedding", "classifier")

# Field indices in the TFLite schema's Model, Metadata and Buffer tables.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class BundleError(ValueError):
    """The file is not a usable model bundle. The message is one sentence naming the file and the problem."""


class _FlatReader:
    """Just enough of the flatbuffers wire format to walk a TFLite model's metadata."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _read(self, fmt: str, pos: int) -> Any:
        # every offset comes from the file: check it, so a corrupt file is an IndexError, never a wrap-around
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.buf):
            raise IndexError(pos)
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def _u32(self, pos: int) -> int:
        return self._read("<I", pos)

    def _field_pos(self, table: int, field: int) -> Optional[int]:
        vtable = table - self._read("<i", table)
        vsize = self._read("<H", vtable)
        slot = 4 + 2 * field
        if slot + 2 > vsize:
            return None
        off = self._read("<H", vtable + slot)
        return table + off if off else None

    def root(self) -> int:
        return self._u32(0)

    def table_field(self, table: int, field: int) -> Optional[int]:
        pos = self._field_pos(table, field)
        return None if pos is None else pos + self._u32(pos)

    def vector(self, table: int, field: int, item_bytes: int = 1) -> tuple[int, int]:
        """(start of elements, length) or (0, 0) when absent; IndexError when it runs past the end."""
        pos = self.table_field(table, field)
        if pos is None:
            return 0, 0
        n = self._u32(pos)
        if pos + 4 + n * item_bytes > len(self.buf):
            raise IndexError(pos)
        return pos + 4, n

    def vector_of_tables(self, table: int, field: int) -> list[int]:
        start, n = self.vector(table, field, 4)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(n)]

    def string(self, table: int, field: int) -> str:
        start, n = self.vector(table, field)
        return self.buf[start:start + n].decode("utf-8", "replace")

    def scalar(self, table: int, field: int, fmt: str, default: Any = 0) -> Any:
        pos = self._field_pos(table, field)
        return default if pos is None else self._read(fmt, pos)


def read_metadata_bytes(model: bytes, name: str = METADATA_NAME) -> Optional[bytes]:
    """The named metadata buffer of a TFLite flatbuffer, or None if it has none. Raises BundleError on garbage."""
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise BundleError("it is not a TensorFlow Lite model (no TFL3 identifier)")
    r = _FlatReader(model)
    try:
        root = r.root()
        buffers = r.vector_of_tables(root, _MODEL_BUFFERS)
        for meta in r.vector_of_tables(root, _MODEL_METADATA):
            if r.string(meta, _METADATA_NAME) != name:
                continue
            index = r.scalar(meta, _METADATA_BUFFER, "<I")
            if index >= len(buffers):
                raise BundleError(f"its metadata points at buffer {index}, but there are {len(buffers)}")
            start, n = r.vector(buffers[index], _BUFFER_DATA)
            if n == 0:  # large models keep buffers after the flatbuffer
                off = r.scalar(buffers[index], _BUFFER_OFFSET, "<Q")
                n = r.scalar(buffers[index], _BUFFER_SIZE, "<Q")
                start = off
            if n > MAX_METADATA_BYTES:
                raise BundleError(f"its metadata claims {n} bytes; at most {MAX_METADATA_BYTES} are read")
            if start + n > len(model):
                raise BundleError("it is truncated (metadata runs past the end of the file)")
            return bytes(model[start:start + n])
    except (IndexError, struct.error):
        raise BundleError("it is truncated or corrupt") from None
    return None


def validate_metadata(meta: Any) -> list[str]:
    """Problems with a metadata document (empty list when it is usable)."""
    if not isinstance(meta, dict):
        return ["metadata is not a JSON object"]
    problems = []
    if meta.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version is {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key in ("name", "kind", "feature_spec", "input_shape", "score", "threshold"):
        if key not in meta:
            problems.append(f"missing key {key!r}")
    if not isinstance(meta.get("kind"), str) or meta.get("kind") not in KINDS:
        problems.append(f"kind is {meta.get('kind')!r}, expected one of {', '.join(KINDS)}")
    for key in ("labels", "alert_labels"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            problems.append(f"{key} is {str(value)[:60]!r}, expected a list of names")
            meta = {k: v for k, v in meta.items() if k != key}
    if meta.get("kind") == "classifier":
        labels = meta.get("labels") or []
        alert = meta.get("alert_labels") or []
        if not labels:
            problems.append("a classifier needs its labels")
        if not alert or any(a not in labels for a in alert):
            problems.append(f"alert_labels {str(alert)[:60]!r} must be a non-empty subset of labels "
                            f"{str(labels)[:60]!r}")
    thr = meta.get("threshold")
    if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not math.isfinite(thr) or thr <= 0:
        problems.append(f"threshold is {thr!r}, expected a finite number > 0")
    problems += _feature_spec_problems(meta.get("feature_spec"))
    return problems


# Generic bounds on a bundle's feature spec, so that a corrupt or hostile bundle is refused
# at load instead of making the feature extractor allocate or loop without bound.
_SPEC_BOUNDS = {
    "sample_rate": (1000, 192000),     # hertz
    "n_fft": (16, 65536),              # samples per frame
    "hop_length": (1, 65536),          # samples between frames
    "n_mels": (1, 1024),
    "frames_per_window": (1, 10000),
}


def _feature_spec_problems(spec: Any) -> list[str]:
    """Problems with the generic numbers of a feature spec (any model kind)."""
    if not isinstance(spec, dict):
        return [] if spec is None else [f"feature_spec is {type(spec).__name__}, expected an object"]
    problems = []
    for key, (lo, hi) in _SPEC_BOUNDS.items():
        if key not in spec:
            continue
        value = spec[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            problems.append(f"feature_spec.{key} is {str(value)[:40]!r}, expected an integer from {lo} to {hi}")
    window = spec.get("window", "hann")
    if not isinstance(window, str) or len(window) > 32:
        problems.append(f"feature_spec.window is {str(window)[:40]!r}, expected a window name")
    return problems


def load_metadata(path: Union[str, Path]) -> tuple[dict, bytes]:
    """Read a bundle file: ``(metadata dict, model bytes)``. Raises BundleError with one clear sentence."""
    p = Path(path)
    try:
        model = p.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"model {p}: file not found") from None
    except OSError as exc:
        raise BundleError(f"model {p}: cannot read it ({exc.strerror})") from None
    try:
        raw = read_metadata_bytes(model)
    except BundleError as exc:
        raise BundleError(f"model {p}: {exc}") from None
    if raw is None:
        raise BundleError(f"model {p}: it is a TFLite model but not an edge-monitor bundle (no '{METADATA_NAME}' metadata); "
                          "train it with `edge-monitor train` or `edge-monitor train-classifier`")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also a 5000-digit number
        raise BundleError(f"model {p}: its metadata is not valid JSON ({str(exc)[:120]})") from None
    problems = validate_metadata(meta)
    if problems:
        raise BundleError(f"model {p}: invalid metadata: {'; '.join(problems)}")
    return meta, model


def file_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()
