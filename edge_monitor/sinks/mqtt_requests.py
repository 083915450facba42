"""The requests a machine's MQTT sink subscribes to: ``threshold/set`` and ``clip/get``.

The sink is not the owner of what is requested. A ``threshold/set`` value is
checked for form and handed to the owner (the daemon's Machine), which validates,
saves, applies and publishes it; ``clip/get`` is answered from the clips folder.
Both run on paho's network thread.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Callable, Optional

import paho.mqtt.client as paho

from edge_monitor.events import utc_iso
from edge_monitor.sinks.mqtt_topics import Topics
from edge_monitor.threshold_store import THRESHOLD_MAX, is_valid_threshold

_LOGGER = logging.getLogger("edge_monitor.sinks.mqtt")

_ERROR_PAYLOAD_CHARS = 64

ThresholdRequestHandler = Callable[[float], Optional[str]]
"""Receives a ``threshold/set`` value; raises to refuse it, returns a warning text or None/"" when applied."""

CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}-[0-9]{8}T[0-9]{6}Z-[0-9A-Za-z]{1,8}$")
"""A clip id as ``ClipRecorder`` names clips (file name without ``.wav``); nothing else is ever read."""


def parse_threshold(payload: bytes) -> tuple[Optional[float], str]:
    """Decode a ``threshold/set`` payload: (value, "") or (None, reason it was rejected)."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, "payload is not UTF-8 text"
    try:
        value = float(text)
    except ValueError:
        return None, "payload is not a number"
    if not math.isfinite(value):
        return None, "threshold must be a finite number"
    if not is_valid_threshold(value):
        return None, f"threshold must be > 0 and <= {THRESHOLD_MAX:g}"
    return value, ""


class Requests:
    """Answers one machine's ``threshold/set`` and ``clip/get`` messages."""

    def __init__(self, client: paho.Client, topics: Topics, machine_id: str,
                 on_threshold_set: Optional[ThresholdRequestHandler], clips_dir: Optional[Path],
                 shown_threshold: Callable[[], float]) -> None:
        """``shown_threshold()`` is the threshold last published, quoted in ``threshold/error`` reports."""
        self._client = client
        self._topics = topics
        self._machine_id = machine_id
        self._on_threshold_set = on_threshold_set
        self._clips_dir = Path(clips_dir) if clips_dir is not None else None
        self._shown_threshold = shown_threshold

    def threshold_set(self, payload: bytes) -> None:
        """A ``threshold/set`` message: refuse it on ``threshold/error``, or hand the value to its owner."""
        if not payload:
            return  # an empty message clears a retained one; it is not a request
        value, problem = parse_threshold(payload)
        if value is None:
            self._reject_threshold(payload, problem)
            return
        if self._on_threshold_set is None:
            self._reject_threshold(payload, "this monitor takes no threshold at run time")
            return
        try:
            warning = self._on_threshold_set(value)  # the owner applies it and calls show_threshold
        except Exception as exc:  # noqa: BLE001 - report whatever the owner objects to
            self._reject_threshold(payload, f"not applied: {exc}")
            return
        if warning:
            self._publish_threshold_error(payload, warning)
        _LOGGER.info("MQTT: threshold of %s requested: %g", self._machine_id, value)

    def _reject_threshold(self, payload: bytes, problem: str) -> None:
        shown = payload[:_ERROR_PAYLOAD_CHARS].decode("utf-8", errors="replace")
        _LOGGER.warning("MQTT: rejected threshold/set %r: %s", shown, problem)
        self._publish_threshold_error(payload, problem)

    def _publish_threshold_error(self, payload: bytes, problem: str) -> None:
        shown = payload[:_ERROR_PAYLOAD_CHARS].decode("utf-8", errors="replace")
        body = {"error": problem, "payload": shown, "threshold": self._shown_threshold(), "at": utc_iso(time.time())}
        self._client.publish(self._topics.threshold_error, json.dumps(body), qos=1, retain=False)

    def clip_get(self, payload: bytes) -> None:
        """``clip/get``: send the clip's bytes on ``clip/data/<id>``, or say why not on ``clip/error``."""
        clip_id = payload[:80].decode("utf-8", errors="replace").strip()
        if not clip_id:
            return  # an empty message clears a retained request
        data, problem = self._read_clip(clip_id)
        if problem:
            _LOGGER.warning("MQTT: clip/get %r refused: %s", clip_id, problem)
            body = {"error": problem, "id": clip_id, "at": utc_iso(time.time())}
            self._client.publish(self._topics.clip_error, json.dumps(body), qos=1, retain=False)
            return
        _LOGGER.info("MQTT: sending clip %s (%d bytes)", clip_id, len(data))
        self._client.publish(self._topics.clip_data(clip_id), data, qos=1, retain=False)

    def _read_clip(self, clip_id: str) -> tuple[bytes, str]:
        """(the clip's bytes, "") or (b"", why it cannot be sent)."""
        if not CLIP_ID.fullmatch(clip_id):
            return b"", "not a clip id (expected <machine>-<YYYYmmddTHHMMSSZ>-<alert id prefix>)"
        if self._clips_dir is None:
            return b"", "this monitor saves no clips (clips.enabled is false)"
        try:
            return (self._clips_dir / f"{clip_id}.wav").read_bytes(), ""
        except FileNotFoundError:
            return b"", "no such clip (never written, or deleted by clips.max_count / max_total_mb)"
        except OSError as exc:
            return b"", f"cannot read the clip: {exc.strerror or exc}"
