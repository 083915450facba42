"""Load a bundle with whichever TFLite runtime this interpreter has, and print what it computes (one JSON line).

Usage: ``python tflite_probe.py MODEL HOP_FRAMES [WAV]``. Run by :mod:`tests.helpers.tflite_venv` with the
project venv's python (ai-edge-litert) and the side venv's (tflite-runtime), with this checkout on
``PYTHONPATH``, so both runtimes go through the same ModelRunner. Needs only numpy and edge_monitor.

Prints ``{"backend", "backend_version", "numpy", "error"}`` and, with a WAV, ``"scores"`` (one per window,
as the daemon scores them), ``"raw"`` (the dequantised model outputs of each window) and ``"int8_builtin"``:
the int8 outputs of an interpreter made without the default delegates (no XNNPACK), i.e. TFLite's own
kernels, for the same quantised inputs.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys

import numpy as np

from edge_monitor.features import extract, normalise, windows
from edge_monitor.model import ModelError, ModelRunner, load_model
from edge_monitor.scoring import load_mono

_DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                  "tensorflow": "tensorflow-cpu"}


def builtin_kernel_outputs(runner: ModelRunner, normalised: list[np.ndarray]) -> list[list[int]]:
    """Raw int8 outputs of TFLite's builtin kernels (default delegates off) for normalised windows."""
    if runner.backend == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # type: ignore
    elif runner.backend == "tflite_runtime":
        from tflite_runtime.interpreter import Interpreter, OpResolverType  # type: ignore
    else:
        from tensorflow.lite.python.interpreter import Interpreter, OpResolverType  # type: ignore
    interp = Interpreter(model_content=runner.bundle.model_bytes, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    info = np.iinfo(inp["dtype"])
    result = []
    for x in normalised:
        q = np.clip(np.rint(x.reshape(inp["shape"]) / np.float32(scale)) + zero, info.min, info.max)
        interp.set_tensor(inp["index"], q.astype(inp["dtype"]))
        interp.invoke()
        result.append(interp.get_tensor(outp["index"]).reshape(-1).astype(int).tolist())
    return result


def main(argv: list[str]) -> int:
    model, hop_frames = argv[0], int(argv[1])
    wav = argv[2] if len(argv) > 2 else None
    out: dict = {"numpy": np.__version__, "error": None}
    try:
        runner = load_model(model)
    except ModelError as exc:
        out["error"] = str(exc)
        print(json.dumps(out))
        return 0
    out["backend"] = runner.backend
    try:
        out["backend_version"] = importlib.metadata.version(_DISTRIBUTIONS[runner.backend])
    except importlib.metadata.PackageNotFoundError:
        out["backend_version"] = "unknown"
    if wav:
        spec = runner.bundle.spec
        w = windows(spec, extract(spec, load_mono(wav, spec.sample_rate)), hop_frames)
        out["scores"] = [runner.process(x) for x in w]
        out["raw"] = [runner.infer(normalise(spec, x)).reshape(-1).tolist() for x in w]
        out["int8_builtin"] = builtin_kernel_outputs(runner, [normalise(spec, x) for x in w])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
