"""The default `frames` detector, its Ledoit-Wolf estimator, and the per-machine benchmark. SYNTHETIC sounds."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.bundle import load_metadata
from edge_monitor.model import ModelError, load_model
from edge_monitor.scoring import score_file
from edge_monitor.training.unsupervised import DEFAULT_METHOD, ledoit_wolf, train_unsupervised
from tests.helpers.labelled_audio import write_clip

RATE_HZ = 16000


def _clip(path: Path, seed: int, anomaly=None, seconds: float = 10.0, machine: str = "fan") -> Path:
    return write_clip(path, machine, anomaly, seed=seed, seconds=seconds, severity=0.8)


def test_ledoit_wolf_matches_scikit_learn():
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    for n, d in ((40, 128), (300, 128), (5000, 16)):
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
        x -= x.mean(axis=0)
        ours, shrink = ledoit_wolf(x)
        ref = sklearn_cov.LedoitWolf(assume_centered=True).fit(x)
        assert shrink == pytest.approx(ref.shrinkage_, rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(ours, ref.covariance_, rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def frames_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    normals = [_clip(root / "normal" / f"n{i}.wav", seed=i) for i in range(2)]   # 20 s, as users often start
    out = root / "fan.tflite"
    summary = train_unsupervised(normals, out, seed=0, progress=lambda _m: None)
    return root, out, summary


def test_frames_is_the_default_and_trains_from_20_seconds(frames_model):
    _root, out, summary = frames_model
    assert DEFAULT_METHOD == "frames" and summary["method"] == "frames"
    assert summary["seconds"] == pytest.approx(20.0, abs=0.01)
    meta, _ = load_metadata(out)
    assert meta["kind"] == "embedding" and meta["score"]["type"] == "frame_norm"
    assert np.isfinite(meta["score"]["offset"]) and meta["threshold"] > 0
    assert meta["score"]["offset"] > 0 and "logit_column" not in meta["score"] and summary["outlier_bank_frames"] == 0
    assert meta["feature_spec"]["n_mels"] == 128 and meta["feature_spec"]["frames_per_window"] == 32
    assert meta["threshold_basis"]["heldout_scheme"].startswith("2-fold out-of-fold scores over recordings")


def test_one_recording_is_calibrated_on_its_parts_and_the_user_is_told(tmp_path):
    lines: list[str] = []
    clip = _clip(tmp_path / "normal" / "only.wav", seed=3, seconds=12.0)
    summary = train_unsupervised([clip], tmp_path / "m.tflite", seed=0, progress=lines.append)
    assert summary["threshold_basis"]["heldout_scheme"].startswith(
        "5-fold out-of-fold scores over contiguous parts of each recording")
    assert any("comes from 1 recording(s); the threshold can only learn how much this one recording varies" in line
               for line in lines)


def test_frames_model_is_one_int8_layer_that_every_runtime_has(frames_model):
    from edge_monitor.training.opcompat import op_versions, unsupported_ops

    _root, out, _summary = frames_model
    _meta, tflite = load_metadata(out)
    ops = op_versions(tflite)
    assert "FULLY_CONNECTED" in ops and not {"SQRT", "RSQRT", "MEAN"} & set(ops)
    assert unsupported_ops(tflite) == []


def test_frames_scores_a_fault_above_unseen_normal_audio(frames_model):
    root, out, _summary = frames_model
    runner = load_model(out)
    normal = score_file(runner, _clip(root / "test" / "normal.wav", seed=50))
    faulty = score_file(runner, _clip(root / "test" / "bearing.wav", seed=51, anomaly="bearing"))
    assert min(normal.windows) >= 0.0                    # offset removed, clipped at zero
    assert faulty.score > 2 * normal.score
    assert faulty.anomalous and not normal.anomalous


def test_frame_norm_bundle_with_a_bad_offset_is_refused(frames_model, tmp_path):
    from edge_monitor.training.export import replace_metadata

    _root, out, _summary = frames_model
    meta, _ = load_metadata(out)
    for bad in (-1.0, "x", float("inf"), True):
        broken = dict(meta, score=dict(meta["score"], offset=bad))
        path = tmp_path / "bad.tflite"
        try:
            path.write_bytes(replace_metadata(out.read_bytes(), broken))
        except ValueError:
            continue                                     # refused already when written: also fine
        with pytest.raises(ModelError, match="offset"):
            load_model(path)


def test_per_machine_benchmark_on_a_small_layout(tmp_path, capsys):
    pytest.importorskip("librosa")
    pytest.importorskip("sklearn")
    from edge_monitor.training import per_machine

    data = tmp_path / "data"
    d20 = data / "dcase2020_dev" / "fan"
    for i in range(2):
        _clip(d20 / f"normal_id_00_0000000{i}.wav", seed=10 + i)
    _clip(d20 / "anomaly_id_00_00000000.wav", seed=20, anomaly="bearing")
    mimii = data / "mimii_0db_ch0" / "pump" / "id_02"
    _clip(mimii / "normal" / "00000000.wav", seed=30, machine="pump")
    _clip(mimii / "abnormal" / "00000000.wav", seed=31, anomaly="leak", machine="pump")

    groups = per_machine.find_groups(data)
    assert [(g["set"], g["name"]) for g in groups] == [("dcase2020_dev", "fan id_00"), ("mimii_0db_ch0", "pump id_02")]
    out = tmp_path / "out"
    rc = per_machine.main(["--data", str(data), "--out", str(out), "--methods", "frames,librosa_lw",
                           "--skip-false-alarms"])
    assert rc == 0
    result = json.loads((out / "per_machine.json").read_text())
    levels = {g["name"]: (g["level"], g["folds"]) for g in result["groups"]}
    assert levels == {"fan id_00": ("file", 2), "pump id_02": ("window", 1)}
    for g in result["groups"]:
        for m in ("frames", "librosa_lw"):
            assert 0.0 <= g["methods"][m]["auc"] <= 1.0
            assert g["methods"][m]["anomalous"] == g["folds"] * g["anomalies"]
    assert result["summary"]["frames"]["ids"] == 2
    text = capsys.readouterr().out
    assert "### Means" in text and "| fan id_00 |" in text and "librosa_lw" in text
    assert "### Margin over the best peer (librosa_lw)" in text
    assert [r["method"] for r in result["margins"]] == ["frames"]


def test_per_machine_margin_is_taken_over_the_best_peer_with_a_paired_interval():
    from edge_monitor.training import per_machine

    def group(aucs: dict) -> dict:
        return {"methods": {m: {"auc": a} for m, a in aucs.items()}}
    groups = ([group({"frames": 1.0, "librosa_lw": 0.5, "stats": 0.5})] * 4
              + [group({"frames": 0.5, "librosa_lw": 0.5, "stats": 0.0})] * 16)
    (row,) = per_machine.margins(groups, ["frames", "librosa_lw", "stats"])
    assert row["peer"] == "librosa_lw"                  # 0.6 mean AUC against stats' 0.1
    assert row["difference"] == pytest.approx(0.1)
    assert (row["better"], row["worse"], row["tied"]) == (4, 0, 16)
    lo, hi = row["ci95"]
    assert 0.0 <= lo < 0.1 < hi <= 0.25
    assert per_machine.margins(groups, ["frames"]) == []     # no peer in the run: no margin


def test_per_machine_refuses_a_folder_without_machine_ids(tmp_path, capsys):
    from edge_monitor.training import per_machine

    assert per_machine.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no machine ID" in capsys.readouterr().err
