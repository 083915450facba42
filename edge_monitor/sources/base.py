"""The protocol every audio source implements."""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol, runtime_checkable

import numpy as np


class SourceError(RuntimeError):
    """The source failed (device lost, port unplugged, file unreadable). The daemon retries."""


@dataclasses.dataclass(frozen=True)
class Block:
    """A block of audio as delivered by a source.

    ``samples`` is ``(frames, channels)`` float32 in [-1, 1]. ``t_s`` is the UNIX
    time (s) of the first sample. ``gap_frames`` counts samples the source knows it
    lost just before this block (and filled with zeros, or left out).
    """

    samples: np.ndarray
    t_s: float
    sample_rate: int
    gap_frames: int = 0


@runtime_checkable
class Source(Protocol):
    """Something that yields audio blocks. Only sources touch hardware."""

    sample_rate: int
    channels: int

    def open(self) -> None:
        """Acquire the device; raise SourceError if it is not there."""

    def read(self, timeout_s: float) -> Optional[Block]:
        """Next block, or None on timeout. Raise SourceError on failure, EOFError at the end of a file."""

    def stats(self) -> dict:
        """Counters for telemetry: at least ``dropped_frames`` and ``overflows``."""

    def close(self) -> None:
        """Release the device. Safe to call twice."""


@runtime_checkable
class AlarmOutput(Protocol):
    """An optional capability of a source: an output on the device that follows the alarm (the Arduino's LED
    and relay). The daemon drives it from the machine's state; sources without one simply lack the method."""

    def set_alarm(self, on: bool) -> bool:
        """Switch the output; True if the device was told now, False if it will be told when it is back."""


def alarm_output(source: object) -> Optional[AlarmOutput]:
    """``source`` as an AlarmOutput when it has one, else None."""
    return source if isinstance(source, AlarmOutput) else None
