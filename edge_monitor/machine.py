"""One monitored machine: its pipeline, sinks and clip recorder, and the settings in force.

Called from its source worker's thread (``process``), from paho's thread
(``set_threshold``) and from the main thread (``reload``, ``telemetry``).

The threshold has one owner, the Machine: the model's calibrated value, unless the
YAML sets one, unless a value was set at run time (``threshold/set`` over MQTT, or
the web page; persisted in the state folder by its one ``ThresholdStore``) and the
YAML value has not changed since. The MQTT sink only passes requests on; the Machine
validates, saves, applies and publishes them under its settings lock, which a reload
holds too while it decides and publishes.

An alert episode is always closed: by the detector, by ``close_episode_on_stop``
(``reason: "shutdown"``, then the retained state becomes ``unknown``), or, after a
crash, by the next start (``close_dangling_episode``, ``reason: "restart"``, from the
open-episode record in the state folder).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from edge_monitor.config import Config
from edge_monitor.detector import DetectorSettings
from edge_monitor.episodes import EpisodeStore, restart_end
from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.pipeline import Pipeline, detector_settings
from edge_monitor.sinks.base import Sink
from edge_monitor.sources.base import AlarmOutput, Block, Source, SourceError
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.threshold_store import UNRECORDED, ThresholdStore, is_valid_threshold

if TYPE_CHECKING:
    from edge_monitor.sinks.clips import ClipRecorder

_LOGGER = logging.getLogger("edge_monitor.daemon")  # the daemon's log name, which log readers and benchmarks match


RELOADABLE = {
    ("detection", "threshold"), ("detection", "clear_threshold"), ("detection", "trigger_k"),
    ("detection", "trigger_n"), ("detection", "clear_windows"), ("detection", "cooldown_seconds"),
    ("health", "silence_dbfs"), ("health", "clipping_fraction"), ("log_level",),
}
"""Settings a SIGHUP applies; a change to anything else is reported as needing a restart."""


def changed_settings(old: Config, new: Config) -> list[str]:
    """Dotted names of the settings that differ between two configs (internal fields excluded)."""
    out: list[tuple[str, ...]] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            for f in dataclasses.fields(a):
                if not f.metadata.get("internal"):
                    walk(getattr(a, f.name), getattr(b, f.name), path + (f.name,))
        elif a != b:
            out.append(path)

    walk(old, new, ())
    return [".".join(p) for p in out]


class Machine:
    """One monitored machine: its pipeline, clip recorder and sinks. Called from its source worker thread.

    It owns the detector settings in force (one lock) and the threshold: see the module docstring.
    """

    def __init__(self, cfg: Config, pipeline: Pipeline, sinks: list[Sink], clips: Optional[ClipRecorder] = None,
                 threshold_store: Optional[ThresholdStore] = None, episodes: Optional[EpisodeStore] = None) -> None:
        self.cfg = cfg
        self.id = cfg.machine.id
        self.pipeline = pipeline
        self.sinks = sinks
        self.clips = clips
        self.threshold_store = threshold_store
        self.episodes = episodes
        self.model_threshold = pipeline.runner.bundle.threshold
        self.runtime_threshold: Optional[float] = None  # set over MQTT (and persisted)
        self.threshold_listeners: list[Callable[[float], None]] = []  # e.g. MqttSink.show_threshold
        self.alarm: Optional[AlarmOutput] = None  # the source's alarm output (serial: the Arduino's relay), if any
        self._settings_lock = threading.Lock()
        self._settings: DetectorSettings = pipeline.detector.settings  # the settings in force or about to be
        self._settings_dirty = False
        self._lock = threading.Lock()
        self._scores: list[float] = []
        self._latencies_ms: list[float] = []
        self._rms: list[float] = []
        self._invalid_samples = False
        self.alerts = 0
        self.state = "normal"
        self.started_s = time.time()
        self.first_score_s: Optional[float] = None
        self.recording_start_s: Optional[float] = None  # file sources: UNIX time of the file's first sample
        self.last_audio_end_s: Optional[float] = None  # UNIX time just after the last sample processed
        self._recording_loop_s = 0.0                     # a looping file's length

    # ------------------------------------------------------------ settings and threshold

    @property
    def settings(self) -> DetectorSettings:
        """The detector settings in force (or taking effect at the next block)."""
        with self._settings_lock:
            return self._settings

    def request_settings(self, settings: DetectorSettings) -> None:
        """Thread-safe: new detector settings take effect at the next block."""
        with self._settings_lock:
            self._settings = settings
            self._settings_dirty = True

    def settings_for(self, cfg: Config, runtime_threshold: Optional[float] = None) -> DetectorSettings:
        """The detector settings ``cfg`` asks for, with a run-time threshold if any. ValueError when unusable."""
        settings = detector_settings(cfg, self.model_threshold)
        if runtime_threshold is not None:
            clear = settings.clear_threshold
            settings = dataclasses.replace(settings, threshold=runtime_threshold,
                                           clear_threshold=None if clear is not None and clear > runtime_threshold
                                           else clear)
        return settings

    def restore_threshold(self) -> None:
        """At start: use the threshold saved at run time unless the YAML value changed since it was set."""
        if self.threshold_store is None:
            return
        saved, basis = self.threshold_store.load_record()
        if saved is None:
            return
        yaml_value = self.cfg.detection.threshold
        if basis is not UNRECORDED and basis != yaml_value:
            _LOGGER.info("%s: detection.threshold in the YAML changed (%s -> %s) since the threshold %g was set at "
                         "run time; the YAML value is used", self.id, basis, yaml_value, saved)
            self.threshold_store.clear()
            return
        _LOGGER.info("%s: using the threshold %g set at run time (from %s)", self.id, saved, self.threshold_store.path)
        self.runtime_threshold = saved
        settings = self.settings_for(self.cfg, saved)
        self.pipeline.update_settings(settings)
        with self._settings_lock:
            self._settings = settings

    def set_threshold(self, value: float) -> str:
        """A threshold requested at run time (``threshold/set``, on paho's thread; the web page): validate, save,
        apply and publish it. Returns "" or a warning (applied but not saved); ValueError refuses it.

        All of it happens under the settings lock, which ``reload`` also holds while it decides and
        publishes, so the value saved, the value in force and the value on ``threshold/state`` are the
        same one, whichever of a reload and a request comes last.
        """
        value = float(value)
        if not is_valid_threshold(value):
            raise ValueError(f"threshold {value!r} is not a finite number in (0, 1e9]")
        warning = ""
        with self._settings_lock:
            current = self._settings
            clear = current.clear_threshold
            self._settings = dataclasses.replace(current, threshold=value,
                                                 clear_threshold=None if clear is not None and clear > value else clear)
            self._settings_dirty = True
            self.runtime_threshold = value
            if self.threshold_store is not None:
                try:
                    self.threshold_store.save(value, source="mqtt", config_threshold=self.cfg.detection.threshold)
                except OSError as exc:
                    _LOGGER.error("%s: threshold %g applied but not saved to %s: %s", self.id, value,
                                  self.threshold_store.path, exc.strerror)
                    warning = f"applied but not saved: {exc.strerror}"
            self.show_threshold(value)
        _LOGGER.info("%s: threshold set to %g", self.id, value)
        return warning

    def reload(self, new: Config) -> list[str]:
        """Apply a validated config's reloadable settings. Returns the changed settings that need a restart.

        Raises ValueError (or ConfigError) when the settings cannot be applied; nothing changes then.
        """
        yaml_changed = new.detection.threshold != self.cfg.detection.threshold
        restart = [k for k in changed_settings(self.cfg, new) if tuple(k.split(".")) not in RELOADABLE]
        with self._settings_lock:  # against a threshold/set arriving at the same time on paho's thread
            runtime = self.runtime_threshold
            settings = self.settings_for(new, None if yaml_changed else runtime)  # ValueError: nothing changes
            self._settings = settings
            self._settings_dirty = True
            if yaml_changed:
                self.runtime_threshold = None
                if runtime is not None and self.threshold_store is not None:
                    self.threshold_store.clear()
            self.show_threshold(settings.threshold)
        if yaml_changed and runtime is not None:
            _LOGGER.info("%s: detection.threshold changed in the YAML; it replaces the threshold %g set at run time",
                         self.id, runtime)
        keep = {tuple(k.split(".")) for k in restart}
        detection = new.detection
        if ("detection", "window_hop_seconds") in keep:
            detection = dataclasses.replace(new.detection, window_hop_seconds=self.cfg.detection.window_hop_seconds)
        health = dataclasses.replace(self.cfg.health, silence_dbfs=new.health.silence_dbfs,
                                     clipping_fraction=new.health.clipping_fraction)
        self.cfg = dataclasses.replace(self.cfg, detection=detection, health=health, log_level=new.log_level,
                                       key_lines=new.key_lines)
        return restart

    def show_threshold(self, value: float) -> None:
        """Tell the listeners (``threshold/state``) the threshold in force."""
        for listener in self.threshold_listeners:
            try:
                listener(value)
            except Exception:  # noqa: BLE001
                _LOGGER.exception("%s: publishing the threshold failed", self.id)

    # ------------------------------------------------------------ audio

    def process(self, block: Block, source: Optional[Source]) -> None:
        """Run one block through this machine's pipeline and deliver the events."""
        if self.recording_start_s is None and isinstance(source, WavFileSource):
            self.recording_start_s = block.t_s
            self._recording_loop_s = source.duration_s if source.loop else 0.0
        with self._settings_lock:
            pending = self._settings if self._settings_dirty else None
            self._settings_dirty = False
        if pending is not None:
            self.pipeline.update_settings(pending)
        self.last_audio_end_s = block.t_s + block.samples.shape[0] / block.sample_rate
        mono = self.pipeline.select(block.samples)
        # audio lies in [-1, 1], so the sum of a block is finite exactly when every sample is
        if not math.isfinite(float(mono.sum(dtype="float64"))):
            if not self._invalid_samples:
                self._invalid_samples = True
                bad = int(mono.size - int(np.isfinite(mono).sum()))
                self.deliver([HealthEvent("invalid_samples", self.id, block.t_s,
                                          f"the source delivered {bad} NaN or infinite sample(s) in one block; "
                                          "such audio is not scored")])
            return
        if self._invalid_samples:
            self._invalid_samples = False
            self.pipeline.reset()  # no window may mix audio from before and after the bad stretch
            self.deliver([HealthEvent("invalid_samples_end", self.id, block.t_s, "samples are valid again")])
        if self.clips is not None:
            self.clips.push(mono, block.t_s)
        self.deliver(self.pipeline.process_mono(mono, block.t_s))

    def recording_offset_s(self, t_s: float) -> Optional[float]:
        """Seconds into the recording of UNIX time ``t_s`` when the source is a file, else None."""
        if self.recording_start_s is None:
            return None
        offset = t_s - self.recording_start_s
        return offset % self._recording_loop_s if self._recording_loop_s > 0 else offset

    def deliver(self, events: Sequence[Event]) -> None:
        """Attach clips, record telemetry, remember open episodes, send to every sink."""
        for event in events:
            if isinstance(event, ScoreEvent):
                if math.isfinite(event.score):
                    with self._lock:
                        self._scores.append(event.score)
                        self._latencies_ms.append(event.latency_ms)
                        self._rms.append(event.rms_dbfs)
                if self.first_score_s is None:
                    self.first_score_s = time.time()
                    _LOGGER.info("%s: first score %.4g", self.id, event.score)  # start-up benchmarks wait for it
            elif isinstance(event, AlertEvent):
                if event.type == "start":
                    self.alerts += 1
                    if self.clips is not None:
                        event = event.with_clip(self.clips.start_clip(event))
                    self._remember_episode(event)
                offset = self.recording_offset_s(event.ended_at_s if event.ended_at_s is not None
                                                 else event.started_at_s)
                _LOGGER.warning("%s: alert %s (score %.4g, threshold %.4g%s)%s", self.id, event.type,
                                event.score, event.threshold, f", {event.reason}" if event.reason else "",
                                "" if offset is None else f" at {offset:.1f} s of the recording")
            elif isinstance(event, StateEvent):
                self.state = event.state
                _LOGGER.info("%s: state %s", self.id, event.state)
                if self.alarm is not None and event.state in ("anomaly", "normal"):
                    try:
                        self.alarm.set_alarm(event.state == "anomaly")
                    except SourceError as exc:
                        _LOGGER.warning("%s: cannot drive the alarm output: %s", self.id, exc)
            elif isinstance(event, HealthEvent):
                _LOGGER.info("%s: health %s %s", self.id, event.kind, event.detail)
            elif isinstance(event, ClipEvent):
                _LOGGER.info("%s: clip %s complete (%.1f s, %d bytes)", self.id, event.path, event.duration_s,
                             event.size_bytes)
            for sink in self.sinks:
                try:
                    sink.handle(event)
                except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                    _LOGGER.exception("%s: sink %s failed on %s", self.id, type(sink).__name__, type(event).__name__)
            if isinstance(event, AlertEvent) and event.type == "end" and self.episodes is not None:
                try:
                    self.episodes.closed()
                except OSError as exc:
                    _LOGGER.error("%s: cannot remove the open-episode record %s: %s", self.id, self.episodes.path,
                                  exc.strerror)

    def _remember_episode(self, start: AlertEvent) -> None:
        if self.episodes is None:
            return
        try:
            self.episodes.opened(start)
        except OSError as exc:  # the alert still goes out; only a crash before its end would leave it open
            _LOGGER.error("%s: cannot record the open episode in %s: %s", self.id, self.episodes.path, exc.strerror)

    def close_dangling_episode(self) -> None:
        """At start: end an episode a previous process left open (it died during an alert)."""
        if self.episodes is None:
            return
        start = self.episodes.dangling()
        if start is None:
            return
        _LOGGER.warning("%s: the previous run stopped during alert episode %s (started %s UTC); closing it",
                        self.id, start.episode, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start.started_at_s)))
        self.deliver([restart_end(start)])

    def close_episode_on_stop(self) -> None:
        """Clean stop during an alert: end it (``reason: shutdown``) and publish the state ``unknown``.

        Nobody heard the anomaly clear, so ``normal`` would be a lie; without an open alert
        the retained state stays the last one observed (and ``status`` says ``offline``).
        """
        # The episode ended with the last audio heard: the wall clock for a live source, the file's own time
        # for a file replayed faster than real time (so run and replay report the same end).
        now = self.last_audio_end_s if self.last_audio_end_s is not None else time.time()
        ends = self.pipeline.detector.close_episode(now, "shutdown")
        if ends:
            self.deliver(ends)
            self.deliver([StateEvent(self.id, "unknown", now)])

    def source_lost(self, lost: bool, detail: str) -> None:
        """Move to/from ``degraded``."""
        self.deliver(self.pipeline.detector.set_source_lost(lost, time.time(), detail))
        if not lost:
            self.pipeline.reset()

    def telemetry(self, source_stats: dict) -> dict:
        """Statistics since the previous call, for the telemetry topic."""
        with self._lock:
            scores, lat, rms = self._scores, self._latencies_ms, self._rms
            self._scores, self._latencies_ms, self._rms = [], [], []
        d = self.pipeline.detector
        out: dict[str, Any] = {
            "machine": self.id,
            "state": d.state,
            "threshold": self.settings.threshold,
            "windows": len(scores),
            "score": scores[-1] if scores else None,
            "score_mean": statistics.fmean(scores) if scores else None,
            "score_max": max(scores) if scores else None,
            "rms_dbfs": statistics.fmean(rms) if rms else self.pipeline.last_rms_dbfs,
            "inference_ms_median": statistics.median(lat) if lat else None,
            "dropped_frames": int(source_stats.get("dropped_frames", 0)),
            "overflows": int(source_stats.get("overflows", 0)),
            "gap_frames": int(source_stats.get("gap_frames", 0)),
            "alerts_total": self.alerts,
            "uptime_s": round(time.time() - self.started_s, 1),
        }
        if self.clips is not None:
            out["clips"] = self.clips.stats()
        if self.pipeline.type_check_result is not None:
            out["type_check"] = self.pipeline.type_check_result.to_json()
        return out

    def close(self) -> None:
        """Flush clips and close sinks and the model."""
        if self.clips is not None:
            self.clips.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                _LOGGER.exception("%s: closing %s failed", self.id, type(sink).__name__)
        self.pipeline.close()
