"""Replay a WAV file as if it were a microphone: as fast as possible, or at real-time pace.

``open`` refuses (SourceError, one sentence) a file at another rate than the model's
(``expect_rate_hz``), with fewer channels than the machine uses (``min_channels``),
and an empty file that is meant to loop, which could only spin.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

from edge_monitor.sources.base import Block, SourceError
from edge_monitor.wavio import WavError, read_wav

if TYPE_CHECKING:
    from edge_monitor.config import SourceConfig


class WavFileSource:
    """A Source reading a WAV file in fixed blocks. ``read`` raises EOFError at the end (unless looping)."""

    def __init__(self, path: Union[str, Path], *, block_seconds: float = 0.032, realtime: bool = False,
                 loop: bool = False, start_time_s: Optional[float] = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 expect_rate_hz: Optional[int] = None, min_channels: int = 1) -> None:
        self.path = Path(path)
        self.expect_rate_hz = expect_rate_hz
        self.min_channels = max(1, int(min_channels))
        self.block_seconds = block_seconds
        self.realtime = realtime
        self.loop = loop
        self._start_time_s = start_time_s
        self._sleep, self._clock = sleep, clock
        self._audio: Optional[np.ndarray] = None
        self.sample_rate = 0
        self.channels = 0
        self._pos = 0
        self._emitted = 0

    @classmethod
    def from_config(cls, cfg: SourceConfig, expect_rate_hz: Optional[int] = None) -> WavFileSource:
        """Build from a SourceConfig (type: file)."""
        if not cfg.path:
            raise ValueError("source.path is required with type: file")
        return cls(cfg.path, block_seconds=cfg.block_seconds, realtime=cfg.realtime, loop=cfg.loop,
                   expect_rate_hz=expect_rate_hz, min_channels=max(cfg.channels) + 1)

    def open(self) -> None:
        """Read the file into memory."""
        try:
            self._audio, self.sample_rate = read_wav(self.path)
        except FileNotFoundError:
            raise SourceError(f"{self.path}: file not found") from None
        except WavError as exc:
            raise SourceError(str(exc)) from None
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read it ({exc.strerror})") from None
        audio, rate = self._audio, self.sample_rate
        problem = None
        if self.expect_rate_hz is not None and rate != self.expect_rate_hz:
            problem = (f"sampled at {rate} Hz but the model expects {self.expect_rate_hz} Hz; resample it first "
                       f"(e.g. `sox in.wav -r {self.expect_rate_hz} out.wav`)")
        elif audio.shape[1] < self.min_channels:
            problem = f"has {audio.shape[1]} channel(s) but channel {self.min_channels - 1} is configured"
        elif self.loop and audio.shape[0] == 0:
            problem = "has no audio, so it cannot be looped"
        if problem:
            self._audio = None
            raise SourceError(f"{self.path}: {problem}")
        self.channels = self._audio.shape[1]
        self._pos = 0
        self._emitted = 0
        self._t0_wall = time.time() if self._start_time_s is None else self._start_time_s
        self._t0_mono = self._clock()

    @property
    def duration_s(self) -> float:
        """Length of the file (seconds)."""
        return 0.0 if self._audio is None else self._audio.shape[0] / self.sample_rate

    def read(self, timeout_s: float = 1.0) -> Optional[Block]:
        """The next block; EOFError after the last one."""
        if self._audio is None:
            raise SourceError(f"{self.path}: read() before open()")
        n = max(1, int(round(self.block_seconds * self.sample_rate)))
        if self._pos >= self._audio.shape[0]:
            if not self.loop or self._audio.shape[0] == 0:
                raise EOFError(str(self.path))
            self._pos = 0
        chunk = self._audio[self._pos:self._pos + n]
        self._pos += chunk.shape[0]
        t_s = self._t0_wall + self._emitted / self.sample_rate
        if self.realtime:
            due = self._t0_mono + (self._emitted + chunk.shape[0]) / self.sample_rate
            wait = due - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._emitted += chunk.shape[0]
        return Block(chunk, t_s, self.sample_rate)

    def stats(self) -> dict:
        """Counters for telemetry (a file never drops)."""
        return {"dropped_frames": 0, "overflows": 0, "position_s": self._emitted / max(self.sample_rate, 1)}

    def close(self) -> None:
        """Forget the audio."""
        self._audio = None
