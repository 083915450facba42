"""One machine's processing chain: audio block → features → windows → model → detector → events.

Pure and single-threaded: ``process`` takes a block (with its own timestamps) and
returns the events it caused. The daemon runs one Pipeline per machine on its own
thread; tests and ``replay`` call it directly.

Data flow for one block::

    Block.samples (frames, channels) float32
      → select()               (n,) float32 mono: one channel or the mean of several
      → StreamingExtractor     (new_frames, n_features) float32 log-mel / MFCC
      → window assembly        every ``hop_frames`` frames, the last ``frames_per_window`` frames
      → ModelRunner.process    float score per window (higher = more anomalous);
                               classifiers: ModelRunner.classify, and AlertLabeler names the alert
      → Detector.process       AlertEvent / StateEvent / HealthEvent (LevelMeter: silence, clipping)

The install-time machine-type check (``machine_check.MachineTypeCheck``) listens to the first
seconds of audio beside it and is dropped once it has decided.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from edge_monitor.alert_labels import AlertLabeler
from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import Event, ScoreEvent
from edge_monitor.features import FeatureError, StreamingExtractor, to_mono_float
from edge_monitor.levels import SILENT_DBFS, LevelMeter
from edge_monitor.machine_check import MachineTypeCheck, TypeCheckResult, make_type_check
from edge_monitor.model import ModelRunner
from edge_monitor.sources.base import Block

if TYPE_CHECKING:
    from edge_monitor.config import Config


def detector_settings(cfg: Config, model_threshold: float) -> DetectorSettings:
    """DetectorSettings from a Config's detection and health sections, defaulting to the model's threshold."""
    d, h = cfg.detection, cfg.health
    return DetectorSettings(
        threshold=d.threshold if d.threshold is not None else model_threshold,
        clear_threshold=d.clear_threshold, trigger_k=d.trigger_k, trigger_n=d.trigger_n,
        clear_windows=d.clear_windows, cooldown_seconds=d.cooldown_seconds,
        silence_dbfs=h.silence_dbfs, clipping_fraction=h.clipping_fraction)


def select_channels(samples: np.ndarray, channels: Sequence[int], mix: str) -> np.ndarray:
    """A machine's channel(s) of a ``(frames, channels)`` block → ``(frames,)`` float32: one, or the mean of several."""
    if samples.ndim == 1:
        return to_mono_float(samples)
    if mix == "first" or len(channels) == 1:
        return to_mono_float(samples, channels[0])
    return to_mono_float(samples, tuple(channels))


class Pipeline:
    """Features, model and detector for one machine."""

    def __init__(self, runner: ModelRunner, detector: Detector, *, channels: Sequence[int] = (0,),
                 mix: str = "mean", window_hop_seconds: float = 0.5) -> None:
        self.runner = runner
        self.detector = detector
        self.spec = runner.bundle.spec
        self.channels = tuple(channels)
        self.mix = mix
        self.hop_frames = max(1, int(round(window_hop_seconds / self.spec.hop_seconds)))
        self.extractor = StreamingExtractor(self.spec)
        self.levels = LevelMeter(self.spec, self.hop_frames)
        self.windows_scored = 0
        self.last_score: Optional[float] = None
        self.last_rms_dbfs = SILENT_DBFS
        bundle = runner.bundle
        self.labeler = AlertLabeler(bundle.labels, bundle.alert_labels) if bundle.kind == "classifier" else None
        self.type_check: Optional[MachineTypeCheck] = None      # install-time check; dropped once it has decided
        self.type_check_result: Optional[TypeCheckResult] = None
        self.reset()

    @classmethod
    def from_config(cls, cfg: Config, runner: ModelRunner, id_factory: Optional[Callable[[], str]] = None) -> Pipeline:
        """Build from a Config and a loaded model."""
        kwargs = {"id_factory": id_factory} if id_factory else {}
        det = Detector(detector_settings(cfg, runner.bundle.threshold), cfg.machine.id, runner.bundle.ident, **kwargs)
        pipeline = cls(runner, det, channels=cfg.source.channels, mix=cfg.source.mix,
                       window_hop_seconds=cfg.detection.window_hop_seconds)
        pipeline.type_check = make_type_check(cfg, runner.bundle.spec.sample_rate, det.settings.silence_dbfs)
        return pipeline

    def reset(self) -> None:
        """Forget buffered audio and features (after a source restart). The detector keeps its state."""
        self.extractor.reset()
        self._history = np.zeros((0, self.spec.n_features), dtype=np.float32)  # last (w - 1) feature rows
        self._frames_seen = 0
        self._samples_seen = 0
        self.levels.reset()

    def select(self, samples: np.ndarray) -> np.ndarray:
        """Pick this machine's channel(s) from a ``(frames, channels)`` block → ``(frames,)`` float32."""
        return select_channels(samples, self.channels, self.mix)

    def process(self, block: Block) -> list[Event]:
        """Process one block from a source; returns the events it caused."""
        if block.sample_rate != self.spec.sample_rate:
            raise FeatureError(f"the source delivers {block.sample_rate} Hz but the model expects "
                               f"{self.spec.sample_rate} Hz")
        return self.process_mono(self.select(block.samples), block.t_s)

    def process_mono(self, mono: np.ndarray, t_s: float) -> list[Event]:
        """Process mono float32 samples whose first sample was taken at UNIX time ``t_s``."""
        if self.type_check is None:
            return self._process_mono(mono, t_s)
        events = self.type_check.process(mono, t_s)
        if self.type_check.done:
            self.type_check_result, self.type_check = self.type_check.result, None
        return events + self._process_mono(mono, t_s)

    def _process_mono(self, mono: np.ndarray, t_s: float) -> list[Event]:
        sr = self.spec.sample_rate
        t_origin = t_s - self._samples_seen / sr
        self._samples_seen += mono.size
        self.levels.add(mono)
        feats = self.extractor.process(mono)
        if feats.shape[0] == 0:
            self.levels.trim()
            return []
        w, hop = self.spec.frames_per_window, self.hop_frames
        first = self._frames_seen                      # global index of feats[0]
        self._frames_seen += feats.shape[0]
        rows = np.concatenate((self._history, feats)) if self._history.shape[0] else feats
        rows_base = first - self._history.shape[0]     # global index of rows[0]
        events: list[Event] = []
        # windows end at global frame e (exclusive) with e >= w and (e - w) % hop == 0
        e = max(w, first + 1)
        e += (-(e - w)) % hop
        while e <= self._frames_seen:
            window = rows[e - w - rows_base:e - rows_base]
            end_sample = (e - 1) * self.spec.hop_length + self.spec.n_fft
            t_end = t_origin + end_sample / sr
            events += self._score_window(window, e, t_end)
            e += hop
        self._history = rows[-(w - 1):].copy() if w > 1 else rows[:0].copy()
        self.levels.trim()
        return events

    def _score_window(self, window: np.ndarray, end_frame: int, t_end: float) -> list[Event]:
        level_dbfs, clip_fraction = self.levels.window(end_frame)
        self.last_rms_dbfs = level_dbfs
        settings = self.detector.settings
        score: Optional[float] = None
        latency_ms = 0.0
        probs: Optional[np.ndarray] = None
        if level_dbfs >= settings.silence_dbfs:
            t0 = time.perf_counter()
            if self.labeler is not None:
                score, probs = self.runner.classify(window)
            else:
                score = self.runner.process(window)
            latency_ms = (time.perf_counter() - t0) * 1e3
            self.windows_scored += 1
            self.last_score = score
        events = self.detector.process(score, t_end, level_dbfs, clip_fraction)
        if self.labeler is not None:
            events = self.labeler.label(events, probs, settings.trigger_n)
        if score is not None:
            pairs = None if probs is None else tuple(zip(self.runner.bundle.labels, (float(p) for p in probs)))
            events.append(ScoreEvent(self.detector.machine, t_end, score, settings.threshold, level_dbfs, latency_ms,
                                     pairs))
        return events

    def update_settings(self, settings: DetectorSettings) -> None:
        """Reload detector settings without touching audio state."""
        self.detector.update_settings(settings)

    def close(self) -> None:
        """Release the model (and the machine-type check's, if it is still listening)."""
        if self.type_check is not None:
            self.type_check.close()
        self.runner.close()
