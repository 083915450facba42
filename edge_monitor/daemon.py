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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from edge_monitor import sdnotify
from edge_monitor.config import Config, ConfigError, load_config
from edge_monitor.events import AlertEvent, Event, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.model import ModelError, load_model
from edge_monitor.pipeline import Pipeline, detector_settings
from edge_monitor.sinks.console import ConsoleSink
from edge_monitor.sources.base import Source, SourceError
from edge_monitor.sources.factory import make_source, source_key
from edge_monitor.sources.wavfile import WavFileSource

_LOGGER = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
TELEMETRY_CHECK_SECONDS = 0.5


class Machine:
    """One monitored machine: its pipeline, clip recorder and sinks. Called from its source worker thread."""

    def __init__(self, cfg: Config, pipeline: Pipeline, sinks: list[Any], clips: Any = None,
                 threshold_store: Any = None) -> None:
        self.cfg = cfg
        self.id = cfg.machine.id
        self.pipeline = pipeline
        self.sinks = sinks
        self.clips = clips
        self.threshold_store = threshold_store
        self._pending_settings: Any = None  # swapped in by other threads, applied by the worker
        self._lock = threading.Lock()
        self._scores: list[float] = []
        self._latencies_ms: list[float] = []
        self._rms: list[float] = []
        self.alerts = 0
        self.state = "normal"
        self.started_s = time.time()
        self.first_score_s: Optional[float] = None

    def request_settings(self, settings: Any) -> None:
        """Thread-safe: new detector settings take effect at the next block."""
        self._pending_settings = settings

    def set_threshold(self, value: float) -> None:
        """Runtime threshold (from MQTT): keep other settings, change the threshold and clear level."""
        current = self._pending_settings or self.pipeline.detector.settings
        clear = current.clear_threshold
        if clear is not None and clear > value:
            clear = None
        self.request_settings(dataclasses.replace(current, threshold=float(value), clear_threshold=clear))
        _LOGGER.info("%s: threshold set to %g", self.id, value)

    def process(self, block: Any, source: Any) -> None:
        """Run one block through this machine's pipeline and deliver the events."""
        pending, self._pending_settings = self._pending_settings, None
        if pending is not None:
            self.pipeline.update_settings(pending)
        mono = self.pipeline.select(block.samples)
        if self.clips is not None:
            self.clips.push(mono, block.t_s)
        self.deliver(self.pipeline.process_mono(mono, block.t_s), source)

    def deliver(self, events: list[Event], source: Any = None) -> None:
        """Attach clips, record telemetry, send to every sink."""
        for event in events:
            if isinstance(event, ScoreEvent):
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
                _LOGGER.warning("%s: alert %s (score %.4g, threshold %.4g)", self.id, event.type,
                                event.score, event.threshold)
            elif isinstance(event, StateEvent):
                self.state = event.state
                _LOGGER.info("%s: state %s", self.id, event.state)
                if source is not None and hasattr(source, "set_alarm") and event.state in ("anomaly", "normal"):
                    try:
                        source.set_alarm(event.state == "anomaly")
                    except SourceError as exc:
                        _LOGGER.warning("%s: cannot drive the alarm output: %s", self.id, exc)
            elif isinstance(event, HealthEvent):
                _LOGGER.info("%s: health %s %s", self.id, event.kind, event.detail)
            for sink in self.sinks:
                try:
                    sink.handle(event)
                except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                    _LOGGER.exception("%s: sink %s failed on %s", self.id, type(sink).__name__, type(event).__name__)

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
            "threshold": d.settings.threshold,
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


def _apply_mqtt_override(cfg: Config, spec: Optional[str]) -> Config:
    if not spec:
        return cfg
    host, _, port = spec.rpartition(":") if ":" in spec else (spec, "", "")
    mqtt = dataclasses.replace(cfg.mqtt, enabled=True, host=host or spec, port=int(port) if port else cfg.mqtt.port)
    return dataclasses.replace(cfg, mqtt=mqtt)


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
        self.mqtt: dict[str, Any] = {}

    # ---------------------------------------------------------------- build

    def build(self) -> None:
        """Load models, open sinks, create sources (not yet opened). Raises ModelError / ConfigError."""
        ids = [c.machine.id for c in self.configs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError([f"machine id {d!r} appears in more than one config" for d in dupes])
        groups: dict[tuple, list[Machine]] = {}
        group_cfg: dict[tuple, Any] = {}
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
            retry = min(m.cfg.health.retry_max_seconds for m in machines)
            self.workers.append(SourceWorker(source, machines, self.stop_event, retry, stop_at_eof=not src_cfg.loop))

    def _build_machine(self, cfg: Config) -> Machine:
        runner = load_model(cfg.model.path, threads=cfg.model.threads)
        if cfg.source.type == "serial" and cfg.source.sample_rate != runner.bundle.spec.sample_rate:
            raise ModelError(f"model {cfg.model.path}: it expects {runner.bundle.spec.sample_rate} Hz but "
                             f"{cfg.source_file} sets source.sample_rate {cfg.source.sample_rate} Hz")
        pipeline = Pipeline.from_config(cfg, runner)
        state_dir = Path(cfg.state_dir)
        sinks: list[Any] = []
        if self.print_events:
            sinks.append(ConsoleSink(sys.stdout))
        clips = None
        if cfg.clips.enabled:
            from edge_monitor.sinks.clips import ClipRecorder
            clips_dir = Path(cfg.clips.dir) if cfg.clips.dir else state_dir / "clips"
            clips = ClipRecorder(cfg.clips, clips_dir, cfg.machine.id, runner.bundle.spec.sample_rate,
                                 trigger_lookback_seconds=cfg.detection.trigger_n * cfg.detection.window_hop_seconds
                                 + runner.bundle.spec.window_seconds + 1.0)
        from edge_monitor.threshold_store import ThresholdStore
        store = ThresholdStore(state_dir, cfg.machine.id)
        machine = Machine(cfg, pipeline, sinks, clips, store)
        saved = store.load()
        if saved is not None:
            _LOGGER.info("%s: using the threshold %g set at run time (from %s)", cfg.machine.id, saved, store.path)
            machine.pipeline.update_settings(dataclasses.replace(pipeline.detector.settings, threshold=saved,
                                                                 clear_threshold=None))
        if cfg.mqtt.enabled:
            from edge_monitor.sinks.mqtt import MqttSink
            state_dir.mkdir(parents=True, exist_ok=True)
            sink = MqttSink(cfg.mqtt, cfg.machine, state_dir, runner.bundle.ident,
                            machine.pipeline.detector.settings.threshold, on_threshold_set=machine.set_threshold)
            sinks.append(sink)
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
        """Re-read each machine's YAML and apply detection and health settings; audio keeps flowing."""
        sdnotify.reloading()
        for m in self.machines:
            try:
                new = load_config(m.cfg.source_file)
            except ConfigError as exc:
                _LOGGER.error("reload of %s refused, keeping the running settings:\n%s", m.cfg.source_file, exc)
                continue
            saved = m.threshold_store.load() if m.threshold_store else None
            settings = detector_settings(new, m.pipeline.runner.bundle.threshold)
            if saved is not None and new.detection.threshold is None:
                settings = dataclasses.replace(settings, threshold=saved, clear_threshold=None)
            m.request_settings(settings)
            _LOGGER.info("%s: reloaded detection settings (threshold %g, %d of %d)", m.id, settings.threshold,
                         settings.trigger_k, settings.trigger_n)
        sdnotify.ready()

    def run(self, max_seconds: Optional[float] = None) -> int:
        """Start everything and supervise until a signal, end of input, or a fatal error."""
        for m in self.machines:
            sink = self.mqtt.get(m.id)
            if sink is not None:   # replace a previous run's retained state, even if nothing changes later
                sink.handle(StateEvent(m.id, m.pipeline.detector.state, time.time()))
        for sink in self.mqtt.values():
            sink.start()
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
                self.reload()
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
        for w in self.workers:
            w.join(timeout=5.0)
        for m in self.machines:
            if m.id in self.mqtt:
                self._publish_telemetry(m)
            m.close()
        _LOGGER.info("stopped")


def run_daemon(args: argparse.Namespace) -> int:
    """CLI entry for ``run``: 0 clean stop, 1 runtime failure, 2 bad config or model."""
    paths = args.config or [str(DEMO_CONFIG)]
    if not args.config:
        _LOGGER.info("no --config given: running the bundled demo (%s)", DEMO_CONFIG)
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
