"""Log-mel spectrograms of alert clips, drawn on the server as PNG (numpy and zlib, nothing else).

The picture is computed with ``edge_monitor.features`` from the machine model's own
feature spec (the same code and settings the daemon scores with; an MFCC model's clip is
drawn from its log-mel bands), so what you see is what the model heard: time left to
right, low frequencies at the bottom, louder brighter, from the clip's quietest 2 % (at most 80 dB down) to its loudest.
White vertical lines mark where the alert started and ended inside the clip.

``SpectrogramCache`` keeps the last few pictures in memory (a Pi has little RAM; a
picture is 20-60 kB), keyed by the clip file's path, size and modification time, so a
clip rewritten or deleted by the retention is never shown stale. A clip that is gone or
unreadable gives ``SpectrogramError`` with one sentence, which the page shows instead.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from edge_monitor.features import FeatureError, FeatureSpec, extract, to_mono_float
from edge_monitor.wavio import WavError, read_wav

DYNAMIC_RANGE_DB = 80.0
"""At most this far below the clip's loudest band and frame is drawn; quieter is black."""
FLOOR_PERCENTILE = 2.0
"""The colours span from this percentile of the clip's levels (so a steady machine's clip has contrast) ..."""
MIN_RANGE_DB = 20.0
"""... over at least this many dB (a flat clip is not stretched into noise)."""
MAX_COLUMNS = 900
"""Wider clips (over about 29 s at 32 ms a frame) are shrunk by taking each group's loudest frame."""
TARGET_HEIGHT_PX = 128
MAX_CLIP_SECONDS = 600.0
"""Longer WAVs are not drawn (a clip is seconds long; this bounds the work of one request)."""
CACHE_ENTRIES = 24

# Colour ramp from quiet to loud: near-black blue, violet, red-orange, pale yellow (chosen for this page).
_RAMP = np.array([[8, 10, 40], [70, 20, 110], [170, 40, 90], [235, 110, 40], [252, 235, 150]], dtype=np.float32)
_MARK = np.array([255, 255, 255], dtype=np.uint8)


class SpectrogramError(Exception):
    """A clip that cannot be drawn (one sentence for the page)."""


def colour(db_norm: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (0 quiet, 1 loud) to RGB ``uint8`` along the page's colour ramp."""
    x = np.clip(np.asarray(db_norm, dtype=np.float32), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.minimum(x.astype(np.int64), len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - frac) + _RAMP[lo + 1] * frac
    return np.round(rgb).astype(np.uint8)


def png_rgb(pixels: np.ndarray) -> bytes:
    """A PNG file (8-bit RGB, no interlace) of ``pixels`` ``(height, width, 3)`` uint8."""
    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    if px.ndim != 3 or px.shape[2] != 3 or px.shape[0] < 1 or px.shape[1] < 1:
        raise ValueError(f"expected (height, width, 3) pixels, got shape {px.shape}")
    height, width = px.shape[:2]
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" on every scanline
    rows[:, 1:] = px.reshape(height, 3 * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def drawing_spec(spec: FeatureSpec) -> FeatureSpec:
    """The log-mel settings of ``spec`` (MFCC models are drawn from the bands their coefficients come from)."""
    return dataclasses.replace(spec, n_mfcc=0, norm_mean=0.0, norm_std=1.0)


def log_mel_db(path: Path, spec: FeatureSpec) -> np.ndarray:
    """``(frames, n_mels)`` log-mel dB of the WAV at ``path``, computed as the daemon does. SpectrogramError."""
    try:
        audio, rate = read_wav(path)
    except FileNotFoundError:
        raise SpectrogramError("the clip is gone (deleted by the clip retention?)") from None
    except (OSError, WavError) as exc:
        raise SpectrogramError(f"the clip cannot be read: {exc}") from None
    if rate != spec.sample_rate:
        raise SpectrogramError(f"the clip is at {rate} Hz but the model's features are at {spec.sample_rate} Hz")
    if audio.shape[0] > MAX_CLIP_SECONDS * rate:
        raise SpectrogramError(f"the clip is longer than {MAX_CLIP_SECONDS:.0f} s")
    try:
        mono = to_mono_float(audio)
        feats = extract(drawing_spec(spec), mono)
    except FeatureError as exc:
        raise SpectrogramError(f"no features from the clip: {exc}") from None
    if feats.shape[0] == 0:
        raise SpectrogramError("the clip is shorter than one feature frame")
    return feats


def spectrogram_pixels(db: np.ndarray, marks_s: Sequence[float] = (), hop_seconds: float = 0.032) -> np.ndarray:
    """RGB pixels ``(height, width, 3)`` of log-mel ``db`` ``(frames, n_mels)``: low bands at the bottom.

    ``marks_s`` are times in the clip (seconds) drawn as white vertical lines.
    """
    frames, bands = db.shape
    group = max(1, -(-frames // MAX_COLUMNS))
    if group > 1:  # keep peaks visible: the loudest frame of each group
        pad = (-frames) % group
        padded = np.concatenate([db, np.full((pad, bands), -np.inf, dtype=db.dtype)]) if pad else db
        db = padded.reshape(-1, group, bands).max(axis=1)
    finite = db[np.isfinite(db)]
    top = float(finite.max()) if finite.size else 0.0
    floor = float(np.percentile(finite, FLOOR_PERCENTILE)) if finite.size else top - DYNAMIC_RANGE_DB
    floor = min(max(floor, top - DYNAMIC_RANGE_DB), top - MIN_RANGE_DB)
    norm = (db - floor) / (top - floor)
    image = colour(norm.T[::-1])  # (bands, columns, 3), highest band first (top of the picture)
    scale = max(1, TARGET_HEIGHT_PX // bands)
    if scale > 1:
        image = np.repeat(image, scale, axis=0)
    column_s = hop_seconds * group
    for t in marks_s:
        col = int(round(t / column_s))
        if 0 <= col < image.shape[1]:
            image[:, col] = _MARK
    return image


def clip_png(path: Path, spec: FeatureSpec, marks_s: Sequence[float] = ()) -> bytes:
    """The PNG spectrogram of one clip. SpectrogramError for a clip that cannot be drawn."""
    db = log_mel_db(path, spec)
    return png_rgb(spectrogram_pixels(db, marks_s, spec.hop_seconds))


def placeholder_svg(reason: str) -> str:
    """A small picture saying why there is no spectrogram (shown where the PNG would be)."""
    from html import escape

    return ('<svg xmlns="http://www.w3.org/2000/svg" width="300" height="48" viewBox="0 0 300 48" '
            'role="img" aria-label="no spectrogram"><rect width="300" height="48" fill="#f6f8fa" stroke="#d0d7de"/>'
            '<text x="8" y="20" font-family="sans-serif" font-size="12" fill="#57606a">No spectrogram:</text>'
            f'<text x="8" y="38" font-family="sans-serif" font-size="11" fill="#57606a">{escape(reason[:60])}</text>'
            '</svg>')


class SpectrogramCache:
    """The last ``CACHE_ENTRIES`` pictures, keyed by clip file (path, size, mtime), spec and marks. Thread-safe."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        """An empty cache holding at most ``entries`` pictures."""
        self.entries = entries
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self.computed = 0

    def png(self, path: Path, spec: FeatureSpec, marks_s: Sequence[float] = ()) -> bytes:
        """The clip's PNG, computed at most once per version of the file. SpectrogramError."""
        try:
            st = path.stat()
        except FileNotFoundError:
            raise SpectrogramError("the clip is gone (deleted by the clip retention?)") from None
        except OSError as exc:
            raise SpectrogramError(f"the clip cannot be read: {exc.strerror or exc}") from None
        key = (str(path), st.st_size, st.st_mtime_ns, spec, tuple(round(m, 3) for m in marks_s))
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        data = clip_png(path, spec, marks_s)  # outside the lock: one slow clip never holds up another
        with self._lock:
            self.computed += 1
            self._items[key] = data
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return data


def marks_in_clip(clip_started_at_s: Optional[float], started_at_s: float,
                  ended_at_s: Optional[float]) -> list[float]:
    """Seconds into the clip of the alert's start and end (those known)."""
    if clip_started_at_s is None:
        return []
    return [t - clip_started_at_s for t in (started_at_s, ended_at_s) if t is not None]
