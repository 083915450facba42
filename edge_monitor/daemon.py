"""``edge-monitor run``: the long-running monitor.

Threads:

* one **source worker** per audio device (or serial port, or file). It reads blocks
  from the source and runs the pipeline of every machine listening to that device
  (one channel each of a microphone array, for example). Only the source's own
  capture callback runs faster than this thread, and it only copies into a ring.
* paho's network thread, inside each MqttSink.
* the **main thread**: signals, SIGHUP reloads, telemetry, systemd notify and watchdog.

Each machine is a ``Machine`` (machine.py: settings, threshold, events, episodes);
each source has a ``SourceWorker`` (source_worker.py: reading, losing and reopening it).

One validation: ``check_config`` is what ``check-config`` runs, what ``run`` runs
before it builds anything, and what every SIGHUP runs before it applies anything. A
reload that fails anywhere (parse, validation, apply) is logged in one sentence,
reported as a ``reload_failed`` health event, and leaves the running settings alone.

The threshold has one owner, the Machine (see machine.py). An alert episode is always
closed: by the detector, by ``shutdown`` or, after a crash, by the next start.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from edge_monitor import sdnotify
from edge_monitor.config import Config, ConfigError, SourceConfig, check_against_model, load_config
from edge_monitor.episodes import EpisodeStore
from edge_monitor.events import HealthEvent, StateEvent
from edge_monitor.machine import Machine
from edge_monitor.model import ModelBundle, ModelError, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sinks.base import Sink
from edge_monitor.sinks.console import ConsoleSink
from edge_monitor.source_worker import SourceWorker
from edge_monitor.sources.base import SourceError, alarm_output
from edge_monitor.sources.factory import make_source, source_key
from edge_monitor.threshold_store import ThresholdStore

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
