"""WAV reading and writing: round trips, hand-built extensible/24-bit/float files, clear refusals."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.wavio import WavError, read_wav, read_wav_info, write_wav

_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # GUID after the 2-byte tag


def _fmt_chunk(tag: int, channels: int, rate: int, bits: int, *, extensible: bool = False,
               valid_bits: int = 0) -> bytes:
    block_align = channels * bits // 8
    body = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block_align, block_align, bits)
    if extensible:
        mask = (1 << channels) - 1
        body += struct.pack("<HHI", 22, valid_bits or bits, mask) + struct.pack("<H", tag) + _KSDATAFORMAT_TAIL
    return b"fmt " + struct.pack("<I", len(body)) + body


def _riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _data_chunk(raw: bytes) -> bytes:
    pad = b"\x00" if len(raw) % 2 else b""
    return b"data" + struct.pack("<I", len(raw)) + raw + pad


def _ramp(frames: int, channels: int) -> np.ndarray:
    """Distinct values per channel in [-1, 1)."""
    t = np.arange(frames)[:, None]
    c = np.arange(channels)[None, :]
    return (np.sin(0.01 * t * (c + 1) + c) * 0.9).astype(np.float32)


# ---------------------------------------------------------------- round trips

def test_mono_16bit_round_trip(tmp_path: Path) -> None:
    x = _ramp(16000, 1)[:, 0]
    path = tmp_path / "mono.wav"
    write_wav(path, x, 16000)
    y, rate = read_wav(path)
    assert rate == 16000 and y.shape == (16000, 1) and y.dtype == np.float32
    assert np.abs(y[:, 0] - x).max() <= 0.5 / 32768 + 1e-7
    assert read_wav_info(path) == (16000, 1, 16000)
    with wave.open(str(path)) as w:  # the standard library agrees on the header
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16000)


def test_16bit_values_are_exact(tmp_path: Path) -> None:
    pcm = np.array([-32768, -1, 0, 1, 12345, 32767], dtype=np.int16)
    path = tmp_path / "exact.wav"
    write_wav(path, pcm.astype(np.float32) / 32768.0, 8000)
    y, _ = read_wav(path)
    assert np.array_equal(y[:, 0], pcm.astype(np.float32) / 32768.0)


def test_multichannel_round_trip_and_clipping(tmp_path: Path) -> None:
    x = _ramp(3000, 3)
    x[0] = [1.5, -1.5, 1.0]  # out of range: clipped to full scale, not wrapped
    path = tmp_path / "three.wav"
    write_wav(path, x, 44100)
    y, rate = read_wav(path)
    assert rate == 44100 and y.shape == (3000, 3)
    assert np.abs(y[1:] - x[1:]).max() <= 0.5 / 32768 + 1e-7
    assert y[0, 0] == pytest.approx(32767 / 32768) and y[0, 1] == -1.0 and y[0, 2] == pytest.approx(32767 / 32768)


# ---------------------------------------------------------------- hand-built formats

def test_extensible_eight_channel_16bit(tmp_path: Path) -> None:
    """The MIMII array layout: WAVE_FORMAT_EXTENSIBLE, 8 channels, 16-bit PCM, plus an unknown chunk."""
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, size=(500, 8), dtype=np.int16)
    raw = pcm.astype("<i2").tobytes()
    list_chunk = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size: padded
    path = tmp_path / "mimii.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0001, 8, 16000, 16, extensible=True), list_chunk, _data_chunk(raw)))
    y, rate = read_wav(path)
    assert rate == 16000 and y.shape == (500, 8)
    assert np.array_equal(y, pcm.astype(np.float32) / 32768.0)
    assert read_wav_info(path) == (16000, 8, 500)


def test_24bit_pcm(tmp_path: Path) -> None:
    values = np.array([[-(1 << 23), (1 << 23) - 1], [0, -1], [1, 4660], [-700000, 1234567]], dtype=np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values.reshape(-1))
    path = tmp_path / "24.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0001, 2, 48000, 24), _data_chunk(raw)))
    y, rate = read_wav(path)
    assert rate == 48000 and y.shape == (4, 2)
    assert np.allclose(y, values / float(1 << 23), atol=1e-7, rtol=0)
    assert y[0, 0] == -1.0


def test_24bit_in_extensible_container(tmp_path: Path) -> None:
    values = np.array([100000, -100000, 8388607], dtype=np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    path = tmp_path / "24ext.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0001, 1, 16000, 24, extensible=True), _data_chunk(raw)))
    y, _ = read_wav(path)
    assert np.allclose(y[:, 0], values / float(1 << 23), atol=1e-7, rtol=0)


def test_float32(tmp_path: Path) -> None:
    x = _ramp(777, 2)
    x[0] = [1.0, -1.0]
    path = tmp_path / "float.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0003, 2, 22050, 32), _data_chunk(x.astype("<f4").tobytes())))
    y, rate = read_wav(path)
    assert rate == 22050 and np.array_equal(y, x)


def test_8bit_unsigned(tmp_path: Path) -> None:
    raw = bytes([0, 128, 255])
    path = tmp_path / "8.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0001, 1, 8000, 8), _data_chunk(raw)))
    y, _ = read_wav(path)
    assert np.array_equal(y[:, 0], np.array([-1.0, 0.0, 127 / 128], dtype=np.float32))


def test_truncated_data_is_read_up_to_the_last_whole_frame(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    write_wav(path, _ramp(1000, 2), 16000)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # half a frame and more missing at the end
    y, _ = read_wav(path)
    assert y.shape == (998, 2)


# ---------------------------------------------------------------- refusals

def test_text_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 10)
    with pytest.raises(WavError) as info:
        read_wav(path)
    assert str(path) in str(info.value)
    assert "does not start with a RIFF/WAVE header" in str(info.value)


def test_truncated_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_wav(path, _ramp(100, 1), 16000)
    path.write_bytes(path.read_bytes()[:30])  # inside the fmt chunk
    with pytest.raises(WavError) as info:
        read_wav(path)
    assert str(path) in str(info.value) and "fmt chunk is too short" in str(info.value)
    path.write_bytes(path.read_bytes()[:8])
    with pytest.raises(WavError, match="RIFF/WAVE header"):
        read_wav_info(path)


def test_missing_data_chunk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nodata.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0001, 1, 16000, 16)))
    with pytest.raises(WavError, match=r"nodata\.wav: not a readable WAV file: no data chunk"):
        read_wav(path)


def test_unknown_encoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alaw.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0006, 1, 8000, 8), _data_chunk(b"\x00" * 10)))
    with pytest.raises(WavError) as info:
        read_wav(path)
    assert str(path) in str(info.value) and "unsupported encoding 0x0006" in str(info.value)


def test_unsupported_sample_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "12.wav"
    path.write_bytes(_riff(_fmt_chunk(0x0003, 1, 8000, 16), _data_chunk(b"\x00" * 10)))
    with pytest.raises(WavError, match="unsupported sample size of 16 bits"):
        read_wav(path)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "absent.wav")
