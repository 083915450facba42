"""What the ``edge-monitor devices`` command shows: audio inputs (PortAudio) and serial ports (pyserial).

``list_audio_inputs()`` and ``list_serial_ports()`` return plain, JSON-ready
dicts; ``format_devices()`` turns them into the text an engineer reads while
filling in ``source.device`` / ``source.port``. A missing PortAudio library or
pyserial gives a one-line explanation, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Optional

_LOGGER = logging.getLogger(__name__)

PROBE_RATES_HZ = (8000, 16000, 44100, 48000)


class DeviceListError(RuntimeError):
    """Devices cannot be listed (no PortAudio, no pyserial); the message says what to install."""


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:
        raise DeviceListError(f"audio inputs cannot be listed: the PortAudio library is missing ({exc}). "
                              "Install it with: sudo apt-get install libportaudio2") from None
    except ImportError as exc:
        raise DeviceListError(f"audio inputs cannot be listed: python-sounddevice is missing ({exc}). "
                              "Install it with: pip install sounddevice") from None
    return sounddevice


def audio_unavailable_reason() -> Optional[str]:
    """Why audio inputs cannot be listed, or None when PortAudio is usable."""
    try:
        _import_sounddevice()
    except DeviceListError as exc:
        return str(exc)
    return None


def _supported_rates(sd: Any, index: int, rates_hz: Sequence[int]) -> list[int]:
    supported = []
    for rate in rates_hz:
        try:
            sd.check_input_settings(device=index, channels=1, dtype="float32", samplerate=rate)
        except Exception:   # PortAudioError or ValueError: that rate is refused
            continue
        supported.append(int(rate))
    return supported


def list_audio_inputs(rates_hz: Sequence[int] = PROBE_RATES_HZ) -> list[dict]:
    """Every PortAudio device with inputs, as dicts; an empty list if PortAudio is missing.

    Keys: ``index``, ``name``, ``hostapi``, ``max_input_channels``,
    ``default_samplerate_hz``, ``supported_rates_hz`` (those of ``rates_hz`` that
    ``sounddevice.check_input_settings`` accepts, mono float32) and ``default``
    (True for the system's default input).
    """
    try:
        sd = _import_sounddevice()
    except DeviceListError as exc:
        _LOGGER.debug("%s", exc)
        return []
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except Exception as exc:   # PortAudio present but broken
        _LOGGER.warning("PortAudio could not enumerate devices: %s", exc)
        return []
    try:
        default_input = int(sd.default.device[0])
    except (TypeError, ValueError, IndexError):
        default_input = -1
    inputs = []
    for index, info in enumerate(devices):
        if info["max_input_channels"] < 1:
            continue
        inputs.append({
            "index": index,
            "name": info["name"],
            "hostapi": hostapis[info["hostapi"]]["name"],
            "max_input_channels": int(info["max_input_channels"]),
            "default_samplerate_hz": float(info["default_samplerate"]),
            "supported_rates_hz": _supported_rates(sd, index, rates_hz),
            "default": index == default_input,
        })
    return inputs


def list_serial_ports() -> list[dict]:
    """Serial ports (Arduino candidates first) as dicts: ``device``, ``description``, ``vid_pid``, ``serial_number``."""
    try:
        from edge_monitor.sources.serial import list_serial_ports as _ports
        ports = _ports()
    except ImportError:
        return []
    return [{
        "device": p.device,
        "description": p.description if p.description not in (None, "n/a") else "",
        "vid_pid": f"{p.vid:04X}:{p.pid:04X}" if p.vid is not None and p.pid is not None else None,
        "serial_number": p.serial_number,
        "likely_arduino": p.likely_arduino,
    } for p in ports]


def _format_rates(rates_hz: Sequence[int]) -> str:
    return ", ".join(f"{rate / 1000:g}k" for rate in rates_hz) if rates_hz else "none of 8k/16k/44.1k/48k"


def format_devices(audio_inputs: Optional[list[dict]] = None, serial_ports: Optional[list[dict]] = None) -> str:
    """Text for ``edge-monitor devices``; lists are gathered here when not given."""
    lines = ["Audio inputs (source.device: index or part of the name):"]
    reason = audio_unavailable_reason()
    if audio_inputs is None:
        audio_inputs = list_audio_inputs()
    if reason is not None:
        lines.append(f"  {reason}")
    elif not audio_inputs:
        lines.append("  none found. Is the microphone plugged in? Check `arecord -l`; "
                     "PortAudio only sees devices present when the program starts.")
    for dev in audio_inputs:
        marker = "*" if dev.get("default") else " "
        lines.append(f" {marker}{dev['index']:>3}  {dev['name']}  [{dev['hostapi']}]")
        lines.append(f"        channels: {dev['max_input_channels']} (use 0..{dev['max_input_channels'] - 1}), "
                     f"default rate: {dev['default_samplerate_hz']:g} Hz, "
                     f"supports: {_format_rates(dev['supported_rates_hz'])}")
    if audio_inputs:
        lines.append("  (* = system default input)")
    lines.append("")
    lines.append("Serial ports (source.port, for an Arduino):")
    if serial_ports is None:
        serial_ports = list_serial_ports()
    if not serial_ports:
        lines.append("  none found")
    for port in serial_ports:
        details = [port.get("description") or "no description"]
        if port.get("vid_pid"):
            details.append(f"VID:PID {port['vid_pid']}")
        if port.get("serial_number"):
            details.append(f"serial {port['serial_number']}")
        lines.append(f"  {port['device']}  {', '.join(details)}")
    return "\n".join(lines)
