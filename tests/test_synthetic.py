"""Tests for the SYNTHETIC machine-sound generator (edge_monitor.training.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_monitor.training import synthetic
from edge_monitor.wavio import read_wav

FS = 16000
SECONDS = 5.0


def _band_power(x: np.ndarray, lo_hz: float, hi_hz: float, fs: int = FS) -> float:
    """Mean power of ``x`` between two frequencies."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1.0 / fs)
    return float(spec[(f >= lo_hz) & (f < hi_hz)].sum() / x.size ** 2)


def _band_pass(x: np.ndarray, lo_hz: float, hi_hz: float, fs: int = FS) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / fs)
    spec[(f < lo_hz) | (f >= hi_hz)] = 0.0
    return np.fft.irfft(spec, x.size)


def _kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.mean(x ** 4) / np.mean(x ** 2) ** 2)


def _db(ratio: float) -> float:
    return 10.0 * float(np.log10(ratio))


def _machine(machine: str, anomaly=None, severity=0.8, seed=7, instance=0, snr_db=None) -> np.ndarray:
    """The clip in float64: machine only when ``snr_db`` is None, else machine plus background."""
    parts = synthetic.generate_parts(machine, SECONDS, FS, seed=seed, instance=instance, anomaly=anomaly,
                                     severity=severity, snr_db=snr_db)
    return parts.machine + parts.background


def _onsets(x: np.ndarray, frame: int = 80) -> int:
    """Number of 5 ms frames whose energy jumps to over 3 times that of the 4 frames before."""
    energy = np.mean(x[: x.size // frame * frame].reshape(-1, frame) ** 2, axis=1)
    before = np.convolve(energy, np.ones(4) / 4.0, "full")[: energy.size]
    before = np.r_[energy[0], before[:-1]]
    return int(np.sum(energy[4:] > 3.0 * before[4:]))


def test_same_seed_gives_identical_clip_and_other_seeds_differ():
    a = synthetic.generate("fan", 2.0, seed=11, instance=2, anomaly="bearing", severity=0.4)
    b = synthetic.generate("fan", 2.0, seed=11, instance=2, anomaly="bearing", severity=0.4)
    c = synthetic.generate("fan", 2.0, seed=12, instance=2, anomaly="bearing", severity=0.4)
    assert a.dtype == np.float32 and a.shape == (32000,)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_instances_have_different_physical_parameters():
    p0 = synthetic.instance_parameters("fan", 0)
    p2 = synthetic.instance_parameters("fan", 2)
    assert p0 == synthetic.instance_parameters("fan", 0)
    assert p0["shaft_hz"] != p2["shaft_hz"]
    assert 15.0 < p0["shaft_hz"] < 30.0
    x0 = synthetic.generate("fan", 2.0, seed=1, instance=0)
    x2 = synthetic.generate("fan", 2.0, seed=1, instance=2)
    assert not np.allclose(x0, x2)


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_level_is_sensible_and_nothing_clips(machine):
    normal = synthetic.generate(machine, SECONDS, seed=3)
    rms_dbfs = 20.0 * np.log10(np.sqrt(np.mean(normal.astype(np.float64) ** 2)))
    assert -32.0 < rms_dbfs < -18.0
    assert np.max(np.abs(normal)) < synthetic.PEAK_LIMIT
    for anomaly in synthetic.ANOMALIES:
        loud = synthetic.generate(machine, 2.0, seed=3, anomaly=anomaly, severity=1.0, snr_db=-5.0)
        assert np.isfinite(loud).all()
        assert 0.0 < np.max(np.abs(loud)) < synthetic.PEAK_LIMIT


@pytest.mark.parametrize("machine", synthetic.MACHINES)
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 25.0])
def test_background_is_mixed_at_the_requested_snr(machine, snr_db):
    parts = synthetic.generate_parts(machine, 3.0, seed=5, anomaly="leak", severity=0.3, snr_db=snr_db)
    measured = _db(np.mean(parts.machine ** 2) / np.mean(parts.background ** 2))
    assert abs(measured - snr_db) < 0.5
    np.testing.assert_allclose(parts.mix, (parts.machine + parts.background).astype(np.float32))


def test_no_background_when_snr_is_none():
    parts = synthetic.generate_parts("pump", 1.0, seed=5, snr_db=None)
    assert not parts.background.any()
    assert np.sqrt(np.mean(parts.machine ** 2)) > 0.02


def test_background_is_pink_ish_with_hum_and_transients():
    parts = synthetic.generate_parts("pipe", 20.0, seed=9, snr_db=0.0)
    bg = parts.background
    low, high = _band_power(bg, 20, 200), _band_power(bg, 2000, 8000)
    assert low > 3.0 * high  # energy falls with frequency
    mains = _band_power(bg, 49, 51) / _band_power(bg, 40, 60)
    assert mains > 0.3  # the 50 Hz hum stands out of its neighbourhood
    assert _kurtosis(_band_pass(bg, 700, 4000)) > 4.0  # clatter transients


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_imbalance_raises_shaft_rate_modulation(machine):
    shaft_hz = synthetic.instance_parameters(machine)["shaft_hz"]

    def modulation(x: np.ndarray) -> float:
        envelope = np.abs(x)
        return _band_power(envelope, 0.93 * shaft_hz, 1.07 * shaft_hz) / _band_power(envelope, 2.0, 200.0)

    normal = modulation(_machine(machine, snr_db=10.0))
    faint = modulation(_machine(machine, "imbalance", 0.1, snr_db=10.0))
    strong = modulation(_machine(machine, "imbalance", 0.9, snr_db=10.0))
    assert strong > 3.0 * normal
    assert strong > faint


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_bearing_fault_adds_impulsive_high_frequency_energy(machine):
    band = (2000.0, 6000.0)
    normal = _band_pass(_machine(machine, seed=4, snr_db=10.0), *band)
    faulty = _band_pass(_machine(machine, "bearing", 0.9, seed=4, snr_db=10.0), *band)
    assert _kurtosis(faulty) > _kurtosis(normal) + 1.0 or np.mean(faulty ** 2) > 2.0 * np.mean(normal ** 2)
    if machine in ("fan", "pump", "pipe"):  # steady machines: the impulses alone raise the kurtosis
        assert _kurtosis(faulty) > _kurtosis(normal) + 1.0


def test_bearing_impulses_repeat_at_the_fault_frequency():
    fault_hz = synthetic.instance_parameters("pump")["bearing_fault_hz"]
    normal = _machine("pump", seed=2)
    faulty = _machine("pump", "bearing", 0.9, seed=2)
    envelope = np.abs(_band_pass(faulty - normal, 2000.0, 6000.0))
    spec = np.abs(np.fft.rfft(envelope - envelope.mean()))
    f = np.fft.rfftfreq(envelope.size, 1.0 / FS)
    search = (f > 20.0) & (f < 400.0)
    assert abs(f[search][np.argmax(spec[search])] - fault_hz) < 0.05 * fault_hz


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_leak_raises_energy_above_4khz(machine):
    normal = _machine(machine, snr_db=10.0)
    leak = _machine(machine, "leak", 0.8, snr_db=10.0)
    assert _band_power(leak, 4000.0, 8000.0) > 2.0 * _band_power(normal, 4000.0, 8000.0)
    assert _band_power(leak, 4000.0, 8000.0) / _band_power(leak, 0.0, 8000.0) > 0.15


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_blockage_lowers_spectral_centroid_and_level(machine):
    def centroid(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(x.size, 1.0 / FS)
        return float((spec * f).sum() / spec.sum())

    normal = _machine(machine)
    blocked = _machine(machine, "blockage", 0.9)
    assert centroid(blocked) < 0.9 * centroid(normal)
    assert np.mean(blocked ** 2) < 0.8 * np.mean(normal ** 2)


def test_blockage_drops_the_fan_blade_pass_pitch():
    p = synthetic.instance_parameters("fan")
    bpf_hz = p["blades"] * p["shaft_hz"]

    def peak_hz(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x))
        f = np.fft.rfftfreq(x.size, 1.0 / FS)
        near = (f > 0.8 * bpf_hz) & (f < 1.1 * bpf_hz)
        return float(f[near][np.argmax(spec[near])])

    normal, blocked = peak_hz(_machine("fan")), peak_hz(_machine("fan", "blockage", 1.0))
    assert abs(normal - bpf_hz) < 0.02 * bpf_hz
    assert blocked < normal - 0.04 * bpf_hz


@pytest.mark.parametrize("machine", synthetic.MACHINES)
def test_chatter_adds_rapid_clicks(machine):
    band = (1000.0, 4000.0)
    normal = _band_pass(_machine(machine, seed=6, snr_db=10.0), *band)
    chatter = _band_pass(_machine(machine, "chatter", 0.9, seed=6, snr_db=10.0), *band)
    assert _onsets(chatter) > _onsets(normal) + 5.0 * SECONDS  # at least 5 more clicks a second
    assert _kurtosis(chatter) > _kurtosis(normal) + 2.0


@pytest.mark.parametrize("anomaly", ["imbalance", "bearing", "leak", "chatter"])
def test_severity_near_zero_is_subtle(anomaly):
    normal = _machine("fan", seed=8)
    faint = _machine("fan", anomaly, 0.0, seed=8)
    strong = _machine("fan", anomaly, 1.0, seed=8)
    faint_db = _db(np.mean((faint - normal) ** 2) / np.mean(normal ** 2))
    strong_db = _db(np.mean((strong - normal) ** 2) / np.mean(normal ** 2))
    assert faint_db < -20.0
    assert strong_db > faint_db + 15.0


def test_blockage_near_zero_is_subtle():
    normal_rms = np.sqrt(np.mean(_machine("pipe") ** 2))
    faint_rms = np.sqrt(np.mean(_machine("pipe", "blockage", 0.0) ** 2))
    assert abs(20 * np.log10(faint_rms / normal_rms)) < 1.5


def test_sequence_fades_the_fault_in_and_out_without_clicks():
    join_s, fade = 3.0, synthetic.FADE_SECONDS
    segments = [("normal", join_s), ("leak", 3.0, 1.0), ("normal", 3.0)]
    seq = synthetic.sequence_parts("fan", segments, FS, seed=4, snr_db=None).machine
    plain = synthetic.generate_parts("fan", 9.0, FS, seed=4, snr_db=None).machine
    untouched = int((join_s - fade / 2) * FS) - 1
    np.testing.assert_allclose(seq[:untouched], plain[:untouched], rtol=0, atol=1e-12)
    assert not np.allclose(seq[untouched + int(fade * FS):], plain[untouched + int(fade * FS):])

    hf = (seq - plain) ** 2  # the leak's contribution, in 10 ms frames
    frames = np.mean(hf[: hf.size // 160 * 160].reshape(-1, 160), axis=1)
    full = np.median(frames[int(3.5 * 100):int(5.5 * 100)])
    join = int(join_s * 100)
    ramp = frames[join - 10: join + 10]
    assert ramp[0] < 0.05 * full and ramp[-1] > 0.5 * full  # rises across the 0.2 s fade
    assert np.max(frames) < 4.0 * full  # no burst at the joins
    assert np.max(frames[int(6.2 * 100):]) < 0.05 * full  # and it fades away again


def test_sequence_keeps_the_machine_phase_continuous_through_a_blockage():
    segments = [("normal", 2.0), ("blockage", 2.0, 1.0), ("normal", 2.0)]
    x = synthetic.sequence_parts("fan", segments, FS, seed=1, snr_db=None).machine
    step = np.abs(np.diff(x))
    joins = np.r_[int(2.0 * FS) - 1600:int(2.0 * FS) + 1600, int(4.0 * FS) - 1600:int(4.0 * FS) + 1600]
    assert step[joins].max() < 1.2 * np.percentile(step, 99.99)
    full = synthetic.generate_sequence("fan", segments, FS, seed=1)
    assert full.shape == (6 * FS,) and np.max(np.abs(full)) < synthetic.PEAK_LIMIT


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100])
def test_other_sample_rates(rate_hz):
    for machine in synthetic.MACHINES:
        x = synthetic.generate(machine, 0.5, rate_hz, seed=1, anomaly="leak", severity=0.9)
        assert x.shape == (int(0.5 * rate_hz),)
        assert np.isfinite(x).all() and np.max(np.abs(x)) < synthetic.PEAK_LIMIT
        assert np.std(x) > 0.005


def test_bad_arguments_are_named_in_the_error():
    with pytest.raises(ValueError, match="'drill'"):
        synthetic.generate("drill", 1.0, seed=0)
    with pytest.raises(ValueError, match="'rust'"):
        synthetic.generate("fan", 1.0, seed=0, anomaly="rust")
    with pytest.raises(ValueError, match="severity"):
        synthetic.generate("fan", 1.0, seed=0, anomaly="leak", severity=1.5)
    with pytest.raises(ValueError, match="seconds"):
        synthetic.generate_sequence("fan", [("normal", 0.0)], seed=0)


def test_write_dataset_mimii_layout(tmp_path):
    paths = synthetic.write_dataset(tmp_path, machines=["valve", "pump"], instances=[0, 2], n_normal=2,
                                    n_abnormal=1, seconds=0.5, seed=3)
    assert len(paths) == 2 * 2 * 3
    assert (tmp_path / "valve" / "id_02" / "normal" / "00000001.wav") in paths
    assert (tmp_path / "pump" / "id_00" / "abnormal" / "00000002.wav") in paths
    assert "SYNTHETIC" in (tmp_path / "SYNTHETIC.txt").read_text()
    samples, rate = read_wav(paths[0])
    assert rate == FS and samples.shape == (8000, 1) and np.abs(samples).max() > 0.01


def test_write_dataset_folders_layout_labels_by_fault(tmp_path):
    paths = synthetic.write_dataset(tmp_path, machines=["fan"], instances=[1], n_normal=1, n_abnormal=3,
                                    seconds=0.25, seed=0, layout="folders", anomalies=["leak", "bearing"])
    labels = sorted(p.parent.name for p in paths)
    assert labels == ["bearing", "leak", "leak", "normal"]
    assert all(p.name.startswith("fan_id_01_") for p in paths)
    again = synthetic.write_dataset(tmp_path / "again", machines=["fan"], instances=[1], n_normal=1, n_abnormal=3,
                                    seconds=0.25, seed=0, layout="folders", anomalies=["leak", "bearing"])
    for a, b in zip(paths, again):
        assert np.array_equal(read_wav(a)[0], read_wav(b)[0])
