"""Tests for dataset discovery, labelling, audio loading and splits (edge_monitor.training.datasets).

The fake trees hold real WAV files written to tmp_path. Tests against the real
recordings in ../shared/data/real run only where that folder exists.
"""

from __future__ import annotations

import logging
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.training import datasets, synthetic
from edge_monitor.training.datasets import Clip, DatasetError
from edge_monitor.wavio import read_wav, write_wav

FS = 16000
REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def _tone(seconds: float = 0.1, rate_hz: int = FS, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (level * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _wav(path: Path, samples: np.ndarray | None = None, rate_hz: int = FS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, _tone(rate_hz=rate_hz) if samples is None else samples, rate_hz)
    return path


def _write_extensible_wav(path: Path, samples: np.ndarray, rate_hz: int) -> Path:
    """A 16-bit WAVE_FORMAT_EXTENSIBLE file like MIMII's (Python's wave module rejects these)."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    channels = pcm.shape[1]
    data = pcm.tobytes()
    pcm_guid = struct.pack("<IHH", 1, 0x0000, 0x0010) + bytes([0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71])
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate_hz, rate_hz * channels * 2, channels * 2, 16, 22, 16,
                      (1 << channels) - 1) + pcm_guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _eight_channels(frames: int = 1600) -> np.ndarray:
    """(frames, 8): channel k holds the constant 0.01 * (k + 1), so any mix-up shows."""
    return np.tile(0.01 * np.arange(1, 9, dtype=np.float32), (frames, 1))


@pytest.fixture
def mimii_tree(tmp_path: Path) -> Path:
    root = tmp_path / "mimii"
    _write_extensible_wav(root / "valve" / "id_00" / "normal" / "00000000.wav", _eight_channels(), FS)
    _write_extensible_wav(root / "valve" / "id_00" / "abnormal" / "00000003.wav", _eight_channels(), FS)
    _wav(root / "pump" / "id_06" / "normal" / "00000010.wav")
    _wav(root / "pump" / "id_06" / "normal" / "00000002.wav")
    return root


def test_mimii_layout_labels_machines_and_ids(mimii_tree):
    assert datasets.detect_layout(mimii_tree) == "mimii"
    clips = datasets.load_dataset(mimii_tree)
    got = [(c.path.relative_to(mimii_tree).as_posix(), c.label, c.machine, c.machine_id) for c in clips]
    assert got == [
        ("pump/id_06/normal/00000002.wav", "normal", "pump", "id_06"),
        ("pump/id_06/normal/00000010.wav", "normal", "pump", "id_06"),
        ("valve/id_00/abnormal/00000003.wav", "anomaly", "valve", "id_00"),
        ("valve/id_00/normal/00000000.wav", "normal", "valve", "id_00"),
    ]
    assert [c.is_anomaly for c in clips] == [False, False, True, False]
    assert all(c.layout == "mimii" and c.domain == "source" and c.attributes == {} for c in clips)


def test_eight_channel_extensible_wav_channel_selection_and_mean(mimii_tree):
    clip = [c for c in datasets.load_dataset(mimii_tree) if c.machine == "valve" and c.label == "normal"][0]
    samples, _ = read_wav(clip.path)
    assert samples.shape == (1600, 8)
    third = datasets.load_audio(clip, FS, channel=3)
    assert third.dtype == np.float32 and third.shape == (1600,)
    np.testing.assert_allclose(third, 0.04, atol=1e-4)
    np.testing.assert_allclose(datasets.load_audio(clip, FS, channel=-1), 0.08, atol=1e-4)
    np.testing.assert_allclose(datasets.load_audio(clip, FS), 0.045, atol=1e-4)
    np.testing.assert_allclose(datasets.load_audio(clip.path, FS, channel="mean"), 0.045, atol=1e-4)
    with pytest.raises(DatasetError, match=r"channel 8 .* 8 channel"):
        datasets.load_audio(clip, FS, channel=8)
    with pytest.raises(DatasetError, match="'left'"):
        datasets.load_audio(clip, FS, channel="left")


def test_dcase2020_layout_in_train_and_test_folders(tmp_path):
    root = tmp_path / "dev"
    _wav(root / "fan" / "train" / "normal_id_00_00000001.wav")
    _wav(root / "fan" / "train" / "normal_id_00_00000000.wav")
    _wav(root / "fan" / "test" / "anomaly_id_02_00000007.wav")
    _wav(root / "ToyCar" / "test" / "normal_id_03_00000000.wav")
    assert datasets.detect_layout(root) == "dcase2020"
    clips = datasets.load_dataset(root)
    got = [(c.path.name, c.label, c.machine, c.machine_id, c.split) for c in clips]
    assert got == [
        ("normal_id_03_00000000.wav", "normal", "ToyCar", "id_03", "test"),
        ("anomaly_id_02_00000007.wav", "anomaly", "fan", "id_02", "test"),
        ("normal_id_00_00000000.wav", "normal", "fan", "id_00", "train"),
        ("normal_id_00_00000001.wav", "normal", "fan", "id_00", "train"),
    ]


def test_dcase2020_files_in_any_folder_use_the_enclosing_folder_as_machine(tmp_path):
    folder = tmp_path / "my_pump" / "id_00" / "normal"
    _wav(folder / "normal_id_00_00000000.wav")
    clips = datasets.load_dataset(folder)
    assert [(c.layout, c.machine, c.machine_id, c.label, c.split) for c in clips] == [
        ("dcase2020", "my_pump", "id_00", "normal", "")]


def test_dcase2021_layout_parses_domain_split_and_attributes(tmp_path):
    root = tmp_path / "dcase2023"
    names = {
        "slider/train/section_00_source_train_normal_0959_vel_490_ac_0.05.wav":
            ("slider", "section_00", "source", "train", "normal", {"vel": "490", "ac": "0.05"}),
        "fan/test/section_01_target_test_anomaly_0022_m-n_W.wav":
            ("fan", "section_01", "target", "test", "anomaly", {"m-n": "W"}),
        "ToyCar/test/section_02_source_test_anomaly_0001_car_C2_spd_34V_mic_1.wav":
            ("ToyCar", "section_02", "source", "test", "anomaly", {"car": "C2", "spd": "34V", "mic": "1"}),
        "bearing/train/section_00_source_train_normal_0001_noAttributes.wav":
            ("bearing", "section_00", "source", "train", "normal", {}),
        "pump/train/section_00_target_train_normal_0003_strength_1_ambient.wav":
            ("pump", "section_00", "target", "train", "normal", {"strength": "1", "ambient": ""}),
        "valve/train/section_04_source_train_normal_0000.wav":
            ("valve", "section_04", "source", "train", "normal", {}),
        "valve/test/section_03_0007.wav":
            ("valve", "section_03", "source", "test", "unknown", {}),
    }
    for rel in names:
        _wav(root / rel)
    assert datasets.detect_layout(root) == "dcase2021"
    clips = datasets.load_dataset(root)
    assert len(clips) == len(names)
    for c in clips:
        want = names[c.path.relative_to(root).as_posix()]
        assert (c.machine, c.machine_id, c.domain, c.split, c.label, c.attributes) == want
    unlabelled = [c for c in clips if c.label == "unknown"]
    assert len(unlabelled) == 1 and not unlabelled[0].is_anomaly


def test_parse_attributes_pairs_keys_and_values():
    assert datasets.parse_attributes("vel_620_ac_0.08") == {"vel": "620", "ac": "0.08"}
    assert datasets.parse_attributes("m-n_W") == {"m-n": "W"}
    assert datasets.parse_attributes("noAttribute") == {}
    assert datasets.parse_attributes("") == {}


def test_folder_per_label_layout(tmp_path, caplog):
    root = tmp_path / "classes"
    _wav(root / "normal" / "a.wav")
    _wav(root / "normal" / "b.WAV")
    _wav(root / "bearing_fault" / "run1" / "c.wav")
    _wav(root / "loose.wav")
    (root / "notes.txt").write_text("not audio")
    _wav(root / ".hidden" / "x.wav")
    assert datasets.detect_layout(root) == "folders"
    with caplog.at_level(logging.WARNING, logger="edge_monitor.training.datasets"):
        clips = datasets.load_dataset(root)
    assert [(c.path.relative_to(root).as_posix(), c.label, c.is_anomaly) for c in clips] == [
        ("bearing_fault/run1/c.wav", "bearing_fault", True),
        ("normal/a.wav", "normal", False),
        ("normal/b.WAV", "normal", False),
    ]
    assert "ignored 1 WAV" in caplog.text


def test_mixed_tree_loads_every_named_layout_and_skips_the_rest(tmp_path, mimii_tree, caplog):
    _wav(mimii_tree / "dcase" / "fan" / "train" / "normal_id_00_00000000.wav")
    _wav(mimii_tree / "misc" / "unlabelled.wav")
    assert datasets.detect_layout(mimii_tree) == "mixed"
    with caplog.at_level(logging.WARNING, logger="edge_monitor.training.datasets"):
        clips = datasets.load_dataset(mimii_tree)
    assert sorted({c.layout for c in clips}) == ["dcase2020", "mimii"]
    assert len(clips) == 5
    assert "unlabelled.wav" in caplog.text
    only_mimii = datasets.load_dataset(mimii_tree, layout="mimii")
    assert len(only_mimii) == 4 and {c.layout for c in only_mimii} == {"mimii"}
    everything = datasets.load_dataset(mimii_tree, layout="files")
    assert len(everything) == 6 and {c.label for c in everything} == {"unknown"}


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no .wav files"),
    (lambda d: (d / "readme.txt").write_text("x"), "no .wav files"),
    (lambda d: _wav(d / "recording.wav"), "no label sub-folders"),
])
def test_unrecognisable_folder_errors_name_the_folder_and_the_expected_layouts(tmp_path, setup, message):
    folder = tmp_path / "my data"
    folder.mkdir()
    setup(folder)
    for call in (datasets.load_dataset, datasets.detect_layout):
        with pytest.raises(DatasetError) as err:
            call(folder)
        assert str(folder) in str(err.value)
        assert message in str(err.value)
        assert "id_XX/{normal,abnormal}" in str(err.value) and "section_XX" in str(err.value)


def test_missing_folder_and_unknown_layout_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="'mimi'"):
        datasets.load_dataset(tmp_path, layout="mimi")
    _wav(tmp_path / "a" / "b.wav")
    with pytest.raises(DatasetError, match="dcase2021 layout"):
        datasets.load_dataset(tmp_path, layout="dcase2021")


def test_sample_rate_mismatch_is_an_error_unless_resampling_is_asked_for(tmp_path):
    path = _wav(tmp_path / "slow.wav", _tone(1.0, 8000), 8000)
    with pytest.raises(DatasetError, match=r"8000 Hz but 16000 Hz is expected"):
        datasets.load_audio(path, 16000)
    assert datasets.load_audio(path, None).shape == (8000,)
    assert datasets.load_audio(path, 8000).shape == (8000,)
    up = datasets.load_audio(path, 16000, resample=True)
    assert up.dtype == np.float32 and abs(up.size - 16000) <= 2
    # the 440 Hz tone survives the conversion
    spec = np.abs(np.fft.rfft(up[1000:15000]))
    assert abs(np.argmax(spec) * 16000 / 14000 - 440.0) < 5.0


def _numbered_clips(n: int) -> list[Clip]:
    return [Clip(path=Path(f"/data/m/clip_{i}.wav"), label="normal", machine="m", machine_id="id_00")
            for i in range(n)]


def test_split_is_deterministic_whatever_the_listing_order():
    clips = _numbered_clips(75)
    shuffled = clips[:]
    random.Random(4).shuffle(shuffled)
    a = datasets.split(clips, (40, 35), seed=7)
    b = datasets.split(shuffled, (40, 35), seed=7)
    assert a == b
    assert [len(p) for p in a] == [40, 35]
    assert set(a[0]).isdisjoint(a[1]) and set(a[0]) | set(a[1]) == set(clips)
    assert a[0] != datasets.take_first(clips, 40)[0]  # shuffled, not the first 40
    assert datasets.split(clips, (40, 35), seed=8) != a


def test_split_by_fractions_covers_everything():
    clips = _numbered_clips(10)
    train, val, test = datasets.split(clips, (0.6, 0.25, 0.15), seed=1)
    assert (len(train), len(val), len(test)) == (6, 2, 2) or (len(train), len(val), len(test)) == (6, 3, 1)
    assert sorted(train + val + test, key=datasets.natural_key) == datasets.sort_clips(clips)
    half = datasets.split(clips, (0.5,), seed=1)
    assert len(half) == 1 and len(half[0]) == 5
    with pytest.raises(DatasetError, match="sum to at most 1"):
        datasets.split(clips, (0.7, 0.7))
    with pytest.raises(DatasetError, match="need 11 clips but there are 10"):
        datasets.split(clips, (6, 5))


def test_take_first_sorts_numbers_by_value():
    clips = _numbered_clips(12)
    shuffled = clips[::-1]
    first, rest = datasets.take_first(shuffled, 3)
    assert [c.path.name for c in first] == ["clip_0.wav", "clip_1.wav", "clip_2.wav"]
    assert [c.path.name for c in rest][:2] == ["clip_3.wav", "clip_4.wav"] and len(rest) == 9
    with pytest.raises(DatasetError, match="first 13 clips but there are 12"):
        datasets.take_first(clips, 13)


def test_summary_counts_clips():
    clips = _numbered_clips(3) + [Clip(path=Path("/x/a.wav"), label="anomaly", machine="m", machine_id="id_02")]
    s = datasets.summary(clips)
    assert s["label"] == {"anomaly": 1, "normal": 3}
    assert s["machine_id"] == {"id_00": 3, "id_02": 1}


def test_synthetic_datasets_load_in_both_layouts(tmp_path):
    synthetic.write_dataset(tmp_path / "mimii", machines=["fan", "valve"], instances=[0, 2], n_normal=2,
                            n_abnormal=1, seconds=0.25, seed=1)
    clips = datasets.load_dataset(tmp_path / "mimii")
    assert datasets.detect_layout(tmp_path / "mimii") == "mimii"
    assert datasets.summary(clips)["machine"] == {"fan": 6, "valve": 6}
    assert datasets.summary(clips)["label"] == {"anomaly": 4, "normal": 8}
    assert datasets.load_audio(clips[0], FS).shape == (4000,)
    synthetic.write_dataset(tmp_path / "folders", machines=["pump"], n_normal=2, n_abnormal=2, seconds=0.25,
                            seed=1, layout="folders")
    labels = [c.label for c in datasets.load_dataset(tmp_path / "folders")]
    assert sorted(labels) == ["bearing", "imbalance", "normal", "normal"]


# ---------------------------------------------------------------- real recordings (only where present)

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real recordings not present at {REAL}")


@needs_real
def test_real_mimii_eight_channel_clips():
    clips = datasets.load_dataset(REAL / "mimii")
    assert clips and {c.layout for c in clips} == {"mimii"}
    assert {c.machine for c in clips} <= {"valve", "pump"}
    assert any(c.is_anomaly for c in clips) and any(not c.is_anomaly for c in clips)
    samples, rate = read_wav(clips[0].path)
    assert rate == FS and samples.shape[1] == 8
    mean = datasets.load_audio(clips[0], FS)
    np.testing.assert_allclose(mean, samples.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(datasets.load_audio(clips[0], FS, channel=5), samples[:, 5])


@needs_real
def test_real_dcase2023_attributes():
    clips = datasets.load_dataset(REAL / "dcase2023")
    assert {c.layout for c in clips} == {"dcase2021"}
    slider = [c for c in clips if c.machine == "slider"]
    assert slider and all(set(c.attributes) == {"vel", "ac"} for c in slider)
    assert {c.domain for c in clips} == {"source", "target"}
    assert {c.label for c in clips} == {"normal", "anomaly"}


@needs_real
def test_real_dcase2020_first_40_of_75():
    clips = datasets.load_dataset(REAL / "dcase2020_unlabelled_machine")
    assert len(clips) == 75 and all(c.label == "normal" and c.machine_id == "id_00" for c in clips)
    train, held_out = datasets.take_first(clips, 40)
    assert train[0].path.name == "normal_id_00_00000000.wav"
    assert train[-1].path.name == "normal_id_00_00000039.wav"
    assert len(held_out) == 35
    audio = datasets.load_audio(train[0], FS)
    assert audio.shape == (10 * FS,) and 0.0 < np.abs(audio).max() < 1.0
