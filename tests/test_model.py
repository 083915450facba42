"""Model bundles: real Keras models exported to int8 TFLite, loaded without TensorFlow, and clear refusals."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.bundle import BundleError
from edge_monitor.model import ModelError, load_model
from edge_monitor.wavio import write_wav
from tests.helpers.tiny_models import (
    CLASSIFIER_LABELS,
    TINY_SPEC,
    TINY_THRESHOLD,
    TinyModel,
    cached_export,
    export_tiny,
)

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("tensorflow")



@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return cached_export("autoencoder", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return cached_export("classifier", tmp_path_factory.getbasetemp())


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


RUNTIME_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate"  # printed by the LiteRT C++ runtime itself


def _assert_one_sentence(stderr: str, must_contain: str) -> None:
    text = "\n".join(line for line in stderr.strip().splitlines() if not line.startswith(RUNTIME_NOISE))
    assert "Traceback" not in text, text
    assert text.count("\n") == 0, f"expected one line, got:\n{text}"
    assert text.startswith("edge-monitor: ") and must_contain in text, text


# ---------------------------------------------------------------- loading and int8 handling

def test_autoencoder_bundle_loads_with_int8_io(autoencoder: TinyModel) -> None:
    runner = load_model(autoencoder.path)
    assert runner.backend in ("ai_edge_litert", "tflite_runtime", "tensorflow")
    assert runner._in["dtype"] == np.int8 and runner._out["dtype"] == np.int8
    assert runner._in_scale > 0 and runner._out_scale > 0
    b = runner.bundle
    assert b.kind == "autoencoder" and b.threshold == TINY_THRESHOLD and b.spec == autoencoder.spec
    assert b.spec.same_features(TINY_SPEC)
    assert re.fullmatch(r"tiny-autoencoder@1#[0-9a-f]{8}", b.ident)
    assert b.meta["tflite_sha256"] != b.sha256  # the hash is of the flatbuffer before the metadata went in


def test_int8_output_matches_the_float_keras_model(autoencoder: TinyModel) -> None:
    runner = load_model(autoencoder.path)
    for w in autoencoder.windows[:5]:
        ours = runner.infer(w).reshape(-1)
        ref = np.asarray(autoencoder.keras_model(w[None, :, :, None], training=False)).reshape(-1)
        tolerance = 0.05 * np.abs(ref).max() + 4 * runner._out_scale
        assert np.abs(ours - ref).max() <= tolerance
        assert np.corrcoef(ours, ref)[0, 1] > 0.98


def test_autoencoder_scores_are_finite_mse(autoencoder: TinyModel) -> None:
    runner = load_model(autoencoder.path)
    spec = autoencoder.spec
    raw = autoencoder.windows * np.float32(spec.norm_std) + np.float32(spec.norm_mean)
    scores = runner.process_many(raw[:8])
    assert scores.shape == (8,) and np.all(np.isfinite(scores)) and np.all(scores >= 0)
    x = autoencoder.windows[0]
    y = np.asarray(autoencoder.keras_model(x[None, :, :, None], training=False)).reshape(x.shape)
    assert scores[0] == pytest.approx(float(np.mean((x - y) ** 2)), rel=0.2, abs=1e-3)


def test_input_outside_the_int8_range_is_clipped(autoencoder: TinyModel) -> None:
    runner = load_model(autoencoder.path)
    huge = np.full(autoencoder.windows[0].shape, 1e6, dtype=np.float32)
    out = runner.infer(huge)
    assert np.all(np.isfinite(out))
    assert np.all(runner._in_buf == 127)


def test_classifier_probabilities_and_alert_score(classifier: TinyModel) -> None:
    runner = load_model(classifier.path)
    spec = classifier.spec
    assert runner.bundle.labels == list(CLASSIFIER_LABELS)
    for w in classifier.windows[:4]:
        raw = w * np.float32(spec.norm_std) + np.float32(spec.norm_mean)
        probs = runner.probabilities(raw)
        ref = np.asarray(classifier.keras_model(w[None, :, :, None], training=False)).reshape(-1)
        assert probs.shape == (3,) and abs(probs.sum() - 1.0) < 0.02
        assert np.abs(probs - ref).max() < 0.02
        assert runner.process(raw) == pytest.approx(probs[1] + probs[2])


def test_expected_rate_mismatch_is_one_sentence(autoencoder: TinyModel) -> None:
    with pytest.raises(ModelError) as info:
        load_model(autoencoder.path, expect_rate_hz=8000)
    msg = str(info.value)
    assert str(autoencoder.path) in msg and "16000 Hz" in msg and "8000 Hz" in msg and "\n" not in msg


# ---------------------------------------------------------------- broken bundles

@dataclasses.dataclass
class BadModels:
    missing: Path
    truncated: Path
    text: Path
    plain_tflite: Path
    wrong_shape: Path


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory, autoencoder: TinyModel) -> BadModels:
    from edge_monitor.training.export import convert_int8

    d = tmp_path_factory.mktemp("bad-models")
    good = autoencoder.path.read_bytes()
    (d / "truncated.tflite").write_bytes(good[:len(good) // 2])
    (d / "notes.tflite").write_text("threshold: 0.5\nthis is a text file, not a model\n")
    plain = convert_int8(autoencoder.keras_model, [w[None, :, :, None] for w in autoencoder.windows[:8]])
    (d / "plain.tflite").write_bytes(plain)
    wrong = dataclasses.replace(TINY_SPEC, frames_per_window=8).to_dict()
    export_tiny("autoencoder", d / "wrong-shape.tflite", meta_overrides={"feature_spec": wrong})
    return BadModels(d / "absent.tflite", d / "truncated.tflite", d / "notes.tflite", d / "plain.tflite",
                     d / "wrong-shape.tflite")


BAD_CASES = {
    "missing": "file not found",
    "truncated": "truncated",
    "text": "not a TensorFlow Lite model",
    "plain_tflite": "not an edge-monitor bundle",
    "wrong_shape": "does not match its feature spec (8 frames x 32 features)",
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_broken_bundle_is_refused_in_one_sentence(bad_models: BadModels, case: str) -> None:
    path = getattr(bad_models, case)
    with pytest.raises(BundleError) as info:
        load_model(path)
    msg = str(info.value)
    assert msg.startswith(f"model {path}: ") and BAD_CASES[case] in msg
    assert "\n" not in msg and not re.search(r"\.\s+[A-Z]", msg), msg


@pytest.mark.parametrize("case", BAD_CASES)
def test_broken_bundle_raises_model_error(bad_models: BadModels, case: str) -> None:
    with pytest.raises(ModelError):
        load_model(getattr(bad_models, case))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", BAD_CASES)
def test_score_cli_refuses_broken_bundle_with_exit_2(bad_models: BadModels, tmp_path: Path, case: str) -> None:
    wav = tmp_path / "ok.wav"
    write_wav(wav, np.zeros(16000, np.float32), 16000)
    result = _cli("score", "--model", str(getattr(bad_models, case)), str(wav))
    _assert_one_sentence(result.stderr, BAD_CASES[case])
    assert result.returncode == 2 and result.stdout == ""


# ---------------------------------------------------------------- bad audio for a good model

def _config(tmp_path: Path, model: Path) -> Path:
    cfg = tmp_path / "fan.yaml"
    cfg.write_text(f"machine:\n  id: fan-1\nmodel:\n  path: {model}\nsource:\n  type: file\n  path: x.wav\n"
                   f"state_dir: {tmp_path / 'state'}\n")
    return cfg


@pytest.fixture()
def wrong_rate_wav(tmp_path: Path) -> Path:
    path = tmp_path / "eight-k.wav"
    write_wav(path, 0.1 * np.sin(np.arange(16000) * 0.3).astype(np.float32), 8000)
    return path


@pytest.fixture()
def text_wav(tmp_path: Path) -> Path:
    path = tmp_path / "readme.wav"
    path.write_text("not audio at all\n")
    return path


@pytest.mark.timeout(120)
def test_score_refuses_an_8k_wav_for_a_16k_model(autoencoder: TinyModel, wrong_rate_wav: Path) -> None:
    result = _cli("score", "--json", "--model", str(autoencoder.path), str(wrong_rate_wav))
    _assert_one_sentence(result.stderr, f"{wrong_rate_wav}: sampled at 8000 Hz but the model expects 16000 Hz")
    assert result.returncode == 2 and result.stdout == ""


@pytest.mark.timeout(120)
def test_replay_refuses_an_8k_wav_for_a_16k_model(autoencoder: TinyModel, wrong_rate_wav: Path,
                                                   tmp_path: Path) -> None:
    result = _cli("replay", "--config", str(_config(tmp_path, autoencoder.path)), str(wrong_rate_wav))
    _assert_one_sentence(result.stderr, f"{wrong_rate_wav}: sampled at 8000 Hz but the model expects 16000 Hz")
    assert result.returncode == 2 and result.stdout == ""


@pytest.mark.timeout(120)
def test_score_refuses_a_text_file_as_wav(autoencoder: TinyModel, text_wav: Path) -> None:
    result = _cli("score", "--model", str(autoencoder.path), str(text_wav))
    _assert_one_sentence(result.stderr, f"{text_wav}: not a readable WAV file")
    assert result.returncode == 2


@pytest.mark.timeout(120)
def test_replay_refuses_a_text_file_as_wav(autoencoder: TinyModel, text_wav: Path, tmp_path: Path) -> None:
    result = _cli("replay", "--config", str(_config(tmp_path, autoencoder.path)), str(text_wav))
    _assert_one_sentence(result.stderr, f"{text_wav}: not a readable WAV file")
    assert result.returncode == 2


@pytest.mark.timeout(120)
def test_check_config_loads_the_model(autoencoder: TinyModel, tmp_path: Path) -> None:
    result = _cli("check-config", str(_config(tmp_path, autoencoder.path)))
    assert result.returncode == 0, result.stderr
    assert "ok (machine fan-1, source file" in result.stdout


def test_metadata_is_valid_json_inside_the_file(autoencoder: TinyModel) -> None:
    from edge_monitor.bundle import read_metadata_bytes

    meta = json.loads(read_metadata_bytes(autoencoder.path.read_bytes()))
    assert meta["kind"] == "autoencoder" and meta["input_shape"] == [1, 16, 32, 1]
    assert meta["feature_spec"]["n_mels"] == 32 and meta["format_version"] == 1
