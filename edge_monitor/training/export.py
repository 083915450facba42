"""Turn a trained Keras model into an int8 TFLite bundle with embedded metadata. Needs TensorFlow."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np

from edge_monitor.bundle import FORMAT_VERSION, METADATA_NAME, file_sha256, validate_metadata


def convert_int8(keras_model: Any, representative: Iterable[np.ndarray]) -> bytes:
    """Full-integer (int8 in, int8 out) conversion with a representative dataset of input batches ``(1, ...)``."""
    import tensorflow as tf

    samples = [np.asarray(r, dtype=np.float32) for r in representative]

    def gen() -> Iterable[list[np.ndarray]]:
        for s in samples:
            yield [s]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def embed_metadata(tflite: bytes, meta: dict) -> bytes:
    """Return the model with ``meta`` (JSON) stored as its ``edge_monitor`` metadata buffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    full = dict(meta)
    full.setdefault("format_version", FORMAT_VERSION)
    full.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    full["tflite_sha256"] = file_sha256(tflite)
    problems = validate_metadata(full)
    if problems:
        raise ValueError("refusing to write an invalid bundle: " + "; ".join(problems))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(full, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_bundle(keras_model: Any, representative: Iterable[np.ndarray], meta: dict,
                  calibrate: Callable[[bytes], dict] | None = None) -> bytes:
    """Convert to int8, optionally let ``calibrate(tflite_bytes)`` add keys (e.g. threshold), embed metadata."""
    tflite = convert_int8(keras_model, representative)
    full = dict(meta)
    if calibrate is not None:
        full.update(calibrate(tflite))
    return embed_metadata(tflite, full)
