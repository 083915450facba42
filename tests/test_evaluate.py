"""evaluate: report files, metrics that match a direct computation, autoencoder and classifier bundles, bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.model import load_model
from edge_monitor.scoring import score_file
from edge_monitor.training import metrics
from edge_monitor.training.evaluate import add_evaluate_arguments, evaluate, run_evaluate
from tests.helpers.labelled_audio import write_label_folders, write_mimii_layout
from tests.helpers.tiny_models import tiny_autoencoder, tiny_classifier  # noqa: F401

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def mimii_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SYNTHETIC pump clips in the MIMII layout, with one 35 s abnormal recording."""
    return write_mimii_layout(tmp_path_factory.mktemp("evaldata"), n_normal=5, n_abnormal=4, long_seconds=35.0)


def _check_report(report_dir: Path, expect_pngs: list[str]) -> dict:
    index = (report_dir / "index.html").read_text()
    for name in expect_pngs:
        data = (report_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"src='{name}'" in index, name
    return json.loads((report_dir / "report.json").read_text())


def _direct_auc(model: Path, report: dict) -> float:
    runner = load_model(model)
    y, s = [], []
    for row in report["files"]:
        y.append(Path(row["file"]).parent.name == "abnormal")
        s.append(score_file(runner, row["file"]).score)
    return metrics.roc_auc(np.array(y), np.array(s))


@pytest.mark.timeout(600)
def test_autoencoder_report(tiny_autoencoder: Path, mimii_data: Path, tmp_path: Path,  # noqa: F811
                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    rc = run_evaluate(_args("--model", str(tiny_autoencoder), "--data", str(mimii_data), "--report", str(out)))
    assert rc == 0
    report = _check_report(out, ["roc.png", "histogram.png", "confusion.png", "timeline.png", "timeline_1.png"])
    assert report["model"]["kind"] == "autoencoder"
    assert report["dataset"]["files"] == 10
    assert report["dataset"]["labels"] == {"anomaly": 5, "normal": 5}
    b = report["binary"]
    assert b["auc"] == pytest.approx(_direct_auc(tiny_autoencoder, report), abs=1e-12)
    y = [r["anomalous_truth"] for r in report["files"]]
    s = [r["score"] for r in report["files"]]
    assert b["pauc"] == pytest.approx(metrics.partial_auc(y, s, 0.1))
    st = metrics.at_threshold(y, s, report["model"]["threshold"])
    assert (b["at_threshold"]["precision"], b["at_threshold"]["recall"]) == (st.precision, st.recall)
    assert b["confusion"]["matrix"] == [[st.tn, st.fp], [st.fn, st.tp]]
    assert report["per_machine"]["pump"]["files"] == 10
    assert "scored 10/10 files" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_classifier_report_has_label_confusion(tiny_classifier: Path, tmp_path: Path) -> None:  # noqa: F811
    data = write_label_folders(tmp_path / "data", per_label=2, seconds=2.0)
    report = evaluate(tiny_classifier, data, tmp_path / "report", progress=lambda _m: None)
    _check_report(tmp_path / "report", ["roc.png", "histogram.png", "confusion.png", "confusion_labels.png",
                                        "timeline.png"])
    assert report["dataset"]["truth_rule"].startswith("anomalous = label in the bundle's alert labels")
    lc = report["label_confusion"]
    assert lc["labels"] == ["normal", "bearing", "leak"]
    assert int(np.sum(lc["matrix"])) == 6
    normal_rows = [r for r in report["files"] if r["label"] == "normal"]
    assert all(r["anomalous_truth"] is False for r in normal_rows)
    for r in report["files"]:  # the classifier's score is the summed probability of its alert labels
        assert r["score"] == pytest.approx(r["probabilities"]["bearing"] + r["probabilities"]["leak"], abs=0.02)


def test_shipped_classifier_report(tmp_path: Path, mimii_data: Path) -> None:
    model = Path(__file__).resolve().parent.parent / "models" / "normal-vs-abnormal.tflite"
    if not model.exists():
        pytest.skip("models/normal-vs-abnormal.tflite not built")
    report = evaluate(model, mimii_data, tmp_path / "report", progress=lambda _m: None)
    _check_report(tmp_path / "report", ["roc.png", "histogram.png", "confusion.png"])
    assert report["binary"]["auc"] == pytest.approx(_direct_auc(model, report), abs=1e-12)


def test_missing_data_exits_2(tiny_autoencoder: Path, tmp_path: Path,  # noqa: F811
                              capsys: pytest.CaptureFixture) -> None:
    rc = run_evaluate(_args("--model", str(tiny_autoencoder), "--data", str(tmp_path / "nope"),
                            "--report", str(tmp_path / "r")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]


def test_not_a_model_exits_2(mimii_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a model at all")
    rc = run_evaluate(_args("--model", str(fake), "--data", str(mimii_data), "--report", str(tmp_path / "r")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "fake.tflite" in err[0]
    assert not (tmp_path / "r" / "report.json").exists()
