"""Outlier exposure with other machines' sound: the shipped bank, the logistic head, the bundle contract."""

from pathlib import Path

import numpy as np
import pytest

from edge_monitor.bundle import load_metadata
from edge_monitor.model import ModelError, load_model
from edge_monitor.scoring import score_file
from edge_monitor.training import outlier_bank as ob
from edge_monitor.training.unsupervised import train_unsupervised
from tests.helpers.labelled_audio import write_clip


def _clip(path: Path, seed: int, machine: str = "pump", anomaly=None, seconds: float = 10.0) -> Path:
    return write_clip(path, machine, anomaly, seed=seed, seconds=seconds, severity=0.8)


def test_logistic_regression_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    own = rng.normal(size=(400, 20))
    other = rng.normal(size=(1500, 20)) + rng.normal(size=20) * 0.7   # unbalanced, partly overlapping
    w, b = ob.fit_logistic(own, other)
    ref = linear_model.LogisticRegression(C=1.0 / ob.LOGISTIC_L2, class_weight="balanced", tol=1e-10,
                                          max_iter=5000).fit(np.concatenate([own, other]),
                                                             np.r_[np.zeros(400), np.ones(1500)])
    np.testing.assert_allclose(w, ref.coef_[0], rtol=1e-4, atol=1e-5)
    assert b == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-5)


def test_shipped_bank_holds_other_machines_and_leaves_one_out():
    keys = ob.bank_keys()
    assert len(keys) >= 20 and "fan id_04" in keys and any(k.startswith("dcase2023 ") for k in keys)
    full = ob.load_bank()
    assert full.shape[1] == ob.N_MELS and len(full) >= 5000
    np.testing.assert_allclose(full.mean(axis=1), 0.0, atol=0.2)     # level-free, to the 0.25 dB step
    without = ob.load_bank(exclude=["fan id_04"])
    assert 0 < len(full) - len(without) <= 10 * ob.FRAMES_PER_CLIP   # that machine's clips, and only them
    assert len(ob.load_bank(exclude=["no such machine"])) == len(full)


def test_a_missing_bank_is_a_clear_error(tmp_path):
    with pytest.raises(ob.BankError, match="missing or unreadable"):
        ob.load_bank(path=tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ob.BankError, match="bad.npz"):
        ob.load_bank(path=tmp_path / "bad.npz")


def test_machine_keys_follow_the_dataset_layouts(tmp_path):
    d = tmp_path
    assert ob.machine_key(d / "dcase2020_dev/fan/normal_id_04_00000001.wav", d) == "fan id_04"
    assert ob.machine_key(d / "dcase2020_dev/fan/anomaly_id_04_00000001.wav", d) is None   # never faults
    assert ob.machine_key(d / "mimii_0db_ch0/fan/id_04/normal/00000001.wav", d) == "fan id_04"
    assert ob.machine_key(d / "mimii/valve/id_06/abnormal/00000001.wav", d) is None
    assert ob.machine_key(d / "dcase2023/fan/train/section_00_source_train_normal_0001_x.wav", d) == \
        "dcase2023 fan section_00"
    assert ob.machine_key(d / "dcase2020_unlabelled_machine/id_00/normal/00000001.wav", d) is None


def test_build_bank_from_a_layout_round_trips(tmp_path):
    data = tmp_path / "data"
    _clip(data / "dcase2020_dev/pump/normal_id_02_00000000.wav", seed=1)
    _clip(data / "dcase2020_dev/pump/anomaly_id_02_00000000.wav", seed=2, anomaly="leak")
    _clip(data / "mimii_0db_ch0/fan/id_06/normal/00000000.wav", seed=3, machine="fan", seconds=2.0)
    out = tmp_path / "bank.npz"
    info = ob.build_bank(data, out, frames_per_clip=50)
    assert info == {"clips": 2, "machines": 2, "frames": 50 + 50, "bytes": out.stat().st_size}
    assert ob.bank_keys(out) == ["pump id_02", "fan id_06"]
    assert len(ob.load_bank(path=out)) == 100 and len(ob.load_bank(exclude=["fan id_06"], path=out)) == 50
    assert ob.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x.npz")]) == 2


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    normals = [_clip(root / "normal" / f"n{i}.wav", seed=i) for i in range(2)]
    with_bank, without = root / "bank.tflite", root / "plain.tflite"
    s1 = train_unsupervised(normals, with_bank, seed=0, outlier_bank=True, progress=lambda _m: None)
    s2 = train_unsupervised(normals, without, seed=0, progress=lambda _m: None)         # the default: no bank
    return root, with_bank, without, s1, s2


def test_the_bank_adds_one_output_column_and_its_scales(two_models):
    _root, with_bank, without, s1, s2 = two_models
    m1, _ = load_metadata(with_bank)
    m2, _ = load_metadata(without)
    assert m1["score"]["logit_column"] == 128 and m1["score"]["norm_scale"] > 0 and m1["score"]["logit_scale"] > 0
    assert "logit_column" not in m2["score"] and m2["score"]["offset"] >= 0
    assert load_model(with_bank).output_shape[-1] == 129 and load_model(without).output_shape[-1] == 128
    assert s1["outlier_bank_frames"] == len(ob.load_bank()) and s2["outlier_bank_frames"] == 0


def test_with_the_bank_a_fault_still_scores_above_unseen_normal_audio(two_models):
    root, with_bank, _without, _s1, _s2 = two_models
    runner = load_model(with_bank)
    normal = score_file(runner, _clip(root / "test" / "normal.wav", seed=60))
    faulty = score_file(runner, _clip(root / "test" / "leak.wav", seed=61, anomaly="leak"))
    assert min(normal.windows) >= 0.0
    assert faulty.score > 2 * normal.score and faulty.anomalous and not normal.anomalous


def test_bad_outlier_fields_are_refused(two_models, tmp_path):
    from edge_monitor.training.export import replace_metadata

    _root, with_bank, without, _s1, _s2 = two_models
    cases = [(with_bank, {"logit_column": 127}, "logit_column"), (with_bank, {"logit_column": True}, "logit_column"),
             (with_bank, {"logit_column": "128"}, "logit_column"), (with_bank, {"norm_scale": 0.0}, "scale"),
             (with_bank, {"logit_scale": -1.0}, "scale"), (with_bank, {"logit_scale": float("nan")}, "logit_scale"),
             (without, {"offset": -1.0}, "offset"), (without, {"logit_column": 128}, "logit_column")]
    for model, change, match in cases:
        meta, _ = load_metadata(model)
        path = tmp_path / "bad.tflite"
        try:
            path.write_bytes(replace_metadata(model.read_bytes(), dict(meta, score=dict(meta["score"], **change))))
        except ValueError:
            continue                                     # refused already when written: also fine
        with pytest.raises(ModelError, match=match):
            load_model(path)
