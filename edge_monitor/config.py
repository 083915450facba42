"""Typed, frozen configuration for one monitored machine, loaded from YAML.

Every section is a frozen dataclass. Field metadata carries the help text and
the bounds that validation enforces. ``load_config`` collects every problem in
a file and raises one ``ConfigError`` listing them all, each with file:line,
the key path, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


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
    telemetry_seconds: float = _f(60.0, help="Interval between telemetry messages (seconds)", lo=1.0, hi=86400.0)
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
class Config:
    """One machine's whole configuration."""

    machine: MachineConfig = _f(help="Machine identity")
    model: ModelConfig = _f(help="Model bundle")
    source: SourceConfig = _f(factory=SourceConfig, help="Audio source")
    detection: DetectionConfig = _f(factory=DetectionConfig, help="Alert trigger settings")
    health: HealthConfig = _f(factory=HealthConfig, help="Input health checks")
    mqtt: MqttConfig = _f(factory=MqttConfig, help="MQTT publishing")
    clips: ClipsConfig = _f(factory=ClipsConfig, help="Evidence clips")
    state_dir: str = _f("/var/lib/edge-monitor", help="Folder for the outbox, clips and runtime state (systemd's StateDirectory)")
    log_level: str = _f("info", help="debug, info, warning or error", choices=("debug", "info", "warning", "error"))
    source_file: str = dataclasses.field(default="", compare=False, metadata={"internal": True})
