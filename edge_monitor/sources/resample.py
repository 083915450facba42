"""Streaming rational-ratio resampler: polyphase Kaiser-windowed sinc, numpy only.

The output is the same whatever the input chunking: ``process`` carries the
input history itself, so feeding a signal in one call or in many gives the same
samples, bit for bit. Output sample ``j`` is the band-limited input evaluated
at input time ``j * in_rate / out_rate`` (zero phase, no delay), so timestamps
map exactly: an output block starting at output frame ``j`` starts at
``t0 + j / out_rate_hz``. The price is that output ``j`` is only emitted once
``half_taps`` input samples beyond it have arrived (about 3 ms at 48 kHz).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_BATCH_OUTPUT_FRAMES = 128  # bounds the (batch, taps) scratch arrays so they stay in cache


def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser window shape parameter for a given stopband attenuation (dB)."""
    if attenuation_db > 50.0:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db >= 21.0:
        return 0.5842 * (attenuation_db - 21.0) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    return 0.0


class StreamingResampler:
    """Resample ``(frames, channels)`` float32 audio from ``in_rate_hz`` to ``out_rate_hz`` in chunks.

    The anti-aliasing filter passes up to ``passband_edge * min(rates) / 2`` and
    stops from ``min(rates) / 2`` with ``attenuation_db`` of rejection, so nothing
    above the output's Nyquist frequency folds back by more than -attenuation_db.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, channels: int = 1, *,
                 attenuation_db: float = 90.0, passband_edge: float = 0.9):
        """Design the polyphase filter bank; raises ValueError on impossible settings."""
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate_hz} Hz -> {out_rate_hz} Hz")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if not 0.5 <= passband_edge < 1.0:
            raise ValueError(f"passband_edge must be in [0.5, 1), got {passband_edge}")
        divisor = math.gcd(int(in_rate_hz), int(out_rate_hz))
        self.in_rate_hz = int(in_rate_hz)
        self.out_rate_hz = int(out_rate_hz)
        self.channels = int(channels)
        self.up = self.out_rate_hz // divisor      # L: phases per input sample
        self.down = self.in_rate_hz // divisor     # M: input step per output, in 1/L units
        nyquist_hz = 0.5 * min(self.in_rate_hz, self.out_rate_hz)
        transition_hz = (1.0 - passband_edge) * nyquist_hz
        cutoff_hz = nyquist_hz - 0.5 * transition_hz
        # Kaiser's length estimate, in input samples (the prototype's span at the input rate).
        transition_rad = 2.0 * math.pi * transition_hz / self.in_rate_hz
        span_in = (attenuation_db - 7.95) / (2.285 * transition_rad)
        self.half_taps = max(2, int(math.ceil(span_in / 2.0)))
        self.taps = 2 * self.half_taps
        self._table = self._design(cutoff_hz / self.in_rate_hz, kaiser_beta(attenuation_db))
        self.reset()

    def _design(self, cutoff_cycles: float, beta: float) -> np.ndarray:
        """``(up, taps)`` float64: row r holds the weights for outputs at fractional position r/up."""
        phases = np.arange(self.up, dtype=np.float64)[:, None] / self.up
        offsets = np.arange(self.taps, dtype=np.float64)[None, :]
        # Tap i of phase r multiplies input q - half_taps + 1 + i for an output at q + r/up.
        distance = phases + (self.half_taps - 1) - offsets
        shape = np.clip(1.0 - (distance / self.half_taps) ** 2, 0.0, None)
        window = np.i0(beta * np.sqrt(shape)) / np.i0(beta)
        table = 2.0 * cutoff_cycles * np.sinc(2.0 * cutoff_cycles * distance) * window
        # Exact unity gain at DC for every phase, so a constant stays constant.
        return table / table.sum(axis=1, keepdims=True)

    def reset(self) -> None:
        """Forget all history: the next input sample is input frame 0, preceded by silence."""
        # History starts half_taps - 1 frames before input frame 0 (those are zeros).
        self._history = np.zeros((self.channels, self.half_taps - 1), dtype=np.float64)   # (channels, frames)
        self._history_start = -(self.half_taps - 1)
        self._next_output = 0
        self._input_frames = 0
        self._squeeze_flush = False

    @property
    def output_frames(self) -> int:
        """Output frames emitted since the last reset."""
        return self._next_output

    @property
    def input_frames(self) -> int:
        """Input frames consumed since the last reset."""
        return self._input_frames

    def output_frames_for(self, input_frames: int) -> int:
        """How many output frames ``input_frames`` of input (from reset) yield, before any flush."""
        ready = (input_frames - self.half_taps) * self.up
        return 0 if ready <= 0 else (ready - 1) // self.down + 1

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Consume ``(frames, channels)`` (or ``(frames,)`` for mono) input; return the outputs now ready."""
        block = np.asarray(samples)
        squeeze = block.ndim == 1
        self._squeeze_flush = squeeze
        if squeeze:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected (frames, {self.channels}) samples, got shape {np.shape(samples)}")
        self._input_frames += block.shape[0]
        self._history = np.concatenate([self._history, block.T.astype(np.float64)], axis=1)
        out = self._emit(self.output_frames_for(self._input_frames))
        return out[:, 0] if squeeze else out

    def flush(self) -> np.ndarray:
        """Outputs still pending at the end of a stream, as if silence followed; then ``reset()``.

        The shape follows the last ``process`` input: ``(frames,)`` after mono input.
        """
        total = self.output_frames_for(self._input_frames + self.half_taps)
        # Outputs whose time lies at or beyond the last input sample add nothing real; stop before them.
        last_useful = 0 if self._input_frames == 0 else ((self._input_frames - 1) * self.up) // self.down + 1
        total = min(total, last_useful)
        self._history = np.concatenate([self._history, np.zeros((self.channels, self.half_taps))], axis=1)
        out = self._emit(total)
        squeeze = self._squeeze_flush
        self.reset()
        return out[:, 0] if squeeze else out

    def _emit(self, end_output: int) -> np.ndarray:
        """Compute outputs ``[next_output, end_output)`` and drop history no longer needed."""
        count = max(0, end_output - self._next_output)
        out = np.empty((count, self.channels), dtype=np.float32)
        # One row per possible window start, without copying: (history_frames - taps + 1, taps) per channel.
        windows_by_start = [] if count == 0 else [
            sliding_window_view(self._history[c], self.taps) for c in range(self.channels)]
        for start in range(0, count, _BATCH_OUTPUT_FRAMES):
            outputs = np.arange(self._next_output + start,
                                self._next_output + min(count, start + _BATCH_OUTPUT_FRAMES), dtype=np.int64)
            whole, phase = np.divmod(outputs * self.down, self.up)
            first = whole - (self.half_taps - 1) - self._history_start
            if self.up == 1:   # integer decimation: one phase, no per-output weights to gather
                weights, subscripts = self._table[0], "bt,t->b"
            else:
                weights, subscripts = self._table[phase], "bt,bt->b"      # (batch, taps)
            for channel, view in enumerate(windows_by_start):
                # einsum's row-by-row dot keeps each output independent of the batch it lands in.
                out[start:start + len(outputs), channel] = np.einsum(subscripts, view[first], weights)
        self._next_output += count
        keep_from = (self._next_output * self.down) // self.up - (self.half_taps - 1)
        drop = keep_from - self._history_start
        if drop > 0:
            self._history = self._history[:, drop:]
            self._history_start = keep_from
        return out


def resample(samples: np.ndarray, in_rate_hz: int, out_rate_hz: int, **filter_options) -> np.ndarray:
    """One-shot resampling of a whole ``(frames,)`` or ``(frames, channels)`` signal (process + flush)."""
    block = np.asarray(samples, dtype=np.float32)
    channels = 1 if block.ndim == 1 else block.shape[1]
    resampler = StreamingResampler(in_rate_hz, out_rate_hz, channels, **filter_options)
    body = resampler.process(block)
    tail = resampler.flush()
    return np.concatenate([body, tail])
