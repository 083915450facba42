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
import struct
from pathlib import Path
from typing import Any, Optional, Union

METADATA_NAME = "edge_monitor"
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

    def _u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > len(self.buf):
            raise IndexError(pos)
        return struct.unpack_from("<I", self.buf, pos)[0]

    def _field_pos(self, table: int, field: int) -> Optional[int]:
        vtable = table - struct.unpack_from("<i", self.buf, table)[0]
        vsize = struct.unpack_from("<H", self.buf, vtable)[0]
        slot = 4 + 2 * field
        if slot + 2 > vsize:
            return None
        off = struct.unpack_from("<H", self.buf, vtable + slot)[0]
        return table + off if off else None

    def root(self) -> int:
        return self._u32(0)

    def table_field(self, table: int, field: int) -> Optional[int]:
        pos = self._field_pos(table, field)
        return None if pos is None else pos + self._u32(pos)

    def vector(self, table: int, field: int) -> tuple[int, int]:
        """(start of elements, length) or (0, 0) when absent."""
        pos = self.table_field(table, field)
        if pos is None:
            return 0, 0
        return pos + 4, self._u32(pos)

    def vector_of_tables(self, table: int, field: int) -> list[int]:
        start, n = self.vector(table, field)
        return [start + 4 * i + self._u32(start + 4 * i) for i in range(n)]

    def string(self, table: int, field: int) -> str:
        start, n = self.vector(table, field)
        return self.buf[start:start + n].decode("utf-8", "replace")

    def scalar(self, table: int, field: int, fmt: str, default: Any = 0) -> Any:
        pos = self._field_pos(table, field)
        return default if pos is None else struct.unpack_from(fmt, self.buf, pos)[0]


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
    if meta.get("kind") not in KINDS:
        problems.append(f"kind is {meta.get('kind')!r}, expected one of {', '.join(KINDS)}")
    if meta.get("kind") == "classifier":
        labels = meta.get("labels") or []
        alert = meta.get("alert_labels") or []
        if not labels:
            problems.append("a classifier needs its labels")
        if not alert or any(a not in labels for a in alert):
            problems.append(f"alert_labels {alert!r} must be a non-empty subset of labels {labels!r}")
    thr = meta.get("threshold")
    if not isinstance(thr, (int, float)) or thr != thr:
        problems.append(f"threshold is {thr!r}, expected a number")
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"model {p}: its metadata is not valid JSON ({exc})") from None
    problems = validate_metadata(meta)
    if problems:
        raise BundleError(f"model {p}: invalid metadata: {'; '.join(problems)}")
    return meta, model


def file_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()
