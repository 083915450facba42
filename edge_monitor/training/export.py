"""Turn a trained Keras model into an int8 TFLite bundle with embedded metadata. Needs TensorFlow."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Optional

import numpy as np

from edge_monitor.bundle import FORMAT_VERSION, METADATA_NAME, file_sha256, read_metadata_bytes, validate_metadata

_LOGGER = logging.getLogger(__name__)
_WARNED: set[tuple[str, ...]] = set()


@contextlib.contextmanager
def _converter_chatter_captured() -> Iterator[None]:
    """Keep the converter's prints ("Saved artifact at ...", MLIR notes) off the terminal.

    Its output goes to a temporary file at the file-descriptor level (much of it comes from C++); if the
    conversion fails, that output is written to stderr so the reason isn't lost.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace")[-20000:])


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
    with _converter_chatter_captured():
        tflite = bytes(converter.convert())
    warn_if_unsupported(tflite)
    return tflite


def warn_if_unsupported(tflite: bytes) -> list[str]:
    """Log a warning naming the ops tflite-runtime 2.14 (the 32-bit Pi runtime) lacks; returns them."""
    from edge_monitor.training.opcompat import TFLITE_RUNTIME_2_14_NAME, unsupported_ops

    problems = unsupported_ops(tflite)
    if problems and tuple(problems) not in _WARNED:  # once per process: cross-fitting converts a model per fold
        _WARNED.add(tuple(problems))
        _LOGGER.warning("this model will not load with %s (the only runtime on 32-bit Raspberry Pi OS): it uses "
                        "%s; ai-edge-litert runs it", TFLITE_RUNTIME_2_14_NAME, ", ".join(problems))
    return problems


def embed_metadata(tflite: bytes, meta: dict, *, tflite_sha256: Optional[str] = None) -> bytes:
    """Return the model with ``meta`` (JSON) stored as its ``edge_monitor`` metadata buffer.

    ``tflite_sha256`` defaults to the hash of ``tflite``; an existing ``edge_monitor`` buffer is overwritten.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    full = dict(meta)
    full.setdefault("format_version", FORMAT_VERSION)
    full.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    full["tflite_sha256"] = tflite_sha256 or file_sha256(tflite)
    problems = validate_metadata(full)
    if problems:
        raise ValueError("refusing to write an invalid bundle: " + "; ".join(problems))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    data = np.frombuffer(json.dumps(full, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if m.name in (METADATA_NAME, METADATA_NAME.encode())]
    if existing:
        model.buffers[existing[0].buffer].data = data
    else:
        buf = schema.BufferT()
        buf.data = data
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def replace_metadata(bundle: bytes, meta: dict) -> bytes:
    """Return ``bundle`` with its ``edge_monitor`` metadata replaced by ``meta``; the model itself is untouched.

    ``tflite_sha256`` keeps the old value: it is the hash of the flatbuffer before any metadata went in.
    """
    raw = read_metadata_bytes(bundle)
    if raw is None:
        raise ValueError("not an edge-monitor bundle: no metadata to replace")
    return embed_metadata(bundle, meta, tflite_sha256=json.loads(raw.decode("utf-8"))["tflite_sha256"])


def export_bundle(keras_model: Any, representative: Iterable[np.ndarray], meta: dict,
                  calibrate: Callable[[bytes], dict] | None = None) -> bytes:
    """Convert to int8, optionally let ``calibrate(tflite_bytes)`` add keys (e.g. threshold), embed metadata."""
    tflite = convert_int8(keras_model, representative)
    full = dict(meta)
    if calibrate is not None:
        full.update(calibrate(tflite))
    return embed_metadata(tflite, full)
