"""Score whole recordings with a model: the batch path used by ``score``, ``evaluate`` and calibration.

A file's score is the **mean** of its window scores (the DCASE convention);
the window scores are kept so callers can apply other aggregates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Union

import numpy as np

from edge_monitor.features import FeatureError, check_sample_rate, extract, to_mono_float, windows
from edge_monitor.model import ModelRunner
from edge_monitor.wavio import WavError, read_wav

DEFAULT_WINDOW_HOP_SECONDS = 0.5


class ScoringError(ValueError):
    """A file that can't be scored. One sentence naming the file and the problem."""


@dataclasses.dataclass(frozen=True)
class FileScore:
    """The score of one recording."""

    file: str
    score: float                 # mean of window scores
    threshold: float
    windows: tuple[float, ...]   # one score per window, in time order

    @property
    def anomalous(self) -> bool:
        """True when the file score exceeds the threshold."""
        return self.score > self.threshold

    def to_json(self) -> dict[str, Any]:
        """The object ``edge-monitor score --json`` prints (DESIGN.md contract)."""
        return {"file": self.file, "score": self.score, "threshold": self.threshold,
                "anomalous": self.anomalous, "windows": list(self.windows)}


def hop_frames_for(runner: ModelRunner, window_hop_seconds: float = DEFAULT_WINDOW_HOP_SECONDS) -> int:
    """Feature frames between scored windows for a window hop in seconds (at least 1)."""
    return max(1, int(round(window_hop_seconds / runner.bundle.spec.hop_seconds)))


def load_mono(path: Union[str, Path], sample_rate_hz: int, channel: Any = "mean") -> np.ndarray:
    """Read a WAV as mono float32 at exactly ``sample_rate_hz``; ScoringError otherwise."""
    try:
        audio, rate = read_wav(path)
        check_file_rate(sample_rate_hz, rate, path)
        return to_mono_float(audio, channel)
    except (WavError, FeatureError) as exc:
        raise ScoringError(str(exc)) from None
    except OSError as exc:
        raise ScoringError(f"{path}: cannot read it ({exc.strerror})") from None


def check_file_rate(expected_hz: int, actual_hz: int, path: Union[str, Path]) -> None:
    """Raise ScoringError if a file's rate is not the model's (no silent resampling)."""
    if int(actual_hz) != int(expected_hz):
        raise ScoringError(f"{path}: sampled at {actual_hz} Hz but the model expects {expected_hz} Hz; "
                           f"resample it first (e.g. `sox in.wav -r {expected_hz} out.wav`)")


def window_scores(runner: ModelRunner, audio: np.ndarray, hop_frames: int) -> np.ndarray:
    """Scores of every window of a mono float32 recording, ``(n_windows,)`` float64."""
    spec = runner.bundle.spec
    feats = extract(spec, audio)
    return runner.process_many(windows(spec, feats, hop_frames))


def score_file(runner: ModelRunner, path: Union[str, Path], *, threshold: float | None = None,
               window_hop_seconds: float = DEFAULT_WINDOW_HOP_SECONDS, channel: Any = "mean") -> FileScore:
    """Score one WAV file. Raises ScoringError with one clear sentence for unusable input."""
    spec = runner.bundle.spec
    audio = load_mono(path, spec.sample_rate, channel)
    scores = window_scores(runner, audio, hop_frames_for(runner, window_hop_seconds))
    if scores.size == 0:
        raise ScoringError(f"{path}: too short to score ({audio.size / spec.sample_rate:.2f} s; "
                           f"a window needs {spec.window_seconds:.2f} s)")
    thr = runner.bundle.threshold if threshold is None else float(threshold)
    return FileScore(str(path), float(np.mean(scores)), thr, tuple(float(s) for s in scores))


__all__ = ["FileScore", "ScoringError", "score_file", "window_scores", "load_mono", "hop_frames_for",
           "check_sample_rate", "DEFAULT_WINDOW_HOP_SECONDS"]
