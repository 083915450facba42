"""train-classifier: a tiny model on SYNTHETIC label folders, input errors, and the shipped classifier bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_monitor.model import load_model
from edge_monitor.scoring import score_file
from edge_monitor.training.classifier import (
    IDENTIFY_THRESHOLD,
    ClassifierDataError,
    add_train_classifier_arguments,
    classify_file,
    resolve_alert_labels,
    run_train_classifier,
)
from tests.helpers.labelled_audio import write_clip, write_label_folders

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_classifier_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier trained through the CLI entry point on normal / bearing / leak SYNTHETIC pump clips."""
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("clf")
    data = write_label_folders(root / "data")
    out = root / "pump-faults.tflite"
    rc = run_train_classifier(_args("--data", str(data), "--out", str(out), "--epochs", "8", "--cv", "2",
                                    "--seed", "1"))
    assert rc == 0
    return out


@pytest.mark.timeout(600)
def test_trained_bundle_loads_with_labels_and_alert_labels(trained: Path) -> None:
    runner = load_model(trained)
    b = runner.bundle
    assert b.kind == "classifier"
    assert b.labels == ["bearing", "leak", "normal"]
    assert b.alert_labels == ["bearing", "leak"]
    assert b.threshold == 0.5
    assert b.meta["purpose"] == "detect"
    assert b.meta["score"] == {"type": "alert_probability"}
    assert trained.stat().st_size < 100_000
    cv = b.meta["training"]["cross_validation"]
    assert cv["folds"] == 2
    assert sum(map(sum, cv["confusion"])) == 18  # every file predicted exactly once
    assert 0.0 <= cv["accuracy"] <= 1.0
    assert b.meta["training"]["synthetic_files"] == 18
    assert 0.0 <= b.meta["threshold_basis"]["false_alarm_rate"] <= 1.0


@pytest.mark.timeout(600)
def test_trained_bundle_classifies_fresh_clips(trained: Path, tmp_path: Path) -> None:
    runner = load_model(trained)
    for label, anomaly in (("normal", None), ("bearing", "bearing"), ("leak", "leak")):
        clip = write_clip(tmp_path / f"{label}.wav", "pump", anomaly, seed=500)  # seeds unseen in training
        predicted, probs = classify_file(runner, clip)
        assert predicted == label, probs
        fs = score_file(runner, clip)
        assert fs.anomalous == (label != "normal"), fs.score


def test_missing_data_folder_exits_2_with_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = run_train_classifier(_args("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.tflite")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert not (tmp_path / "m.tflite").exists()


def test_single_label_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_clip(tmp_path / "data" / "normal" / "a.wav", seed=1, seconds=2.0)
    rc = run_train_classifier(_args("--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.tflite")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "at least two label sub-folders" in err[0]


def test_labels_without_normal_need_alert_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for machine in ("fan", "valve"):
        write_clip(tmp_path / "data" / machine / "a.wav", machine, seed=1, seconds=2.0)
    rc = run_train_classifier(_args("--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.tflite")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "--alert-labels" in err[0]


def test_wrong_sample_rate_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from edge_monitor.wavio import write_wav

    write_clip(tmp_path / "data" / "normal" / "a.wav", seed=1, seconds=2.0)
    bad = tmp_path / "data" / "leak" / "b.wav"
    bad.parent.mkdir(parents=True)
    write_wav(bad, np.zeros(44100, dtype=np.float32), 44100)
    rc = run_train_classifier(_args("--data", str(tmp_path / "data"), "--out", str(tmp_path / "m.tflite")))
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert rc == 2
    assert errors == [err[-1]] and "b.wav" in err[-1] and "44100 Hz" in err[-1]


def test_resolve_alert_labels() -> None:
    assert resolve_alert_labels(["abnormal", "normal"], None) == (["abnormal"], "detect")
    assert resolve_alert_labels(["fan", "pump", "valve"], "none") == (["fan", "pump", "valve"], "identify")
    assert resolve_alert_labels(["fan", "pump", "valve"], "pump,valve") == (["pump", "valve"], "detect")
    with pytest.raises(ClassifierDataError, match="not among"):
        resolve_alert_labels(["fan", "pump"], "slider")
    with pytest.raises(ClassifierDataError, match="every label"):
        resolve_alert_labels(["fan", "pump"], "fan,pump")


# ---------------------------------------------------------------- shipped bundles

def _shipped(name: str) -> Path:
    path = MODELS_DIR / f"{name}.tflite"
    if not path.exists():
        pytest.skip(f"{path} is not built (python -m edge_monitor.training.build_shipped)")
    return path


def test_shipped_bundles_are_small_valid_classifiers() -> None:
    for name in ("normal-vs-abnormal", "fault-type", "machine-type"):
        path = _shipped(name)
        runner = load_model(path)
        assert runner.bundle.kind == "classifier"
        assert path.stat().st_size < 100_000
        assert runner.bundle.meta["training"]["file_label_rule"]


def _majority(runner, tmp_path: Path, machine: str, anomaly, *, severity: float = 0.9) -> str:
    """The label predicted for most of three fresh SYNTHETIC clips (seeds unseen in training)."""
    votes = []
    for seed in (9001, 9002, 9003):
        clip = write_clip(tmp_path / f"{machine}-{anomaly}-{seed}.wav", machine, anomaly, seed=seed, seconds=6.0,
                          severity=severity)
        votes.append(classify_file(runner, clip)[0])
    return max(set(votes), key=votes.count)


def test_shipped_machine_type_identifies_synthetic_machines(tmp_path: Path) -> None:
    runner = load_model(_shipped("machine-type"))
    assert runner.bundle.meta["purpose"] == "identify"
    assert runner.bundle.threshold == IDENTIFY_THRESHOLD
    for machine in ("fan", "pump", "slider", "valve"):
        assert _majority(runner, tmp_path, machine, None) == machine
    clip = write_clip(tmp_path / "any.wav", "valve", None, seed=1, seconds=3.0)
    assert not score_file(runner, clip).anomalous  # identify-only bundles never alert


def test_shipped_fault_type_names_clear_faults(tmp_path: Path) -> None:
    runner = load_model(_shipped("fault-type"))
    for fault in ("bearing", "leak", "blockage"):
        assert _majority(runner, tmp_path, "pump", fault, severity=1.0) == fault


def test_shipped_normal_vs_abnormal_flags_a_clear_fault(tmp_path: Path) -> None:
    runner = load_model(_shipped("normal-vs-abnormal"))
    normal = write_clip(tmp_path / "normal.wav", "fan", None, seed=9003, seconds=6.0)
    faulty = write_clip(tmp_path / "faulty.wav", "fan", "bearing", seed=9003, seconds=6.0, severity=1.0)
    assert score_file(runner, faulty).score > score_file(runner, normal).score
    assert score_file(runner, faulty).anomalous
    assert not score_file(runner, normal).anomalous
