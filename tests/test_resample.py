"""Tests for the streaming polyphase resampler (pure numpy, no audio hardware)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.sources.resample import StreamingResampler, resample

OUT_RATE_HZ = 16000
EDGE_FRAMES = 1000  # ignore the filter's start-up and tail when measuring


def _sine(rate_hz: int, freq_hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _rms_dbfs_re(signal: np.ndarray, amplitude: float) -> float:
    """RMS of ``signal`` relative to a sine of ``amplitude`` (dB)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-20) / (amplitude / np.sqrt(2)))


def _peak_frequency_hz(signal: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.argmax(spectrum) * rate_hz / len(signal))


def _chunked(resampler: StreamingResampler, signal: np.ndarray, sizes) -> np.ndarray:
    parts, start, index = [], 0, 0
    while start < len(signal):
        size = sizes[index % len(sizes)]
        parts.append(resampler.process(signal[start:start + size]))
        start += size
        index += 1
    parts.append(resampler.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("in_rate_hz", [48000, 44100])
def test_sine_keeps_its_frequency_amplitude_and_phase(in_rate_hz):
    tone_hz = 1000.0
    out = resample(_sine(in_rate_hz, tone_hz, 2.0), in_rate_hz, OUT_RATE_HZ)
    assert len(out) == 2 * OUT_RATE_HZ
    assert _peak_frequency_hz(out, OUT_RATE_HZ) == pytest.approx(tone_hz, abs=1.0)
    # Output j is the input at time j / 16000 s: compare with the ideal 16 kHz sine directly.
    ideal = _sine(OUT_RATE_HZ, tone_hz, 2.0)
    np.testing.assert_allclose(out[EDGE_FRAMES:-EDGE_FRAMES], ideal[EDGE_FRAMES:-EDGE_FRAMES], atol=1e-4)


@pytest.mark.parametrize("in_rate_hz", [48000, 44100])
@pytest.mark.parametrize("tone_hz", [8400.0, 10000.0, 15000.0, 20000.0])
def test_tones_above_output_nyquist_are_attenuated_more_than_60_db(in_rate_hz, tone_hz):
    out = resample(_sine(in_rate_hz, tone_hz, 1.0), in_rate_hz, OUT_RATE_HZ)
    level_db = _rms_dbfs_re(out[EDGE_FRAMES:-EDGE_FRAMES], 0.5)
    assert level_db < -60.0, f"{tone_hz} Hz leaks at {level_db:.1f} dB"


@pytest.mark.parametrize("in_rate_hz", [48000, 44100])
def test_passband_is_flat(in_rate_hz):
    for tone_hz in (100.0, 3000.0, 6500.0):
        out = resample(_sine(in_rate_hz, tone_hz, 1.0), in_rate_hz, OUT_RATE_HZ)
        assert abs(_rms_dbfs_re(out[EDGE_FRAMES:-EDGE_FRAMES], 0.5)) < 0.05


@pytest.mark.parametrize("in_rate_hz", [48000, 44100, 8000])
def test_chunked_output_equals_one_shot_output(in_rate_hz):
    rng = np.random.default_rng(in_rate_hz)
    signal = rng.uniform(-1, 1, size=(in_rate_hz // 2, 2)).astype(np.float32)
    one_shot = resample(signal, in_rate_hz, OUT_RATE_HZ)
    for sizes in ([1], [7, 1, 300], [441], [1536], [100000]):
        chunked = _chunked(StreamingResampler(in_rate_hz, OUT_RATE_HZ, channels=2), signal, sizes)
        assert np.array_equal(chunked, one_shot), f"chunk sizes {sizes} changed the output"


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=12),
       in_rate_hz=st.sampled_from([48000, 44100, 32000, 22050]))
def test_any_chunking_gives_identical_samples(sizes, in_rate_hz):
    signal = np.random.default_rng(7).uniform(-1, 1, size=in_rate_hz // 4).astype(np.float32)
    expected = resample(signal, in_rate_hz, OUT_RATE_HZ)
    assert np.array_equal(_chunked(StreamingResampler(in_rate_hz, OUT_RATE_HZ), signal, sizes), expected)


def test_streaming_emits_outputs_as_soon_as_their_inputs_exist():
    resampler = StreamingResampler(48000, OUT_RATE_HZ)
    emitted = 0
    for _ in range(20):
        emitted += len(resampler.process(np.zeros(480, dtype=np.float32)))
        assert emitted == resampler.output_frames == resampler.output_frames_for(resampler.input_frames)
    # Only half the filter's span (in input frames) is held back.
    assert resampler.input_frames / 3 - emitted <= resampler.half_taps / 3 + 1


def test_constant_stays_constant_and_channels_stay_separate():
    signal = np.zeros((48000, 3), dtype=np.float32)
    signal[:, 0] = 0.25
    signal[:, 2] = -0.5
    out = resample(signal, 48000, OUT_RATE_HZ)
    middle = out[EDGE_FRAMES:-EDGE_FRAMES]
    np.testing.assert_allclose(middle[:, 0], 0.25, atol=1e-6)
    assert np.all(middle[:, 1] == 0.0)
    np.testing.assert_allclose(middle[:, 2], -0.5, atol=1e-6)


def test_reset_starts_a_fresh_stream():
    signal = _sine(44100, 440.0, 0.3)
    resampler = StreamingResampler(44100, OUT_RATE_HZ)
    first = np.concatenate([resampler.process(signal), resampler.flush()])
    resampler.process(np.ones(5000, dtype=np.float32))
    resampler.reset()
    second = np.concatenate([resampler.process(signal), resampler.flush()])
    assert np.array_equal(first, second)


def test_bad_arguments_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match="positive"):
        StreamingResampler(0, OUT_RATE_HZ)
    with pytest.raises(ValueError, match="channels"):
        StreamingResampler(48000, OUT_RATE_HZ, channels=0)
    with pytest.raises(ValueError, match=r"\(frames, 2\)"):
        StreamingResampler(48000, OUT_RATE_HZ, channels=2).process(np.zeros((10, 3), dtype=np.float32))
