"""MicrophoneSource and device listing against real audio: a private PulseAudio null sink.

WAV files are played into the sink with ``paplay``; PortAudio captures the
sink's monitor through ALSA's pulse plugin, exactly as it would a USB microphone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.config import SourceConfig
from edge_monitor.devices import format_devices, list_audio_inputs
from edge_monitor.sources.base import Block, Source, SourceError
from edge_monitor.sources.microphone import MicrophoneSource
from tests.helpers.pulse import PulseServer, pulse_factory, pulse_server, write_wav

__all__ = ["pulse_factory", "pulse_server"]  # the fixtures, imported explicitly

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE_HZ = 16000
LEAD_IN_FRAMES = 1600   # PulseAudio may swallow a few samples as a stream starts; compare after 0.1 s
FIRST_BLOCK_TIMEOUT_S = 20.0
GENEROUS_STALL_S = 10.0   # tests that do not test stalls must not trip on a loaded machine

pytestmark = pytest.mark.timeout(120)


def _noise_int16(frames: int, channels: int, seed: int) -> np.ndarray:
    """Loud, white, reproducible test signal ``(frames, channels)`` int16 (distinct per channel)."""
    return np.random.default_rng(seed).integers(-16000, 16000, size=(frames, channels), dtype=np.int16)


def _first_block(source: MicrophoneSource) -> Block:
    """Wait for the stream's first audio (PulseAudio can take a second or two to start)."""
    deadline = time.monotonic() + FIRST_BLOCK_TIMEOUT_S
    while time.monotonic() < deadline:
        block = source.read(1.0)
        if block is not None:
            return block
    raise AssertionError(f"no audio within {FIRST_BLOCK_TIMEOUT_S} s of opening")


def _capture_playback(source: MicrophoneSource, server: PulseServer, wav: Path,
                      tail_seconds: float = 0.5) -> list[Block]:
    """Blocks read while ``wav`` plays into the sink, plus ``tail_seconds`` of audio after it ends."""
    blocks = [_first_block(source)]
    player = server.play_wav_async(wav)
    deadline = time.monotonic() + 60.0
    tail_frames = None
    while time.monotonic() < deadline:
        block = source.read(1.0)
        if block is not None:
            blocks.append(block)
            if tail_frames is not None:
                tail_frames -= block.samples.shape[0]
                if tail_frames <= 0:
                    return blocks
        if tail_frames is None and player.poll() is not None:
            assert player.returncode == 0, "paplay failed"
            tail_frames = int(tail_seconds * source.sample_rate)
    player.kill()
    raise AssertionError("playback did not finish within 60 s")


def _as_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples back to the int16 values they came from, asserting the conversion is exact."""
    scaled = samples.astype(np.float64) * 32768.0
    assert np.array_equal(scaled, np.round(scaled)), "captured samples are not exact int16 values"
    return scaled.astype(np.int64)


def _offset_by_xcorr(captured: np.ndarray, pattern: np.ndarray) -> int:
    """Index in ``captured`` where ``pattern`` starts, by FFT cross-correlation."""
    size = 1 << int(np.ceil(np.log2(len(captured) + len(pattern))))
    corr = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(pattern, size)), size)
    return int(np.argmax(corr[:len(captured)]))


def _assert_contains_exactly(captured_int: np.ndarray, reference_int: np.ndarray) -> None:
    """``reference[LEAD_IN_FRAMES:]`` appears bit-exactly, contiguously, in ``captured`` (both 1-D)."""
    expected = reference_int[LEAD_IN_FRAMES:].astype(np.int64)
    start = _offset_by_xcorr(captured_int.astype(np.float64), expected[:4096].astype(np.float64))
    got = captured_int[start:start + len(expected)]
    assert len(got) == len(expected), "capture ended before the played signal did"
    mismatches = int(np.count_nonzero(got != expected))
    assert mismatches == 0, f"{mismatches} of {len(expected)} samples differ from the WAV"


def _assert_timestamps_contiguous(blocks: list[Block]) -> None:
    for before, after in zip(blocks, blocks[1:]):
        expected = before.t_s + before.samples.shape[0] / before.sample_rate + after.gap_frames / after.sample_rate
        assert after.t_s == pytest.approx(expected, abs=1e-5)


def test_source_satisfies_the_protocol_without_touching_portaudio():
    code = ("import sys, edge_monitor.sources.microphone as m, edge_monitor.devices; "
            "assert 'sounddevice' not in sys.modules, 'imported sounddevice eagerly'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
    source = MicrophoneSource.from_config(SourceConfig(device="3", channels=(0, 2)), target_rate_hz=RATE_HZ)
    assert isinstance(source, Source)
    assert source.device == 3 and source.channels == 3 and source.sample_rate == RATE_HZ


def test_played_wav_is_captured_bit_exactly_with_frame_clock_timestamps(pulse_server, tmp_path):
    reference = _noise_int16(RATE_HZ * 3 // 2, 1, seed=1)
    wav = write_wav(tmp_path / "noise.wav", reference, RATE_HZ)
    source = MicrophoneSource.from_config(SourceConfig(device="default"), target_rate_hz=RATE_HZ,
                                          stall_timeout_s=GENEROUS_STALL_S)
    opened_at_s = time.time()
    source.open()
    try:
        blocks = _capture_playback(source, pulse_server, wav)
    finally:
        source.close()
    assert all(b.samples.dtype == np.float32 and b.samples.shape[1] == 1 for b in blocks)
    assert all(b.sample_rate == RATE_HZ for b in blocks)
    captured = np.concatenate([b.samples for b in blocks])[:, 0]
    _assert_contains_exactly(_as_int16(captured), reference[:, 0])
    _assert_timestamps_contiguous(blocks)
    # The first sample's UNIX time is anchored at open (loose bound: PulseAudio may be slow to start).
    assert opened_at_s - 1.0 < blocks[0].t_s < opened_at_s + FIRST_BLOCK_TIMEOUT_S
    stats = source.stats()
    assert stats["callbacks"] > 0 and stats["dropped_frames"] == 0 and stats["reopens"] == 0


@pytest.mark.parametrize("sink_channels", [2, 4])
def test_every_opened_channel_carries_its_own_signal(pulse_factory, tmp_path, sink_channels):
    server = pulse_factory(rate_hz=RATE_HZ, channels=sink_channels)
    reference = _noise_int16(RATE_HZ, sink_channels, seed=sink_channels)
    wav = write_wav(tmp_path / "multi.wav", reference, RATE_HZ)
    # Asking for the last channel opens all channels 0..last.
    source = MicrophoneSource.from_config(SourceConfig(device="default", channels=(sink_channels - 1,)),
                                          target_rate_hz=RATE_HZ, stall_timeout_s=GENEROUS_STALL_S)
    assert source.channels == sink_channels
    source.open()
    try:
        blocks = _capture_playback(source, server, wav)
    finally:
        source.close()
    captured = np.concatenate([b.samples for b in blocks])
    assert captured.shape[1] == sink_channels
    for channel in range(sink_channels):
        _assert_contains_exactly(_as_int16(captured[:, channel]), reference[:, channel])


def test_device_at_48_khz_is_resampled_to_16_khz_without_aliasing(pulse_factory, tmp_path):
    device_rate_hz = 48000
    server = pulse_factory(rate_hz=device_rate_hz, channels=1)
    t = np.arange(device_rate_hz * 2) / device_rate_hz
    tone = 0.3 * np.sin(2 * np.pi * 1000.0 * t)
    above_nyquist = 0.3 * np.sin(2 * np.pi * 12000.0 * t)   # would alias to 4 kHz if not filtered
    wav = write_wav(tmp_path / "tones.wav", np.round((tone + above_nyquist) * 32767).astype(np.int16),
                    device_rate_hz)
    source = MicrophoneSource.from_config(SourceConfig(device="default", sample_rate=device_rate_hz),
                                          target_rate_hz=RATE_HZ, stall_timeout_s=GENEROUS_STALL_S)
    source.open()
    try:
        blocks = _capture_playback(source, server, wav)
    finally:
        source.close()
    assert {b.sample_rate for b in blocks} == {RATE_HZ}
    _assert_timestamps_contiguous(blocks)
    captured = np.concatenate([b.samples for b in blocks])[:, 0].astype(np.float64)
    loud = np.flatnonzero(np.abs(captured) > 0.05)
    assert len(loud) > RATE_HZ, "the played tones were not captured"
    middle = captured[loud[0] + 2000:loud[0] + 2000 + RATE_HZ]   # one steady second, 1 Hz bins
    spectrum = np.abs(np.fft.rfft(middle * np.blackman(len(middle))))
    assert int(np.argmax(spectrum)) == 1000
    alias_db = 20 * np.log10(spectrum[3990:4011].max() / spectrum[1000])
    assert alias_db < -60.0, f"12 kHz leaked into 4 kHz at {alias_db:.1f} dB"


def test_full_ring_drops_are_counted_and_timestamped(pulse_server):
    source = MicrophoneSource("default", channels=1, device_rate_hz=RATE_HZ, target_rate_hz=RATE_HZ,
                              block_seconds=0.032, buffer_seconds=0.1, stall_timeout_s=GENEROUS_STALL_S)
    source.open()
    try:
        blocks = [_first_block(source)]
        deadline = time.monotonic() + 30.0
        while source.stats()["dropped_frames"] == 0:   # a slow reader: let the small ring overflow
            assert time.monotonic() < deadline, "the ring never overflowed"
            time.sleep(0.05)
        reported = 0
        deadline = time.monotonic() + 30.0
        while reported == 0 or reported != source.stats()["dropped_frames"]:
            assert time.monotonic() < deadline, "dropped frames were never all reported"
            block = source.read(2.0)
            if block is not None:
                blocks.append(block)
                reported += block.gap_frames
    finally:
        source.close()
    stats = source.stats()
    assert stats["dropped_frames"] == reported > 0
    assert max(b.samples.shape[0] for b in blocks) <= 4 * 512   # never more than the ring holds
    gapped = [b for b in blocks if b.gap_frames]
    assert gapped, "no block reported the gap"
    _assert_timestamps_contiguous(blocks)   # t_s jumps by exactly gap_frames / rate


def test_killed_audio_server_raises_source_error_then_reopen_recovers(pulse_server, tmp_path):
    # Generous stall limit: this loss must be seen through the stream ending, not the stall timer.
    source = MicrophoneSource("default", channels=1, device_rate_hz=RATE_HZ, target_rate_hz=RATE_HZ,
                              stall_timeout_s=GENEROUS_STALL_S)
    source.open()
    try:
        _first_block(source)
        pulse_server.kill()
        lost_at = time.monotonic()
        with pytest.raises(SourceError, match="default"):
            while time.monotonic() - lost_at < 30.0:
                source.read(0.5)
        # The daemon must go degraded within 5 s of the loss.
        assert time.monotonic() - lost_at < 5.0
        with pytest.raises(SourceError):   # and it stays failed until reopened
            source.read(0.5)
        source.close()
        with pytest.raises(SourceError):   # the daemon's first retry, while the server is still down
            source.open()
        source.close()

        pulse_server.start()
        source.open()
        reference = _noise_int16(RATE_HZ, 1, seed=5)
        blocks = _capture_playback(source, pulse_server, write_wav(tmp_path / "after.wav", reference, RATE_HZ))
    finally:
        source.close()
    captured = np.concatenate([b.samples for b in blocks])[:, 0]
    _assert_contains_exactly(_as_int16(captured), reference[:, 0])
    assert source.stats()["reopens"] == 1


def test_hung_audio_server_is_detected_by_the_stall_timeout(pulse_server):
    source = MicrophoneSource("default", channels=1, device_rate_hz=RATE_HZ, target_rate_hz=RATE_HZ,
                              stall_timeout_s=1.0)
    source.open()
    try:
        _first_block(source)
        pulse_server.suspend()
        try:
            with pytest.raises(SourceError, match="no audio"):
                deadline = time.monotonic() + 30.0
                while time.monotonic() < deadline:
                    source.read(0.5)
        finally:
            pulse_server.resume()
        source.close()
        source.open()
        assert _first_block(source).samples.shape[1] == 1
    finally:
        source.close()


def test_bad_device_settings_give_clear_errors(pulse_server):
    with pytest.raises(SourceError, match=r"'default' \(#\d+\) has 32 input channel\(s\), but the config needs 40"):
        MicrophoneSource("default", channels=40).open()
    with pytest.raises(SourceError, match=r"'no-such-microphone' not found.*inputs available: .*'default'"):
        MicrophoneSource("no-such-microphone").open()
    with pytest.raises(SourceError, match=r"cannot capture 1 channel\(s\) at 400000 Hz"):
        MicrophoneSource("default", device_rate_hz=400000, target_rate_hz=RATE_HZ).open()
    source = MicrophoneSource("default")
    source.close()   # closing a never-opened source is harmless
    with pytest.raises(SourceError, match="open"):
        source.read(0.1)


def test_device_given_as_an_index_string(pulse_server):
    index = next(d["index"] for d in list_audio_inputs() if d["name"] == "default")
    source = MicrophoneSource.from_config(SourceConfig(device=str(index)), target_rate_hz=RATE_HZ,
                                          stall_timeout_s=GENEROUS_STALL_S)
    source.open()
    try:
        block = _first_block(source)
        assert block.samples.shape[1] == 1 and block.samples.shape[0] % 512 == 0   # whole 32 ms callbacks
        assert source.stats()["device"] == f"default (#{index})"
    finally:
        source.close()


def test_listing_shows_the_pulse_default_input_and_its_rates(pulse_server):
    inputs = list_audio_inputs()
    json.dumps(inputs)   # the CLI's --json output must serialise
    by_name = {d["name"]: d for d in inputs}
    assert {"default", "pulse"} <= set(by_name)
    assert by_name["default"]["default"] is True
    assert by_name["default"]["supported_rates_hz"] == [8000, 16000, 44100, 48000]
    assert by_name["default"]["hostapi"] == "ALSA"
    text = format_devices(inputs, [{"device": "/dev/ttyACM0", "description": "Arduino Uno",
                                    "vid_pid": "2341:0043", "serial_number": None, "manufacturer": None}])
    assert f"*{by_name['default']['index']:>3}  default  [ALSA]" in text
    assert "supports: 8k, 16k, 44.1k, 48k" in text
    assert "/dev/ttyACM0  Arduino Uno, VID:PID 2341:0043" in text


def test_missing_portaudio_gives_a_message_not_a_traceback(tmp_path):
    # Exactly what python-sounddevice raises when libportaudio2 is not installed.
    (tmp_path / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    code = textwrap.dedent("""
        from edge_monitor.devices import format_devices, list_audio_inputs
        from edge_monitor.sources.microphone import MicrophoneSource
        from edge_monitor.sources.base import SourceError
        print(format_devices())
        assert list_audio_inputs() == []
        try:
            MicrophoneSource("default").open()
        except SourceError as exc:
            print("open:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "PortAudio library is missing" in result.stdout
    assert "open: the PortAudio library is not installed" in result.stdout
    assert result.stdout.count("apt-get install libportaudio2") == 2
