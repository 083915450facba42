"""Build the right Source for a SourceConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_monitor.sources.base import Source

if TYPE_CHECKING:
    from edge_monitor.config import SourceConfig


def source_key(cfg: SourceConfig) -> tuple:
    """Machines whose sources share this key share one device (e.g. one channel each of a mic array)."""
    if cfg.type == "microphone":
        return ("microphone", str(cfg.device), cfg.sample_rate)
    if cfg.type == "serial":
        return ("serial", cfg.port, cfg.baud)
    return ("file", cfg.path)


def make_source(cfg: SourceConfig, target_rate_hz: int, stall_timeout_s: float = 2.0) -> Source:
    """A closed Source for ``cfg`` delivering ``target_rate_hz`` where the source can resample."""
    if cfg.type == "microphone":
        from edge_monitor.sources.microphone import MicrophoneSource
        return MicrophoneSource.from_config(cfg, target_rate_hz, stall_timeout_s=stall_timeout_s)
    if cfg.type == "serial":
        from edge_monitor.sources.serial import SerialSource
        return SerialSource.from_config(cfg, stall_timeout_s=stall_timeout_s)
    from edge_monitor.sources.wavfile import WavFileSource
    return WavFileSource.from_config(cfg, expect_rate_hz=target_rate_hz)
