"""``edge-monitor run``: the long-running monitor.

Threads:

* one **source worker** per audio device (or serial port, or file). It reads blocks
  from the source and runs the pipeline of every machine listening to that device
  (one channel each of a microphone array, for example). Only the source's own
  capture callback runs faster than this thread, and it only copies into a ring.
* paho's network thread, inside each MqttSink.
* the **main thread**: signals, SIGHUP reloads, telemetry, systemd notify and watchdog.

A worker that loses its source marks its machines ``degraded``, closes the source and
reopens it with exponential backoff; the machines recover without a restart.

One validation: ``check_config`` is what ``check-config`` runs, what ``run`` runs
before it builds anything, and what every SIGHUP runs before it applies anything. A
reload that fails anywhere (parse, validation, apply) is logged in one sentence,
reported as a ``reload_failed`` health event, and leaves the running settings alone.

The threshold has one owner, the Machine: the model's calibrated value, unless the
YAML sets one, unless a value was set at run time over MQTT (persisted in the state
folder) and the YAML value has not changed since.

An alert episode is always closed: by the detector, by ``shutdown`` (``reason:
"shutdown"``, then the retained state becomes ``unknown``), or, after a crash, by the
next start (``reason: "restart"``, from the open-episode record in the state folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from edge_monitor import sdnotify
from edge_monitor.config import Config, ConfigError, SourceConfig, check_against_model, load_config
from edge_monitor.detector import DetectorSettings
from edge_monitor.episodes import EpisodeStore, restart_end
from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.model import ModelBundle, ModelError, load_model
from edge_monitor.pipeline import Pipeline, detector_settings
from edge_monitor.sinks.base import Sink
from edge_monitor.sinks.console import ConsoleSink
from edge_monitor.sources.base import AlarmOutput, Block, Source, SourceError, alarm_output
from edge_monitor.sources.factory import make_source, source_key
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.threshold_store import UNRECORDED, ThresholdStore, is_valid_threshold

if TYPE_CHECKING:  # imported where used: only configs that enable them pay for these modules
    from edge_monitor.sinks.clips import ClipRecorder
    from edge_monitor.sinks.mqtt import MqttSink
    from edge_monitor.web.server import WebServer

_LOGGER = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
DEMO_LIVE_CONFIG = DEMO_DIR / "demo-live.yaml"
"""The demo at real-time pace on a loop, to watch in Home Assistant (``run --demo-live``)."""
TELEMETRY_CHECK_SECONDS = 0.5


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


def check_config(cfg: Config, bundle: Optional[ModelBundle] = None) -> list[str]:
    """Every problem ``run`` would hit with this config, as sentences (empty when it can run).

    The model (loaded from ``model.path`` unless ``bundle`` is given): thresholds
    against its calibrated one, a serial or file source's rate and channels; the
    machine-type check model; the MQTT and web page password and TLS files.
    """
    problems: list[str] = []
    if bundle is None:
        try:
            bundle = ModelBundle(cfg.model.path)
        except ModelError as exc:
            return [str(exc)]
    problems += check_against_model(cfg, bundle.threshold, bundle.spec.sample_rate, str(bundle.path))
    if cfg.machine.type_check_model:
        try:
            ModelBundle(cfg.machine.type_check_model)
        except ModelError as exc:
            problems.append(f"machine.type_check_model: {exc}")
    if cfg.mqtt.enabled:
        from edge_monitor.sinks.mqtt import setup_problems
        problems += setup_problems(cfg.mqtt)
    if cfg.web.enabled:
        from edge_monitor.web.gateway import setup_problems as web_problems
        problems += web_problems(cfg.web)
    return problems


def _one_sentence(problems: list[str]) -> str:
    return "; ".join(problems) if len(problems) <= 3 else "; ".join(problems[:3]) + f" (and {len(problems) - 3} more)"


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


class SourceWorker(threading.Thread):
    """Reads one source and feeds every machine that listens to it; retries a lost source with backoff."""

    def __init__(self, source: Source, machines: list[Machine], stop: threading.Event,
                 retry_max_seconds: float = 30.0, stop_at_eof: bool = True) -> None:
        super().__init__(name=f"source-{machines[0].id}", daemon=True)
        self.source = source
        self.machines = machines
        self.stop_event = stop
        self.retry_max_seconds = retry_max_seconds
        self.stop_at_eof = stop_at_eof
        self.last_progress = time.monotonic()
        self.finished = False
        self.error: Optional[BaseException] = None
        self.reopens = 0

    def run(self) -> None:
        try:
            self._run()
        except SourceError as exc:
            self.error = exc
            _LOGGER.error("%s", exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which exits 1
            self.error = exc
            _LOGGER.exception("source worker for %s stopped", ", ".join(m.id for m in self.machines))
        finally:
            self.finished = True

    def _run(self) -> None:
        delay = 1.0
        lost = False
        while not self.stop_event.is_set():
            self.last_progress = time.monotonic()
            try:
                self.source.open()
            except SourceError as exc:
                if self.stop_at_eof and isinstance(self.source, WavFileSource):
                    raise  # a missing or unreadable file will not come back
                if not lost:
                    lost = True
                    for m in self.machines:
                        m.source_lost(True, str(exc))
                    _LOGGER.error("source unavailable: %s (retrying)", exc)
                self._sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            delay = 1.0
            try:
                lost = self._pump(lost)
            except EOFError:
                _LOGGER.info("end of input file")
                if self.stop_at_eof:
                    return
                self._sleep(delay)  # a looping source should never end; never spin on one that does
                delay = min(delay * 2, self.retry_max_seconds)
            except SourceError as exc:
                if not lost:  # a source that opens but stays silent fails again every few seconds
                    _LOGGER.error("source lost: %s (retrying)", exc)
                lost = True
                for m in self.machines:
                    m.source_lost(True, str(exc))
            finally:
                self.source.close()

    def _pump(self, lost: bool) -> bool:
        """Feed blocks to the machines; a lost source is back at its first block, not when it opens."""
        while not self.stop_event.is_set():
            block = self.source.read(0.5)
            self.last_progress = time.monotonic()
            if block is None:
                continue
            if lost:
                lost = False
                self.reopens += 1
                for m in self.machines:
                    m.source_lost(False, "source reopened")
                _LOGGER.info("source back after %d attempt(s)", self.reopens)
            for m in self.machines:
                m.process(block, self.source)
        return lost

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.last_progress = time.monotonic()
            self.stop_event.wait(min(0.5, end - time.monotonic()))


def parse_mqtt_spec(spec: str) -> tuple[str, Optional[int]]:
    """``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port or None). ValueError with one sentence."""
    text = spec.strip()
    port_text = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"--mqtt {spec!r}: expected HOST, HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a bare IPv6 address, or a plain host name
    if not host or any(c.isspace() or not c.isprintable() for c in host):
        raise ValueError(f"--mqtt {spec!r}: expected a host name or address before the port")
    if port_text == "" and (text.endswith(":")):
        raise ValueError(f"--mqtt {spec!r}: the port after ':' is missing")
    if port_text == "":
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"--mqtt {spec!r}: the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def _apply_mqtt_override(cfg: Config, spec: Optional[str]) -> Config:
    if not spec:
        return cfg
    host, port = parse_mqtt_spec(spec)
    mqtt = dataclasses.replace(cfg.mqtt, enabled=True, host=host, port=port or cfg.mqtt.port)
    return dataclasses.replace(cfg, mqtt=mqtt)


def outbox_path(cfg: Config) -> Path:
    """The SQLite outbox file of one machine."""
    return Path(cfg.mqtt.outbox_path) if cfg.mqtt.outbox_path else \
        Path(cfg.state_dir) / f"outbox-{cfg.machine.id}.sqlite"


class Daemon:
    """All machines of one gateway, their workers and sinks."""

    def __init__(self, configs: list[Config], *, print_events: bool = False, mqtt_override: Optional[str] = None) -> None:
        self.configs = [_apply_mqtt_override(c, mqtt_override) for c in configs]
        self.print_events = print_events
        self.mqtt_override = mqtt_override
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.machines: list[Machine] = []
        self.workers: list[SourceWorker] = []
        self.mqtt: dict[str, MqttSink] = {}
        self.web: Optional[WebServer] = None  # when a config enables web:

    # ---------------------------------------------------------------- build

    def build(self) -> None:
        """Load models, open sinks, create sources (not yet opened). Raises ModelError / ConfigError."""
        ids = [c.machine.id for c in self.configs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError([f"machine id {d!r} appears in more than one config" for d in dupes])
        outboxes: dict[str, Config] = {}
        for cfg in self.configs:
            if not cfg.mqtt.enabled:
                continue
            real = os.path.realpath(outbox_path(cfg))
            other = outboxes.setdefault(real, cfg)
            if other is not cfg:
                raise ConfigError([f"{cfg.source_file}: machines {other.machine.id} and {cfg.machine.id} would share "
                                   f"the outbox {real}; one machine could publish the other's alerts (give each its "
                                   "own mqtt.outbox_path, or leave it unset)"])
        groups: dict[tuple, list[Machine]] = {}
        group_cfg: dict[tuple, SourceConfig] = {}
        for cfg in self.configs:
            machine = self._build_machine(cfg)
            self.machines.append(machine)
            key = source_key(cfg.source)
            rate = machine.pipeline.spec.sample_rate
            if key in groups and groups[key][0].pipeline.spec.sample_rate != rate:
                raise ConfigError([f"{cfg.source_file}: machines sharing one source need models at the same rate"])
            groups.setdefault(key, []).append(machine)
            prev = group_cfg.get(key)
            chans = tuple(sorted(set(cfg.source.channels) | set(prev.channels if prev else ())))
            group_cfg[key] = dataclasses.replace(cfg.source, channels=chans)
        for key, machines in groups.items():
            src_cfg = group_cfg[key]
            stall_s = min(m.cfg.health.source_timeout_seconds for m in machines)
            source = make_source(src_cfg, machines[0].pipeline.spec.sample_rate, stall_s)
            for m in machines:
                m.alarm = alarm_output(source)
            retry = min(m.cfg.health.retry_max_seconds for m in machines)
            self.workers.append(SourceWorker(source, machines, self.stop_event, retry, stop_at_eof=not src_cfg.loop))
        if any(c.web.enabled for c in self.configs):
            from edge_monitor.web.gateway import build_web
            self.web = build_web(self)

    def _build_machine(self, cfg: Config) -> Machine:
        runner = load_model(cfg.model.path, threads=cfg.model.threads)
        problems = check_config(cfg, runner.bundle)
        if problems:
            runner.close()
            raise ConfigError(problems)
        pipeline = Pipeline.from_config(cfg, runner)
        state_dir = Path(cfg.state_dir)
        sinks: list[Sink] = []
        console = ConsoleSink(sys.stdout) if self.print_events else None
        if console is not None:
            sinks.append(console)
        clips: Optional[ClipRecorder] = None
        clips_dir = Path(cfg.clips.dir) if cfg.clips.dir else state_dir / "clips"
        if cfg.clips.enabled:
            from edge_monitor.sinks.clips import ClipRecorder
            clips = ClipRecorder(cfg.clips, clips_dir, cfg.machine.id, runner.bundle.spec.sample_rate,
                                 trigger_lookback_seconds=cfg.detection.trigger_n * cfg.detection.window_hop_seconds
                                 + runner.bundle.spec.window_seconds + 1.0)
        machine = Machine(cfg, pipeline, sinks, clips, ThresholdStore(state_dir, cfg.machine.id),
                          EpisodeStore(state_dir, cfg.machine.id))
        machine.restore_threshold()
        if clips is not None:  # a complete clip is announced like any other event (MQTT: <prefix>/clip)
            clips.on_written = lambda event: machine.deliver([event])
        if console is not None:
            console.recording_offset = machine.recording_offset_s
        if cfg.mqtt.enabled:
            from edge_monitor.sinks.mqtt import MqttSink
            _make_private_dir(state_dir)
            sink = MqttSink(cfg.mqtt, cfg.machine, state_dir, runner.bundle.ident, machine.settings.threshold,
                            on_threshold_set=machine.set_threshold,
                            on_health=lambda event: machine.deliver([event]),
                            clips_dir=clips_dir if clips is not None else None)
            sinks.append(sink)
            machine.threshold_listeners.append(sink.show_threshold)
            self.mqtt[cfg.machine.id] = sink
        return machine

    # ---------------------------------------------------------------- run

    def request_stop(self, *_: Any) -> None:
        """Signal handler: orderly shutdown."""
        self.stop_event.set()

    def request_reload(self, *_: Any) -> None:
        """Signal handler: reload detection settings at the next tick."""
        self.reload_requested.set()

    def reload(self) -> None:
        """Re-read each machine's YAML and apply its reloadable settings; audio keeps flowing.

        Never raises: a config that fails to load, validate or apply is logged in one
        sentence, reported as a ``reload_failed`` health event, and the running one stays.
        """
        sdnotify.reloading()
        for m in self.machines:
            try:
                new = _apply_mqtt_override(load_config(m.cfg.source_file), self.mqtt_override)
                problems = check_config(new, m.pipeline.runner.bundle)
                if problems:
                    raise ConfigError(problems)
                restart = m.reload(new)
            except ConfigError as exc:
                self._reload_failed(m, _one_sentence(exc.problems))
                continue
            except Exception as exc:  # noqa: BLE001 - a reload must never take the service down
                self._reload_failed(m, str(exc).strip().replace("\n", "; ") or type(exc).__name__)
                continue
            s = m.settings
            _LOGGER.info("%s: reloaded detection settings (threshold %g, %d of %d)", m.id, s.threshold,
                         s.trigger_k, s.trigger_n)
            if restart:
                detail = (f"{', '.join(restart)} changed in {m.cfg.source_file} but only take effect after a restart "
                          "(systemctl restart); the running values stay until then")
                _LOGGER.warning("%s: %s", m.id, detail)
                m.deliver([HealthEvent("reload_restart_needed", m.id, time.time(), detail)])
        sdnotify.ready()

    def _reload_failed(self, m: Machine, why: str) -> None:
        detail = f"reload of {m.cfg.source_file} refused, the running settings stay: {why}"
        _LOGGER.error("%s: %s", m.id, detail)
        m.deliver([HealthEvent("reload_failed", m.id, time.time(), detail)])

    def run(self, max_seconds: Optional[float] = None) -> int:
        """Start everything and supervise until a signal, end of input, or a fatal error."""
        for m in self.machines:
            m.close_dangling_episode()  # its end goes into the outbox before anything newer
            sink = self.mqtt.get(m.id)
            if sink is not None:   # replace a previous run's retained state, even if nothing changes later
                sink.handle(StateEvent(m.id, m.pipeline.detector.state, time.time()))
        for sink in self.mqtt.values():
            sink.start()
        if self.web is not None:
            self.web.start()
        for w in self.workers:
            w.start()
        sdnotify.ready()
        _LOGGER.info("monitoring %s", ", ".join(f"{m.id} ({m.cfg.source.type})" for m in self.machines))
        watchdog_s = sdnotify.watchdog_interval_s()
        telemetry_due = {m.id: time.monotonic() + m.cfg.mqtt.telemetry_seconds for m in self.machines}
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        status_due = 0.0
        rc = 0
        while not self.stop_event.is_set():
            self.stop_event.wait(TELEMETRY_CHECK_SECONDS)
            now = time.monotonic()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                try:
                    self.reload()
                except Exception:  # noqa: BLE001 - reload() reports its own failures; this is a last resort
                    _LOGGER.exception("reload failed; the running settings stay")
                    sdnotify.ready()
            if deadline is not None and now >= deadline:
                break
            if all(w.finished for w in self.workers):
                errors = [w.error for w in self.workers if w.error]
                rc = (2 if isinstance(errors[0], SourceError) else 1) if errors else 0
                break
            if watchdog_s:
                stale = [w for w in self.workers if not w.finished and now - w.last_progress > watchdog_s]
                if not stale:
                    sdnotify.watchdog()
                else:
                    _LOGGER.error("pipeline of %s is stuck; not petting the watchdog", stale[0].machines[0].id)
            for m in self.machines:
                if now >= telemetry_due[m.id]:
                    telemetry_due[m.id] = now + m.cfg.mqtt.telemetry_seconds
                    self._publish_telemetry(m)
            if now >= status_due:
                status_due = now + 10.0
                sdnotify.status("; ".join(f"{m.id}: {m.pipeline.detector.state}, {m.alerts} alert(s)"
                                          for m in self.machines))
        self.shutdown()
        return rc

    def _worker_of(self, machine: Machine) -> Optional[SourceWorker]:
        return next((w for w in self.workers if machine in w.machines), None)

    def _publish_telemetry(self, m: Machine) -> None:
        w = self._worker_of(m)
        stats = w.source.stats() if w is not None else {}
        t = m.telemetry(stats)
        sink = self.mqtt.get(m.id)
        if sink is not None:
            sink.publish_telemetry(t)

    def shutdown(self) -> None:
        """Stop workers, flush clips, publish offline, close outboxes."""
        sdnotify.stopping()
        self.stop_event.set()
        if self.web is not None:
            self.web.close()
        for w in self.workers:
            w.join(timeout=5.0)
        for m in self.machines:
            if m.id in self.mqtt:
                self._publish_telemetry(m)
            try:
                m.close_episode_on_stop()
            except Exception:  # noqa: BLE001 - closing the rest matters more
                _LOGGER.exception("%s: closing the open alert on stop failed", m.id)
            m.close()
        _LOGGER.info("stopped")


def run_daemon(args: argparse.Namespace) -> int:
    """CLI entry for ``run``: 0 clean stop, 1 runtime failure, 2 bad config or model."""
    demo = DEMO_LIVE_CONFIG if getattr(args, "demo_live", False) else DEMO_CONFIG
    if args.config and demo is DEMO_LIVE_CONFIG:
        print("edge-monitor: --demo-live runs the bundled demo recording; it takes no --config", file=sys.stderr)
        return 2
    paths = args.config or [str(demo)]
    if not args.config:
        _LOGGER.info("no --config given: running the bundled demo (%s)", demo)
    mqtt_spec = getattr(args, "mqtt", None)
    if mqtt_spec is not None:
        try:
            parse_mqtt_spec(mqtt_spec)
        except ValueError as exc:
            print(f"edge-monitor: {exc}", file=sys.stderr)
            return 2
    configs = []
    problems: list[str] = []
    for p in paths:
        try:
            configs.append(load_config(p))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if not args.log_level:
        logging.getLogger().setLevel(getattr(logging, configs[0].log_level.upper()))
    daemon = Daemon(configs, print_events=args.print_events or not args.config,
                    mqtt_override=getattr(args, "mqtt", None))
    try:
        daemon.build()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ModelError, ValueError) as exc:
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. MQTT setup (bad TLS file), outbox in use
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, daemon.request_reload)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return daemon.run(max_seconds=args.max_seconds)


def _make_private_dir(path: Path) -> None:
    """Create the state folder (and parents) as 0750 whatever the umask; an existing one is left alone."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o750)
    except FileExistsError:
        return
    os.chmod(path, 0o750)
