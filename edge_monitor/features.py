"""Log-mel and MFCC features in numpy, batch and streaming, bit-identical.

The streaming extractor keeps the partial frame between calls, so feeding a
recording in chunks of any size yields exactly the same feature rows as the
batch extractor on the whole recording. Exactness holds because every step is
computed row by row: pocketfft transforms each frame independently, and the mel
projection is a fixed-order sparse sum (``np.add.reduceat``) rather than a BLAS
matrix product, whose rounding depends on how many rows it is given.

Conventions match librosa with ``center=False``: periodic Hann window, power
spectrum, Slaney mel scale with Slaney area normalisation, and
``10 * log10(max(mel_power, amin))`` in dB (no ``top_db`` clipping, which would
depend on the whole recording).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

import numpy as np

INT16_FULL_SCALE = 32768.0


class FeatureError(ValueError):
    """Audio or a spec that the feature extractor cannot use. The message says why."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Everything that determines the features a model was trained on. Stored in every model bundle."""

    sample_rate: int = 16000          # hertz
    n_fft: int = 1024                 # samples per frame (64 ms at 16 kHz)
    hop_length: int = 512             # samples between frames (32 ms at 16 kHz)
    window: str = "hann"              # periodic Hann; the only window supported
    n_mels: int = 64                  # mel bands
    fmin: float = 0.0                 # hertz
    fmax: Optional[float] = None      # hertz; None means sample_rate / 2
    mel_scale: str = "slaney"         # "slaney" (librosa default) or "htk"
    mel_norm: str = "slaney"          # "slaney" area normalisation or "none"
    log: str = "db"                   # 10*log10(max(power, amin)); the only log type supported
    amin: float = 1e-10               # power floor before the log
    n_mfcc: int = 0                   # 0: log-mel features; >0: that many DCT-II (ortho) coefficients
    frames_per_window: int = 32       # feature frames per model input window (~1 s at the defaults)
    norm_mean: float = 0.0            # features are (x - norm_mean) / norm_std before the model
    norm_std: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be positive, got {self.sample_rate}")
        if self.n_fft < 16 or self.n_fft & (self.n_fft - 1):
            problems.append(f"n_fft must be a power of two >= 16, got {self.n_fft}")
        if not 0 < self.hop_length <= self.n_fft:
            problems.append(f"hop_length must be in 1..n_fft ({self.n_fft}), got {self.hop_length}")
        if self.window != "hann":
            problems.append(f"window must be 'hann', got {self.window!r}")
        if self.mel_scale not in ("slaney", "htk"):
            problems.append(f"mel_scale must be 'slaney' or 'htk', got {self.mel_scale!r}")
        if self.mel_norm not in ("slaney", "none"):
            problems.append(f"mel_norm must be 'slaney' or 'none', got {self.mel_norm!r}")
        if self.log != "db":
            problems.append(f"log must be 'db', got {self.log!r}")
        if not 1 <= self.n_mels <= self.n_fft // 2:
            problems.append(f"n_mels must be in 1..{self.n_fft // 2}, got {self.n_mels}")
        if not 0 <= self.n_mfcc <= self.n_mels:
            problems.append(f"n_mfcc must be in 0..n_mels ({self.n_mels}), got {self.n_mfcc}")
        if self.frames_per_window < 1:
            problems.append(f"frames_per_window must be >= 1, got {self.frames_per_window}")
        if not self.norm_std > 0:
            problems.append(f"norm_std must be > 0, got {self.norm_std}")
        if not 0 <= self.fmin < self.fmax_hz <= self.sample_rate / 2:
            problems.append(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax_hz}")
        if problems:
            raise FeatureError("invalid feature spec: " + "; ".join(problems))

    @property
    def fmax_hz(self) -> float:
        """Upper mel edge (hertz)."""
        return float(self.sample_rate) / 2 if self.fmax is None else float(self.fmax)

    @property
    def n_features(self) -> int:
        """Coefficients per frame: n_mfcc if MFCC, else n_mels."""
        return self.n_mfcc or self.n_mels

    @property
    def hop_seconds(self) -> float:
        """Time between feature frames (seconds)."""
        return self.hop_length / self.sample_rate

    @property
    def window_seconds(self) -> float:
        """Audio covered by one model input window (seconds)."""
        return ((self.frames_per_window - 1) * self.hop_length + self.n_fft) / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in model bundles."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise FeatureError(f"unknown feature spec keys: {', '.join(unknown)}")
        return cls(**d)

    def same_features(self, other: FeatureSpec) -> bool:
        """True when both specs produce the same un-normalised features."""
        a, b = self.to_dict(), other.to_dict()
        for k in ("norm_mean", "norm_std", "frames_per_window"):
            a.pop(k), b.pop(k)
        return a == b


# ---------------------------------------------------------------- filterbank

def _hz_to_mel(f: Union[np.ndarray, float], scale: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    safe = np.maximum(f, min_log_hz)
    return np.where(f >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray, scale: str) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """Triangular mel filters, ``(n_mels, n_fft // 2 + 1)`` float32 (librosa.filters.mel conventions)."""
    n_bins = spec.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, spec.sample_rate / 2, n_bins)
    edges_mel = np.linspace(_hz_to_mel(spec.fmin, spec.mel_scale), _hz_to_mel(spec.fmax_hz, spec.mel_scale),
                            spec.n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel, spec.mel_scale)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    weights = np.zeros((spec.n_mels, n_bins), dtype=np.float32)
    for i in range(spec.n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    if spec.mel_norm == "slaney":
        weights *= (2.0 / (edges_hz[2:spec.n_mels + 2] - edges_hz[:spec.n_mels]))[:, None].astype(np.float32)
    return weights


def _dct_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """Orthonormal DCT-II basis ``(n_mfcc, n_mels)`` float32, as scipy.fft.dct(norm='ortho')."""
    k = np.arange(n_mfcc)[:, None]
    n = np.arange(n_mels)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    return basis.astype(np.float32)


# ---------------------------------------------------------------- extraction

class _Kernel:
    """The per-frame computation shared by batch and streaming extraction."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        n = np.arange(spec.n_fft)
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / spec.n_fft)).astype(np.float32)  # periodic Hann
        weights = mel_filterbank(spec)
        rows, cols = np.nonzero(weights)
        empty = sorted(set(range(spec.n_mels)) - set(rows.tolist()))
        if empty:
            raise FeatureError(f"mel bands {empty} have no FFT bins: lower n_mels or raise n_fft")
        self.bins = cols.astype(np.intp)
        self.weights = weights[rows, cols]
        self.band_starts = np.searchsorted(rows, np.arange(spec.n_mels)).astype(np.intp)
        self.amin = np.float32(spec.amin)
        self.dct = _dct_matrix(spec.n_mfcc, spec.n_mels) if spec.n_mfcc else None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(n, n_fft)`` float32 frames → ``(n, n_features)`` float32 features (dB or MFCC)."""
        if frames.shape[0] == 0:
            return np.zeros((0, self.spec.n_features), dtype=np.float32)
        spectrum = np.fft.rfft(frames * self.window, axis=1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        mel = np.add.reduceat(np.take(power, self.bins, axis=1) * self.weights, self.band_starts, axis=1)
        db = np.float32(10.0) * np.log10(np.maximum(mel, self.amin))
        if self.dct is None:
            return db
        return (db[:, None, :] * self.dct[None, :, :]).sum(axis=2)


def to_mono_float(audio: np.ndarray, channel: Any = "mean") -> np.ndarray:
    """Convert int16 or float audio ``(n,)`` or ``(n, channels)`` to ``(n,)`` float32.

    ``channel`` is an index, a sequence of indices (averaged), or "mean" (all channels averaged).
    int16 is scaled by 1/32768; float input must already be in [-1, 1].
    """
    x = np.asarray(audio)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / np.float32(INT16_FULL_SCALE)
    elif np.issubdtype(x.dtype, np.integer):
        raise FeatureError(f"integer audio must be int16, got {x.dtype}")
    elif x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim == 1:
        if channel not in ("mean", 0, (0,), [0]):
            raise FeatureError(f"audio is mono but channel {channel!r} was asked for")
        return x
    if x.ndim != 2:
        raise FeatureError(f"audio must be (samples,) or (samples, channels), got shape {x.shape}")
    n_ch = x.shape[1]
    if channel == "mean":
        return x[:, 0].copy() if n_ch == 1 else x.mean(axis=1, dtype=np.float32)
    idx = [channel] if isinstance(channel, (int, np.integer)) else list(channel)
    bad = [c for c in idx if not 0 <= c < n_ch]
    if bad or not idx:
        raise FeatureError(f"channel {channel!r} does not exist: the audio has {n_ch} channel(s)")
    if len(idx) == 1:
        return np.ascontiguousarray(x[:, idx[0]])
    return x[:, np.asarray(idx, dtype=np.intp)].mean(axis=1, dtype=np.float32)


def check_sample_rate(spec: FeatureSpec, sample_rate_hz: int, what: str = "audio") -> None:
    """Raise FeatureError if the audio's rate is not the spec's (no silent resampling)."""
    if int(sample_rate_hz) != spec.sample_rate:
        raise FeatureError(
            f"{what} is sampled at {sample_rate_hz} Hz but the model expects {spec.sample_rate} Hz; "
            f"resample it first (e.g. `sox in.wav -r {spec.sample_rate} out.wav`)")


def extract(spec: FeatureSpec, audio: np.ndarray) -> np.ndarray:
    """Batch features of a whole mono float32 recording: ``(frames, n_features)`` float32.

    Frames start at 0, hop_length apart; a trailing partial frame is dropped (center=False).
    """
    return StreamingExtractor(spec).process(audio)


class StreamingExtractor:
    """Features from audio arriving in chunks of any size; identical to ``extract`` on the concatenation."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._kernel = _Kernel(spec)
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_out = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Mono float32 samples ``(n,)`` in → new feature rows ``(frames, n_features)`` float32 out."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise FeatureError(f"streaming extractor takes mono (n,) audio, got shape {x.shape}")
        buf = np.concatenate((self._pending, x)) if self._pending.size else x
        n_fft, hop = self.spec.n_fft, self.spec.hop_length
        n_frames = 0 if buf.size < n_fft else 1 + (buf.size - n_fft) // hop
        if n_frames == 0:
            self._pending = buf.copy() if buf is x else buf
            return np.zeros((0, self.spec.n_features), dtype=np.float32)
        frames = np.lib.stride_tricks.as_strided(
            buf, shape=(n_frames, n_fft), strides=(buf.strides[0] * hop, buf.strides[0]), writeable=False)
        out = self._kernel(frames)
        self._pending = buf[n_frames * hop:].copy()
        self.frames_out += n_frames
        return out

    def reset(self) -> None:
        """Forget buffered audio (after a gap or a source restart)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_out = 0


def normalise(spec: FeatureSpec, features: np.ndarray) -> np.ndarray:
    """Apply the spec's normalisation: ``(x - norm_mean) / norm_std``, float32."""
    return (features - np.float32(spec.norm_mean)) * np.float32(1.0 / spec.norm_std)


def windows(spec: FeatureSpec, features: np.ndarray, hop_frames: int) -> np.ndarray:
    """Slice ``(frames, n_features)`` into ``(n_windows, frames_per_window, n_features)`` windows, hop_frames apart."""
    w = spec.frames_per_window
    if features.shape[0] < w:
        return np.zeros((0, w, features.shape[1]), dtype=np.float32)
    n = 1 + (features.shape[0] - w) // hop_frames
    f = np.ascontiguousarray(features)
    return np.lib.stride_tricks.as_strided(
        f, shape=(n, w, f.shape[1]), strides=(f.strides[0] * hop_frames, f.strides[0], f.strides[1]),
        writeable=False)
