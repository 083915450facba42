"""Read and write WAV files with numpy, including WAVE_FORMAT_EXTENSIBLE multi-channel files.

Python's ``wave`` module rejects the extensible header used by the MIMII array
recordings, so the RIFF chunks are parsed here. Supported: PCM 8/16/24/32-bit
and IEEE float 32/64-bit, up to ``MAX_CHANNELS`` channels.

Any header a reader could trip over is a ``WavError`` naming the file: a
``block_align`` that is not channels x bytes per sample, absurd channel counts or
rates, a data size beyond the end of the file (clamped: a truncated recording is
still read), and float samples that are NaN or infinite.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

_PCM = 0x0001
_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
MAX_CHANNELS = 1024
MAX_RATE_HZ = 1_000_000


class WavError(ValueError):
    """The file is not a WAV this reader understands. The message names the file and the problem."""


def _fail(path: Union[str, Path], why: str) -> WavError:
    return WavError(f"{path}: not a readable WAV file: {why}")


def read_wav_info(path: Union[str, Path]) -> tuple[int, int, int]:
    """Return ``(sample_rate_hz, channels, frames)`` without reading the samples."""
    with open(path, "rb") as fh:
        fmt, data_offset, data_size = _parse_header(fh, path)
    return fmt["rate"], fmt["channels"], data_size // fmt["block_align"]


def read_wav(path: Union[str, Path]) -> tuple[np.ndarray, int]:
    """Read a WAV file.

    Returns ``(samples, sample_rate_hz)`` with samples ``(frames, channels)`` float32
    scaled to [-1, 1).
    """
    with open(path, "rb") as fh:
        fmt, data_offset, data_size = _parse_header(fh, path)
        fh.seek(data_offset)
        raw = fh.read(data_size)
    return _decode(raw, fmt, path), fmt["rate"]


def _parse_header(fh: BinaryIO, path: Union[str, Path]) -> tuple[dict, int, int]:
    head = fh.read(12)
    if len(head) < 12 or head[0:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise _fail(path, "it does not start with a RIFF/WAVE header")
    fmt = None
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            break
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        start = fh.tell()
        if cid == b"fmt ":
            body = fh.read(size)
            if len(body) < 16:
                raise _fail(path, "the fmt chunk is too short")
            tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
            if not 1 <= channels <= MAX_CHANNELS or not 1 <= rate <= MAX_RATE_HZ or block_align < 1:
                raise _fail(path, f"invalid format (channels={channels}, rate={rate} Hz, block_align={block_align}; "
                                  f"expected 1-{MAX_CHANNELS} channels at 1-{MAX_RATE_HZ} Hz)")
            if tag == _EXTENSIBLE:
                if len(body) < 40:
                    raise _fail(path, "the extensible fmt chunk is too short")
                tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format GUID
                if block_align % channels:
                    raise _fail(path, f"block_align {block_align} is not a whole number of bytes per channel "
                                      f"({channels} channels)")
                bits = 8 * block_align // channels  # container size; valid bits may be fewer
            elif bits % 8 or block_align != channels * bits // 8:
                raise _fail(path, f"block_align {block_align} does not match {channels} channel(s) x {bits} bits "
                                  f"(expected {channels * max(bits, 8) // 8})")
            fmt = {"tag": tag, "channels": channels, "rate": rate, "block_align": block_align, "bits": bits}
            if tag not in (_PCM, _FLOAT):
                raise _fail(path, f"unsupported encoding 0x{tag:04x} (only PCM and IEEE float are read)")
            if (tag == _PCM and bits not in (8, 16, 24, 32)) or (tag == _FLOAT and bits not in (32, 64)):
                raise _fail(path, f"unsupported sample size of {bits} bits")
        elif cid == b"data":
            if fmt is None:
                raise _fail(path, "the data chunk comes before the fmt chunk")
            fh.seek(0, 2)
            available = fh.tell() - start
            size = min(size, available)  # tolerate a truncated final chunk or an unset size
            size -= size % fmt["block_align"]
            return fmt, start, size
        fh.seek(start + size + (size & 1))
    if fmt is None:
        raise _fail(path, "no fmt chunk")
    raise _fail(path, "no data chunk")


def _decode(raw: bytes, fmt: dict, path: Union[str, Path]) -> np.ndarray:
    ch, bits, tag = fmt["channels"], fmt["bits"], fmt["tag"]
    if tag == _FLOAT:
        x = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise _fail(path, f"{bad} sample(s) are NaN or infinite (a corrupt float recording)")
    elif bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16))
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    return x.reshape(-1, ch)


def write_wav(path: Union[str, Path], samples: np.ndarray, sample_rate_hz: int) -> None:
    """Write float samples ``(frames,)`` or ``(frames, channels)`` in [-1, 1] as 16-bit PCM."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    ch = pcm.shape[1]
    data = pcm.tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, _PCM, ch, sample_rate_hz, sample_rate_hz * ch * 2, ch * 2, 16)
    header += b"data" + struct.pack("<I", len(data))
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(data)
