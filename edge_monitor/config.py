"""Typed, frozen configuration for one monitored machine, loaded from YAML.

Every section is a frozen dataclass. Field metadata carries the help text and
the bounds that validation enforces. ``load_config`` collects every problem in
a file and raises one ``ConfigError`` listing them all, each with file:line,
the key path, the bad value and what was expected.

This module is the public face of the configuration: the schema (the
dataclasses), the rules that span several fields (``_semantic_checks``), and
``parse_config`` / ``load_config``, which run the three steps in order:

- ``edge_monitor.config_yaml`` reads the YAML into plain values and the line
  of every key, under limits on size, aliases and depth;
- ``edge_monitor.config_check`` builds the dataclasses from those values,
  checking types, bounds, choices and key names (it also holds
  ``check_against_model`` and ``located``, for checks that need the model);
- the semantic checks here run on the built Config, then paths are resolved
  against the config file's folder.

Everything callers use is importable from here (``ConfigError``, the limits,
``check_against_model`` and ``located`` included), so they need not know the split.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

# check_against_model, located, ConfigError and the YAML limits are re-exported: callers import them from here
from edge_monitor.config_check import Builder
from edge_monitor.config_check import check_against_model as check_against_model
from edge_monitor.config_check import located as located
from edge_monitor.config_yaml import INVALID, ConfigError, read_yaml
from edge_monitor.config_yaml import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from edge_monitor.config_yaml import MAX_YAML_DEPTH as MAX_YAML_DEPTH
from edge_monitor.config_yaml import MAX_YAML_VALUES as MAX_YAML_VALUES


def _f(default: Any = dataclasses.MISSING, *, help: str, lo: Optional[float] = None, hi: Optional[float] = None,
       choices: Optional[tuple] = None, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text and validation bounds."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class MachineConfig:
    """Which machine this is."""

    id: str = _f(help="Machine identifier, used in MQTT topics and alerts (letters, digits, - and _)")
    site: str = _f("default", help="Site or line name, used in the default MQTT prefix")
    type: str = _f("unknown", help="Machine type: fan, pump, slider, valve, pipe or unknown",
                   choices=("fan", "pump", "slider", "valve", "pipe", "unknown"))
    name: str = _f("", help="Human-readable name shown in Home Assistant (defaults to id)")
    type_check_model: Optional[str] = _f(None, help="Machine-type classifier (e.g. models/machine-type.tflite) that "
                                         "checks at start-up that the audio sounds like `type`; off when null "
                                         "(relative paths are relative to the config file)")
    type_check_seconds: float = _f(30.0, help="Seconds of non-silent audio the machine-type check listens to",
                                   lo=2.0, hi=3600.0)
    type_check_min_confidence: float = _f(0.6, help="Mean probability of another type needed to report "
                                          "wrong_machine (0-1)", lo=0.0, hi=1.0)


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Where the audio comes from."""

    type: str = _f("microphone", help="microphone, file or serial", choices=("microphone", "file", "serial"))
    device: Union[int, str] = _f("default", help="Audio input device name (substring) or index")
    channels: tuple[int, ...] = _f(factory=lambda: (0,), help="Input channel(s) to use, 0-based")
    mix: str = _f("mean", help="How to combine several channels: mean or first", choices=("mean", "first"))
    sample_rate: int = _f(16000, help="Capture rate (hertz); resampled to the model's rate if different",
                          lo=4000, hi=192000)
    block_seconds: float = _f(0.032, help="Capture block length (seconds)", lo=0.004, hi=1.0)
    buffer_seconds: float = _f(5.0, help="Ring buffer between capture and processing (seconds)", lo=0.5, hi=120.0)
    path: Optional[str] = _f(None, help="WAV file to read (type: file)")
    realtime: bool = _f(False, help="Replay the file at real-time pace (type: file)")
    loop: bool = _f(False, help="Replay the file forever (type: file)")
    port: Optional[str] = _f(None, help="Serial port of the Arduino, e.g. /dev/ttyACM0 (type: serial)")
    baud: int = _f(500000, help="Serial baud rate (type: serial)", lo=9600, hi=4000000)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model bundle scores the audio."""

    path: str = _f(help="Path to the .tflite model bundle (relative paths are relative to the config file)")
    threads: int = _f(1, help="Interpreter threads", lo=1, hi=8)


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """How scores become alerts."""

    threshold: Optional[float] = _f(None, help="Score above which a window is anomalous (default: the model's calibrated threshold)")
    clear_threshold: Optional[float] = _f(None, help="Score below which a window counts as normal again (default: 0.9 x threshold)")
    trigger_k: int = _f(3, help="Anomalous windows needed ...", lo=1, hi=1000)
    trigger_n: int = _f(5, help="... among this many most recent windows to start an alert", lo=1, hi=1000)
    clear_windows: int = _f(5, help="Consecutive normal windows needed to end an alert", lo=1, hi=1000)
    cooldown_seconds: float = _f(30.0, help="Minimum time between the end of one alert and the start of the next (seconds)", lo=0.0, hi=86400.0)
    window_hop_seconds: float = _f(0.5, help="Time between scored windows (seconds)", lo=0.016, hi=60.0)


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    """Input checks that are not anomalies."""

    silence_dbfs: float = _f(-70.0, help="Windows quieter than this RMS (dBFS) are silence, not scored", lo=-160.0, hi=0.0)
    clipping_fraction: float = _f(0.01, help="Fraction of samples at full scale that counts as clipping", lo=0.0, hi=1.0)
    source_timeout_seconds: float = _f(2.0, help="No audio for this long moves the state to degraded (seconds)", lo=0.1, hi=60.0)
    retry_max_seconds: float = _f(30.0, help="Longest wait between attempts to reopen a lost source (seconds)", lo=0.5, hi=3600.0)


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """MQTT over TLS."""

    ca: Optional[str] = _f(None, help="CA certificate file (PEM)")
    cert: Optional[str] = _f(None, help="Client certificate file (PEM)")
    key: Optional[str] = _f(None, help="Client private key file (PEM)")
    insecure: bool = _f(False, help="Skip host name verification (testing only)")


@dataclasses.dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery."""

    enabled: bool = _f(True, help="Publish discovery config")
    discovery_prefix: str = _f("homeassistant", help="Discovery topic prefix")


@dataclasses.dataclass(frozen=True)
class MqttConfig:
    """Where alerts are published."""

    enabled: bool = _f(False, help="Publish to an MQTT broker")
    host: str = _f("localhost", help="Broker host name")
    port: int = _f(1883, help="Broker port", lo=1, hi=65535)
    prefix: Optional[str] = _f(None, help="Topic prefix (default edge-monitor/<site>/<machine>)")
    client_id: Optional[str] = _f(None, help="MQTT client id (default edge-monitor-<site>-<machine>)")
    username: Optional[str] = _f(None, help="User name")
    password_file: Optional[str] = _f(None, help="File holding the password (or a systemd credential name with credential:NAME)")
    keepalive_seconds: int = _f(30, help="MQTT keepalive (seconds)", lo=5, hi=3600)
    connect_timeout_seconds: float = _f(10.0, help="Time a connection attempt may take, TLS handshake and CONNACK "
                                        "included, before it is reported and retried (seconds)", lo=1.0, hi=300.0)
    telemetry_seconds: float = _f(60.0, help="Interval between telemetry messages (seconds)", lo=1.0, hi=86400.0)
    score_seconds: float = _f(5.0, help="Shortest interval between messages on <prefix>/score (seconds); "
                              "sent only while the score changes", lo=0.5, hi=86400.0)
    tls: Optional[TlsConfig] = _f(None, help="TLS settings; omit for plain TCP")
    homeassistant: HomeAssistantConfig = _f(factory=HomeAssistantConfig, help="Home Assistant discovery")
    outbox_path: Optional[str] = _f(None, help="SQLite outbox file (default <state_dir>/outbox-<machine>.sqlite)")
    outbox_max_alerts: int = _f(10000, help="Alerts kept while the broker is unreachable; the oldest are dropped beyond", lo=10, hi=10_000_000)


@dataclasses.dataclass(frozen=True)
class ClipsConfig:
    """Evidence clips saved with each alert."""

    enabled: bool = _f(True, help="Save a WAV around each alert start")
    dir: Optional[str] = _f(None, help="Folder for clips (default <state_dir>/clips)")
    pre_seconds: float = _f(5.0, help="Audio kept from before the trigger (seconds)", lo=0.0, hi=600.0)
    post_seconds: float = _f(5.0, help="Audio kept from after the trigger (seconds)", lo=0.0, hi=600.0)
    max_count: int = _f(200, help="Keep at most this many clips; the oldest are deleted", lo=1, hi=1_000_000)
    max_total_mb: float = _f(500.0, help="Keep at most this many MB of clips; the oldest are deleted", lo=1.0, hi=1_000_000.0)


@dataclasses.dataclass(frozen=True)
class WebTlsConfig:
    """HTTPS for the gateway's web page."""

    cert: Optional[str] = _f(None, help="Server certificate file (PEM)")
    key: Optional[str] = _f(None, help="Server private key file (PEM)")


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """The gateway's web page (one server for all machines; see docs/web.md)."""

    enabled: bool = _f(False, help="Serve the web page and /metrics from the daemon")
    host: str = _f("127.0.0.1", help="Address to listen on; anything beyond localhost needs password_file")
    port: int = _f(8099, help="TCP port", lo=1, hi=65535)
    password_file: Optional[str] = _f(None, help="File holding the page's password (or a systemd credential "
                                      "name with credential:NAME)")
    tls: Optional[WebTlsConfig] = _f(None, help="HTTPS settings; omit for plain HTTP (or put a reverse proxy in front)")
    trusted_proxies: tuple[str, ...] = _f(factory=tuple, help="Addresses or networks (CIDR) of reverse proxies whose "
                                          "X-Forwarded-Proto and X-Forwarded-For the page believes: Secure cookies "
                                          "behind an HTTPS proxy, the real client in the log; none when left out")


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this computer."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


DEFAULT_STATE_DIR = "/var/lib/edge-monitor"


@dataclasses.dataclass(frozen=True)
class Config:
    """One machine's whole configuration."""

    machine: MachineConfig = _f(help="Machine identity")
    model: ModelConfig = _f(help="Model bundle")
    source: SourceConfig = _f(factory=SourceConfig, help="Audio source")
    detection: DetectionConfig = _f(factory=DetectionConfig, help="Alert trigger settings")
    health: HealthConfig = _f(factory=HealthConfig, help="Input health checks")
    mqtt: MqttConfig = _f(factory=MqttConfig, help="MQTT publishing")
    clips: ClipsConfig = _f(factory=ClipsConfig, help="Evidence clips")
    web: WebConfig = _f(factory=WebConfig, help="The gateway's web page")
    state_dir: str = _f(DEFAULT_STATE_DIR, help="Folder for the outbox, clips and runtime state (systemd's StateDirectory)")
    log_level: str = _f("info", help="debug, info, warning or error", choices=("debug", "info", "warning", "error"))
    source_file: str = dataclasses.field(default="", compare=False, metadata={"internal": True})
    key_lines: dict = dataclasses.field(default_factory=dict, compare=False, repr=False, metadata={"internal": True})
    """1-based line of every key path in ``source_file`` (for errors found after loading)."""


# ---------------------------------------------------------------- rules across fields

_MACHINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


MAX_TOPIC_PREFIX_CHARS = 1000
"""Longer prefixes are typos; MQTT's own limit is 65535 bytes for the whole topic."""


def topic_problem(topic: str) -> Optional[str]:
    """Why ``topic`` cannot be used to publish on (or as a prefix of topics), or None when it is fine."""
    if not topic:
        return "it is empty"
    if "+" in topic or "#" in topic:
        return "it contains an MQTT wildcard (+ or #), which is only allowed in subscriptions"
    if not topic.isprintable():
        return "it contains a control character"
    if topic.startswith("$"):
        return "topics starting with $ are reserved for the broker"
    if "" in topic.split("/"):
        return "it has an empty level (a leading '/' or '//')"
    if len(topic) > MAX_TOPIC_PREFIX_CHARS:
        return f"it is longer than {MAX_TOPIC_PREFIX_CHARS} characters"
    return None


def mqtt_prefix(cfg: Config) -> str:
    """The topic prefix in force: ``mqtt.prefix``, or ``edge-monitor/<site>/<machine>``."""
    return cfg.mqtt.prefix or f"edge-monitor/{cfg.machine.site}/{cfg.machine.id}"


def _semantic_checks(cfg: Config, b: Builder) -> None:
    if not _MACHINE_ID.fullmatch(cfg.machine.id):
        b.err(("machine", "id"), cfg.machine.id, "1-64 letters, digits, '-' or '_' (it goes into MQTT topics)")
    src = cfg.source
    if src.type == "file" and not src.path:
        b.err(("source", "path"), src.path, "a WAV file path when source.type is file")
    if src.type == "serial" and not src.port:
        b.err(("source", "port"), src.port, "a serial port (e.g. /dev/ttyACM0) when source.type is serial")
    if any(c < 0 for c in src.channels):
        b.err(("source", "channels"), list(src.channels), "channel indices >= 0")
    d = cfg.detection
    if d.trigger_k > d.trigger_n:
        b.err(("detection", "trigger_k"), d.trigger_k, f"at most trigger_n ({d.trigger_n})")
    if d.threshold is not None and d.threshold <= 0:
        b.err(("detection", "threshold"), d.threshold, "a positive number (or null for the model's)")
    if d.clear_threshold is not None:
        if d.clear_threshold < 0:
            b.err(("detection", "clear_threshold"), d.clear_threshold, "a number >= 0 (or null for 0.9 x threshold)")
        elif d.threshold is not None and d.clear_threshold > d.threshold:
            b.err(("detection", "clear_threshold"), d.clear_threshold, f"at most threshold ({d.threshold})")
    m = cfg.mqtt
    if m.prefix is not None:
        why = topic_problem(m.prefix.rstrip("/"))
        if why:
            b.err(("mqtt", "prefix"), m.prefix, f"a topic prefix such as edge-monitor/hall-2/fan-1 ({why})")
    elif _MACHINE_ID.fullmatch(cfg.machine.id):
        why = topic_problem(mqtt_prefix(cfg))
        if why:
            b.err(("machine", "site"), cfg.machine.site, "a site name that fits the default MQTT prefix "
                  f"edge-monitor/<site>/<machine> ({why}); or set mqtt.prefix")
    why = topic_problem(m.homeassistant.discovery_prefix)
    if why:
        b.err(("mqtt", "homeassistant", "discovery_prefix"), m.homeassistant.discovery_prefix,
              f"a topic prefix such as homeassistant ({why})")
    if not m.host or any(c.isspace() for c in m.host):
        b.err(("mqtt", "host"), m.host, "a host name or IP address without spaces")
    if m.client_id is not None and not m.client_id:
        b.err(("mqtt", "client_id"), m.client_id, "a non-empty client id (or null for the default)")
    if isinstance(src.device, int) and src.device < 0:
        b.err(("source", "device"), src.device, "a device index >= 0 or a name")
    if m.tls and (bool(m.tls.cert) != bool(m.tls.key)):
        b.err(("mqtt", "tls"), "cert/key", "both cert and key, or neither")
    if m.password_file and not m.username:
        b.err(("mqtt", "username"), None, "a user name when password_file is set")
    w = cfg.web
    if not w.host or any(c.isspace() for c in w.host):
        b.err(("web", "host"), w.host, "a host name or IP address without spaces (127.0.0.1 for this computer only)")
    if w.tls and not (w.tls.cert and w.tls.key):
        b.err(("web", "tls"), "cert/key", "both cert and key (PEM files)")
    for i, proxy in enumerate(w.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            b.err(("web", "trusted_proxies", i), proxy, "an IP address or network of a reverse proxy, such as "
                  "127.0.0.1 or 10.1.0.0/24 (host names are not accepted)")
    if w.enabled and w.host and not is_loopback(w.host) and not w.password_file:
        b.err(("web", "password_file"), None, f"a password file (or credential:NAME) when web.host is {w.host!r}: "
              "the page changes thresholds, so it never listens beyond localhost without a password")


def _resolve(base: Path, p: Optional[str]) -> Optional[str]:
    if p is None or p.startswith("credential:"):
        return p
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else (base / q))


def _state_dir(base: Path, configured: str) -> str:
    # systemd's StateDirectory= wins over the built-in default, never over an explicit setting
    env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env and configured == DEFAULT_STATE_DIR:
        return env
    return str(_resolve(base, configured))


# ---------------------------------------------------------------- loading

def parse_config(text: str, fname: str = "<config>", base_dir: Optional[Path] = None) -> Config:
    """Parse YAML text into a Config, raising ConfigError listing every problem."""
    data, lines, problems = read_yaml(text, fname)
    b = Builder(fname, lines)
    b.problems.extend(problems)
    cfg = b.build(Config, data, ()) if data is not INVALID else None
    if cfg is not None and not b.problems:
        _semantic_checks(cfg, b)
    if b.problems or cfg is None:
        raise ConfigError(b.problems or [f"{fname}: invalid configuration"])
    base = base_dir or Path(".")
    state_dir = _state_dir(base, cfg.state_dir)
    cfg = dataclasses.replace(
        cfg,
        machine=dataclasses.replace(cfg.machine, type_check_model=_resolve(base, cfg.machine.type_check_model)),
        model=dataclasses.replace(cfg.model, path=_resolve(base, cfg.model.path)),
        source=dataclasses.replace(cfg.source, path=_resolve(base, cfg.source.path)),
        mqtt=dataclasses.replace(
            cfg.mqtt, password_file=_resolve(base, cfg.mqtt.password_file),
            prefix=cfg.mqtt.prefix.rstrip("/") if cfg.mqtt.prefix else cfg.mqtt.prefix,
            outbox_path=_resolve(base, cfg.mqtt.outbox_path),
            tls=None if cfg.mqtt.tls is None else dataclasses.replace(
                cfg.mqtt.tls, ca=_resolve(base, cfg.mqtt.tls.ca), cert=_resolve(base, cfg.mqtt.tls.cert),
                key=_resolve(base, cfg.mqtt.tls.key))),
        clips=dataclasses.replace(cfg.clips, dir=_resolve(base, cfg.clips.dir)),
        web=dataclasses.replace(
            cfg.web, password_file=_resolve(base, cfg.web.password_file),
            tls=None if cfg.web.tls is None else WebTlsConfig(cert=_resolve(base, cfg.web.tls.cert),
                                                              key=_resolve(base, cfg.web.tls.key))),
        state_dir=state_dir,
        source_file=fname,
        key_lines=dict(lines),
    )
    return cfg


def load_config(path: Union[str, Path]) -> Config:
    """Load and validate one machine's YAML file. Raises ConfigError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}: cannot read it ({exc})"]) from None
    return parse_config(text, str(p), p.resolve().parent)


def with_threshold(cfg: Config, threshold: float) -> Config:
    """A copy of ``cfg`` with a new detection threshold."""
    return dataclasses.replace(cfg, detection=dataclasses.replace(cfg.detection, threshold=threshold))
