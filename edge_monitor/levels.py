"""The level under each scored window: RMS in dBFS and the fraction of clipped samples.

The detector needs both for every window it scores (silence and clipping health), over exactly
the audio the window's frames cover. ``LevelMeter`` keeps a sum of squares and a clipped-sample
count per feature hop, only for the hops a window still to come can cover, so its memory stays
constant however long the stream runs. Pure: no threads, no clock.
"""

from __future__ import annotations

import math

import numpy as np

from edge_monitor.features import FeatureSpec

CLIP_LEVEL = 0.99  # |sample| at or above this counts as full scale (10-bit ADCs top out at 0.998)
SILENT_DBFS = -160.0


def rms_dbfs(mean_square: float) -> float:
    """RMS level in dBFS of a signal with the given mean square (-160 for silence)."""
    return 10.0 * math.log10(mean_square) if mean_square > 1e-16 else SILENT_DBFS


class LevelMeter:
    """Per-hop level statistics of a mono stream, queried per window of feature frames."""

    def __init__(self, spec: FeatureSpec, hop_frames: int) -> None:
        self.spec = spec
        self.hop_frames = hop_frames
        self._hops_per_frame = max(1, spec.n_fft // spec.hop_length)
        self.reset()

    def reset(self) -> None:
        """Forget everything (after a source restart)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._sumsq = np.zeros(0, dtype=np.float64)      # per-hop sum of squares, recent hops only
        self._clipped = np.zeros(0, dtype=np.int64)
        self._base = 0                                   # global hop index of _sumsq[0]

    def add(self, mono: np.ndarray) -> None:
        """Account for the next samples of the stream."""
        hop = self.spec.hop_length
        buf = np.concatenate((self._pending, mono)) if self._pending.size else mono
        n = buf.size // hop
        if n:
            blocks = buf[:n * hop].reshape(n, hop).astype(np.float64)
            self._sumsq = np.concatenate((self._sumsq, np.einsum("ij,ij->i", blocks, blocks)))
            self._clipped = np.concatenate((self._clipped, (np.abs(blocks) >= CLIP_LEVEL).sum(axis=1)))
        self._pending = buf[n * hop:].copy()

    def trim(self) -> None:
        """Drop statistics older than any window still to come (call after a block's windows are scored)."""
        keep = self.spec.frames_per_window + self._hops_per_frame + self.hop_frames + 4
        drop = max(0, self._sumsq.size - keep)
        if drop:
            self._sumsq = self._sumsq[drop:]
            self._clipped = self._clipped[drop:]
            self._base += drop

    def window(self, end_frame: int) -> tuple[float, float]:
        """(RMS dBFS, clipped fraction) of the audio under frames ``[end_frame - w, end_frame)``."""
        first_hop = end_frame - self.spec.frames_per_window - self._base
        last_hop = end_frame - 1 + self._hops_per_frame - self._base
        lo, hi = max(0, first_hop), min(self._sumsq.size, last_hop)
        if hi <= lo:
            return SILENT_DBFS, 0.0
        n = (hi - lo) * self.spec.hop_length
        return rms_dbfs(float(self._sumsq[lo:hi].sum()) / n), float(self._clipped[lo:hi].sum()) / n
