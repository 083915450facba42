"""Every shipped bundle, and freshly trained ones, run on tflite-runtime 2.14 as they do on ai-edge-litert.

tflite-runtime 2.14 is the fallback runtime (the only one on 32-bit Raspberry Pi OS). It runs in a side
venv (``tests/helpers/tflite_venv.py``: numpy<2, Python <= 3.11) through this checkout's ModelRunner;
ai-edge-litert runs in the project venv. Both score the bundled demo recording (SYNTHETIC fan: normal,
bearing fault, normal) window by window.

What must agree, and how closely:

* **TFLite's own int8 kernels agree** in both runtimes: with the default delegates off, the raw int8
  outputs are identical for every bundle here; allowed: one quantisation step in at most 0.1% of them
  (a frames detector trained during development had 48 of 626,688 outputs off by one).
* **The daemon's scores** (default interpreter options) agree within a tolerance, because ai-edge-litert
  hands int8 graphs to XNNPACK, whose requantisation rounds differently, while tflite-runtime 2.14 runs
  them on TFLite's own kernels. Measured on the demo recording: classifier probabilities differ by at
  most 0.11 in a window (mean 0.01) and 0.004 in a file's mean; detector scores by at most 0.15% of
  the bundle's threshold in a window and 0.007% in a file's mean. Allowed: :data:`CLASSIFIER_WINDOW_TOL`
  / :data:`CLASSIFIER_FILE_TOL` (probability), :data:`SCORE_WINDOW_TOL` / :data:`SCORE_FILE_TOL`
  (fractions of the threshold: a detector's normal scores can sit near 0).

The oldest ai-edge-litert that setup.cfg allows must give exactly the current release's scores, and the
``[tflite-runtime]`` extra must install and be selectable with ``EDGE_MONITOR_TFLITE_BACKEND``.

A bundle that uses an op version tflite-runtime 2.14 lacks (per ``edge_monitor.training.opcompat``) is
first shown to be rejected by the real runtime, then marked xfail with the ops named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.bundle import load_metadata
from edge_monitor.wavio import read_wav, write_wav
from tests.helpers.tflite_venv import REPO_ROOT, litert_floor, probe, tflite_runtime_requirements, venv_python

pytest.importorskip("tensorflow", reason="the op table and the fresh models need TensorFlow ([train] extra)")

from edge_monitor.training.opcompat import (  # noqa: E402
    TFLITE_RUNTIME_2_14,
    all_builtin_ops,
    single_op_model,
    unsupported_ops,
)

DEMO_WAV = REPO_ROOT / "edge_monitor" / "demo" / "demo-fan.wav"
SHIPPED = sorted((REPO_ROOT / "models").glob("*.tflite")) + [REPO_ROOT / "edge_monitor" / "demo" / "demo-fan.tflite"]
HOP_FRAMES = 8  # 0.256 s between windows: 153 windows over the 40 s demo recording
NORMAL_SECONDS = 14.0  # the demo recording is normal until its fault starts at 15 s

BUILTIN_MAX_STEPS = 1
"""TFLite's own int8 kernels: outputs may differ by one quantisation step (requantisation rounding)..."""
BUILTIN_MAX_DIFFERENT = 0.001
"""...in at most this fraction of the outputs."""
CLASSIFIER_WINDOW_TOL = 0.15
"""Largest allowed difference of one window's alert probability between the runtimes."""
CLASSIFIER_FILE_TOL = 0.01
"""Largest allowed difference of a file's mean alert probability."""
SCORE_WINDOW_TOL = 0.05
"""Detector (autoencoder, embedding) scores: largest allowed difference of one window's score, in thresholds."""
SCORE_FILE_TOL = 0.01
"""Detector scores: largest allowed difference of a file's mean score, in thresholds."""


@pytest.fixture(scope="module")
def side_python() -> Path:
    """A venv made by ``pip install '<checkout>[tflite-runtime]'``: tflite-runtime 2.14 and ai-edge-litert, numpy<2."""
    return venv_python("tflite", tflite_runtime_requirements(), old_python=True)


@pytest.fixture(scope="module")
def floor_python() -> Path:
    """A venv with the oldest ai-edge-litert that setup.cfg allows."""
    return venv_python(f"litert-{litert_floor()}", [f"ai-edge-litert=={litert_floor()}"])


def _check_agreement(model: Path, side: Path) -> None:
    """The bundle loads on both runtimes and scores the demo recording alike (see the module docstring)."""
    problems = unsupported_ops(model.read_bytes())
    fallback = probe(side, model, DEMO_WAV, HOP_FRAMES, backend="tflite_runtime")
    if problems:
        assert fallback["error"] and "Didn't find op" in fallback["error"], (
            f"{model.name}: the op table says tflite-runtime 2.14 lacks {problems}, but it loaded: {fallback}")
        pytest.xfail(f"{model.name} uses {', '.join(problems)}, which tflite-runtime 2.14 rejects "
                     f"({fallback['error']}); the detector's export must avoid it")
    assert fallback["error"] is None, fallback["error"]
    assert (fallback["backend"], fallback["backend_version"].split(".")[:2]) == ("tflite_runtime", ["2", "14"])
    assert fallback["numpy"].startswith("1.")
    main = probe(sys.executable, model, DEMO_WAV, HOP_FRAMES)
    assert main["error"] is None and main["backend"] == "ai_edge_litert", main

    assert len(main["scores"]) == len(fallback["scores"]) > 100
    own_a, own_b = np.array(main["int8_builtin"]), np.array(fallback["int8_builtin"])
    assert own_a.shape == own_b.shape
    assert np.abs(own_a - own_b).max() <= BUILTIN_MAX_STEPS, f"{model.name}: TFLite's own kernels differ"
    assert np.mean(own_a != own_b) <= BUILTIN_MAX_DIFFERENT, np.mean(own_a != own_b)

    a, b = np.array(main["scores"]), np.array(fallback["scores"])
    meta = load_metadata(model)[0]
    if meta["kind"] == "classifier":
        assert np.max(np.abs(a - b)) <= CLASSIFIER_WINDOW_TOL, np.max(np.abs(a - b))
        assert abs(a.mean() - b.mean()) <= CLASSIFIER_FILE_TOL, (a.mean(), b.mean())
    else:  # detector scores can sit near 0 on normal sound: the scale that matters is the threshold
        threshold = float(meta["threshold"])
        assert np.max(np.abs(a - b)) <= SCORE_WINDOW_TOL * threshold, (np.max(np.abs(a - b)), threshold)
        assert abs(a.mean() - b.mean()) <= SCORE_FILE_TOL * threshold, (a.mean(), b.mean(), threshold)


def test_op_table_matches_the_real_runtime(side_python: Path, tmp_path: Path) -> None:
    """TFLITE_RUNTIME_2_14 is exactly what tflite-runtime 2.14 registers: each op's highest version loads,
    the next one doesn't, and ops missing from the table don't load at all."""
    cases = []
    for name in all_builtin_ops():
        top = TFLITE_RUNTIME_2_14.get(name)
        for version, expect in (((top, True), (top + 1, False)) if top else ((1, False),)):
            path = tmp_path / f"{name}.{version}.tflite"
            path.write_bytes(single_op_model(name, version))
            cases.append((str(path), expect))
    code = (
        "import json, sys\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        "out = {}\n"
        "for p in json.load(sys.stdin):\n"
        "    try:\n"
        "        Interpreter(model_content=open(p, 'rb').read()); out[p] = True\n"
        "    except Exception as e:\n"
        "        out[p] = not any(s in str(e) for s in (\"Didn't find op\", 'out of range'))\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([str(side_python), "-c", code], input=json.dumps([p for p, _ in cases]),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = [Path(p).stem for p, expect in cases if loaded[p] != expect]
    assert not wrong, f"the table is wrong for {wrong}"
    assert TFLITE_RUNTIME_2_14["SQRT"] == 1 and TFLITE_RUNTIME_2_14["RSQRT"] == 2


@pytest.mark.parametrize("model", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_bundle_agrees(model: Path, side_python: Path) -> None:
    _check_agreement(model, side_python)


def test_the_extra_installs_both_runtimes_and_the_variable_chooses(side_python: Path) -> None:
    """With the [tflite-runtime] extra on x86_64/aarch64 both runtimes are installed: ai-edge-litert stays the
    default and EDGE_MONITOR_TFLITE_BACKEND=tflite_runtime picks the fallback; a wrong name is refused."""
    model = REPO_ROOT / "models" / "machine-type.tflite"
    default = probe(side_python, model)
    assert (default["error"], default["backend"]) == (None, "ai_edge_litert")
    assert default["numpy"].startswith("1.")
    chosen = probe(side_python, model, backend="tflite_runtime")
    assert (chosen["error"], chosen["backend"], chosen["backend_version"]) == (None, "tflite_runtime", "2.14.0")
    wrong = probe(side_python, model, backend="tflite")
    assert "EDGE_MONITOR_TFLITE_BACKEND='tflite' is not a TFLite runtime" in wrong["error"]
    absent = probe(sys.executable, model, backend="tflite_runtime")
    assert "tflite_runtime is not installed" in absent["error"]


@pytest.mark.parametrize("model", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_oldest_allowed_litert_scores_like_the_current_one(model: Path, floor_python: Path) -> None:
    """The floor pinned in setup.cfg loads every shipped bundle and gives exactly the project venv's scores."""
    old = probe(floor_python, model, DEMO_WAV, HOP_FRAMES)
    assert old["error"] is None, old["error"]
    assert (old["backend"], old["backend_version"]) == ("ai_edge_litert", litert_floor())
    new = probe(sys.executable, model, DEMO_WAV, HOP_FRAMES)
    assert new["backend"] == "ai_edge_litert" and new["backend_version"] != old["backend_version"]
    assert old["scores"] == new["scores"]


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edge_monitor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def demo_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo recording cut into its normal part and its fault (SYNTHETIC audio)."""
    d = tmp_path_factory.mktemp("demo-parts")
    audio, rate = read_wav(DEMO_WAV)
    parts = {"normal": audio[:int(NORMAL_SECONDS * rate)], "abnormal": audio[int(16 * rate):int(26 * rate)]}
    out = {}
    for label, x in parts.items():
        (d / label).mkdir()
        out[label] = d / label / f"demo-{label}.wav"
        write_wav(out[label], x, rate)
    return out


def test_freshly_trained_detector_agrees(side_python: Path, demo_parts: dict[str, Path], tmp_path: Path) -> None:
    """``edge-monitor train`` (the default method) on 14 s of normal demo audio."""
    model = tmp_path / "fresh.tflite"
    _run("train", "--normal", str(demo_parts["normal"].parent), "--out", str(model), cwd=tmp_path)
    _check_agreement(model, side_python)


def test_freshly_trained_classifier_agrees(side_python: Path, demo_parts: dict[str, Path], tmp_path: Path) -> None:
    """``edge-monitor train-classifier`` on 14 s of normal and 10 s of faulty demo audio (2 epochs)."""
    model = tmp_path / "fresh-classifier.tflite"
    _run("train-classifier", "--data", str(demo_parts["normal"].parent.parent), "--out", str(model),
         "--epochs", "2", cwd=tmp_path)
    _check_agreement(model, side_python)
