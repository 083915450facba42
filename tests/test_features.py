"""Streaming features: exactly equal to batch for any chunking, and equal to librosa within 1e-3 dB."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_monitor.features import (
    FeatureError,
    FeatureSpec,
    StreamingExtractor,
    check_sample_rate,
    extract,
    to_mono_float,
)
from edge_monitor.training.synthetic import generate

LOGMEL = FeatureSpec(n_mels=64)
MFCC = FeatureSpec(n_mels=40, n_mfcc=13)
SMALL_FFT = FeatureSpec(n_fft=256, hop_length=96, n_mels=24, fmin=50.0, fmax=7000.0)

TOLERANCE_DB = 1e-3


def _noise(seconds: float, sample_rate_hz: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * sample_rate_hz))).astype(np.float32)


def _fan(seconds: float, sample_rate_hz: int = 16000) -> np.ndarray:
    return generate("fan", seconds, sample_rate_hz, seed=11)  # SYNTHETIC machine sound


def _streamed(spec: FeatureSpec, audio: np.ndarray, chunks: list[int]) -> np.ndarray:
    ex = StreamingExtractor(spec)
    out, pos, i = [], 0, 0
    while pos < audio.size:
        n = chunks[i % len(chunks)]
        out.append(ex.process(audio[pos:pos + n]))
        pos += n
        i += 1
    return np.concatenate(out) if out else np.zeros((0, spec.n_features), np.float32)


# ---------------------------------------------------------------- streaming == batch

_AUDIO = _noise(1.3, seed=5) + _fan(1.3)


@pytest.mark.parametrize("spec", [LOGMEL, MFCC, SMALL_FFT], ids=["logmel", "mfcc", "small-fft"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.one_of(st.integers(1, 8), st.integers(9, 600), st.integers(601, 5000)),
                       min_size=1, max_size=40),
       length=st.integers(0, _AUDIO.size))
def test_streaming_equals_batch_exactly_for_any_chunking(spec: FeatureSpec, chunks: list[int], length: int) -> None:
    audio = _AUDIO[:length]
    batch = extract(spec, audio)
    streamed = _streamed(spec, audio, chunks)
    assert streamed.dtype == np.float32 and batch.dtype == np.float32
    assert streamed.shape == batch.shape
    assert np.array_equal(streamed, batch)


@pytest.mark.parametrize("spec", [LOGMEL, MFCC], ids=["logmel", "mfcc"])
def test_one_sample_chunks_equal_batch(spec: FeatureSpec) -> None:
    audio = _AUDIO[:6000]
    assert np.array_equal(_streamed(spec, audio, [1]), extract(spec, audio))


def test_frame_count_follows_center_false() -> None:
    spec = LOGMEL
    assert extract(spec, _AUDIO[:spec.n_fft - 1]).shape == (0, 64)
    assert extract(spec, _AUDIO[:spec.n_fft]).shape == (1, 64)
    n = spec.n_fft + 5 * spec.hop_length + 17
    assert extract(spec, _AUDIO[:n]).shape == (6, 64)


def test_reset_forgets_pending_audio() -> None:
    ex = StreamingExtractor(LOGMEL)
    ex.process(_AUDIO[:700])
    ex.reset()
    assert np.array_equal(ex.process(_AUDIO[:5000]), extract(LOGMEL, _AUDIO[:5000]))


# ---------------------------------------------------------------- librosa agreement

def _librosa_db(spec: FeatureSpec, audio: np.ndarray) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    mel = librosa.feature.melspectrogram(
        y=audio.astype(np.float32), sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length,
        window="hann", center=False, power=2.0, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax_hz,
        htk=spec.mel_scale == "htk", norm="slaney" if spec.mel_norm == "slaney" else None)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T


LIBROSA_SPECS = [
    FeatureSpec(),
    FeatureSpec(n_mels=128, n_fft=2048, hop_length=512),
    FeatureSpec(n_mels=40, fmin=100.0, fmax=6000.0, n_fft=512, hop_length=160),
    FeatureSpec(n_mels=32, mel_scale="htk", n_fft=1024, hop_length=256),
    FeatureSpec(n_mels=48, mel_scale="htk", mel_norm="none", fmin=20.0, fmax=7600.0),
    FeatureSpec(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32),
]
_SPEC_IDS = ["default", "128mel-2048", "40mel-band", "htk-32", "htk-nonorm", "8k"]


@pytest.mark.parametrize("signal", ["fan", "noise"])
@pytest.mark.parametrize("spec", LIBROSA_SPECS, ids=_SPEC_IDS)
def test_logmel_matches_librosa_slaney(spec: FeatureSpec, signal: str) -> None:
    seconds = 2.0
    audio = _fan(seconds, spec.sample_rate) if signal == "fan" else _noise(seconds, spec.sample_rate, seed=2)
    ours = extract(spec, audio)
    ref = _librosa_db(spec, audio)
    assert ours.shape == ref.shape
    err = np.abs(ours.astype(np.float64) - ref)
    assert err.max() <= TOLERANCE_DB, f"max deviation {err.max():.2e} dB at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.mark.parametrize("spec", [FeatureSpec(n_mels=40, n_mfcc=13), FeatureSpec(n_mels=64, n_mfcc=20, fmax=7000.0)],
                         ids=["13of40", "20of64"])
def test_mfcc_matches_librosa_on_same_db_mel(spec: FeatureSpec) -> None:
    librosa = pytest.importorskip("librosa")
    audio = _fan(2.0)
    db = _librosa_db(spec, audio).T
    ref = librosa.feature.mfcc(S=db, n_mfcc=spec.n_mfcc, dct_type=2, norm="ortho").T
    ours = extract(spec, audio)
    assert ours.shape == ref.shape == (db.shape[1], spec.n_mfcc)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale + TOLERANCE_DB


# ---------------------------------------------------------------- input conversion

def test_int16_input_equals_float_divided_by_32768() -> None:
    rng = np.random.default_rng(4)
    pcm = rng.integers(-32768, 32767, size=(4000, 2), dtype=np.int16)
    as_float = pcm.astype(np.float32) / np.float32(32768.0)
    assert np.array_equal(to_mono_float(pcm, 1), as_float[:, 1])
    assert np.array_equal(to_mono_float(pcm[:, 0]), as_float[:, 0])
    assert np.array_equal(extract(LOGMEL, to_mono_float(pcm, 0)), extract(LOGMEL, as_float[:, 0]))


def test_other_integer_types_are_refused() -> None:
    with pytest.raises(FeatureError, match="int16"):
        to_mono_float(np.zeros(10, dtype=np.int32))


def test_channel_pick_and_mean() -> None:
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, size=(1000, 4)).astype(np.float32)
    assert np.array_equal(to_mono_float(x, 2), x[:, 2])
    assert np.array_equal(to_mono_float(x, [1, 3]), x[:, [1, 3]].mean(axis=1, dtype=np.float32))
    assert np.array_equal(to_mono_float(x, "mean"), x.mean(axis=1, dtype=np.float32))
    assert np.array_equal(to_mono_float(x[:, :1]), x[:, 0])
    with pytest.raises(FeatureError, match="channel 4 does not exist: the audio has 4 channel"):
        to_mono_float(x, 4)
    with pytest.raises(FeatureError, match="mono"):
        to_mono_float(x[:, 0], 1)


def test_streaming_extractor_refuses_multichannel() -> None:
    with pytest.raises(FeatureError, match=r"mono \(n,\) audio, got shape \(10, 2\)"):
        StreamingExtractor(LOGMEL).process(np.zeros((10, 2), np.float32))


# ---------------------------------------------------------------- spec validation

def test_bad_spec_names_every_problem() -> None:
    with pytest.raises(FeatureError) as info:
        FeatureSpec(n_fft=1000, hop_length=0, window="hamming", mel_scale="bark", mel_norm="l2", log="ln",
                    n_mfcc=-1, frames_per_window=0, norm_std=0.0, fmin=9000.0)
    msg = str(info.value)
    for needle in ("n_fft must be a power of two >= 16, got 1000", "hop_length must be in 1..n_fft (1000), got 0",
                   "window must be 'hann', got 'hamming'", "mel_scale must be 'slaney' or 'htk', got 'bark'",
                   "mel_norm must be 'slaney' or 'none', got 'l2'", "log must be 'db', got 'ln'",
                   "n_mfcc must be in 0..n_mels", "frames_per_window must be >= 1, got 0", "norm_std must be > 0",
                   "fmin=9000.0, fmax=8000.0"):
        assert needle in msg, f"{needle!r} missing from: {msg}"
    assert msg.count(";") == 9


def test_bad_sample_rate_and_too_many_mels() -> None:
    with pytest.raises(FeatureError, match="sample_rate must be positive, got 0"):
        FeatureSpec(sample_rate=0)
    with pytest.raises(FeatureError, match=r"n_mels must be in 1..128, got 200"):
        FeatureSpec(n_fft=256, n_mels=200, hop_length=128)


def test_mel_bands_without_fft_bins_are_refused() -> None:
    with pytest.raises(FeatureError, match="have no FFT bins"):
        StreamingExtractor(FeatureSpec(n_fft=64, hop_length=32, n_mels=32))


def test_from_dict_round_trip_and_unknown_keys() -> None:
    assert FeatureSpec.from_dict(MFCC.to_dict()) == MFCC
    with pytest.raises(FeatureError, match="unknown feature spec keys: n_melz"):
        FeatureSpec.from_dict({**LOGMEL.to_dict(), "n_melz": 3})


def test_check_sample_rate_names_both_rates() -> None:
    check_sample_rate(LOGMEL, 16000)
    with pytest.raises(FeatureError) as info:
        check_sample_rate(LOGMEL, 8000, what="pump.wav")
    msg = str(info.value)
    assert "pump.wav is sampled at 8000 Hz but the model expects 16000 Hz" in msg
    assert "\n" not in msg and not re.search(r"[.;]\s+[A-Z]", msg), "one sentence expected"
