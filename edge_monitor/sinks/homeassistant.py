"""Home Assistant MQTT discovery messages for one monitored machine.

Pure functions: they build (topic, JSON object) pairs; ``mqtt.py`` publishes
them retained on connect and again whenever Home Assistant announces itself
on ``<discovery_prefix>/status``. The entities share one device:

- ``binary_sensor`` "Anomaly" (device_class ``problem``): on while the state is ``anomaly``;
- ``sensor`` "Anomaly score": the latest window score from ``<prefix>/score`` (sent every
  ``mqtt.score_seconds`` while it changes), with the telemetry as attributes;
- ``sensor`` "State" (device_class ``enum``): normal, anomaly, degraded or unknown
  (``unknown``: the monitor was stopped during an alert; the anomaly shows as unknown too);
- ``event`` "Alert": fires ``start`` and ``end`` from ``<prefix>/alert``, with the score, label,
  episode and the rest as event attributes;
- ``number`` "Threshold" (entity_category ``config``): shows ``threshold/state``, sets ``threshold/set``;
- diagnostic ``sensor``s: "Health" (the last health event), "Dropped frames", "Outbox depth".

All follow ``<prefix>/status`` for availability. Oldest Home Assistant that understands
every field: 2023.8 (MQTT ``event`` entities and ``origin`` arrived then); checked against 2024.3.3.
"""

from __future__ import annotations

import re
from typing import Any

from edge_monitor import __version__
from edge_monitor.config import HomeAssistantConfig, MachineConfig

MANUFACTURER = "edge-monitor"
SCORE_KEY = "score_last"
"""Telemetry key with the latest score (telemetry attribute of the score sensor)."""
SCORE_DISPLAY_DECIMALS = 3
DEFAULT_SITE = "default"
"""``machine.site`` when none is configured: not offered to Home Assistant as an area."""
THRESHOLD_MIN = 0.001
"""Smallest threshold the number entity offers (Home Assistant's finest step is 0.001)."""
THRESHOLD_MAX = 1e9
OBJECTS = ("anomaly", "score", "state", "alert", "threshold", "health", "dropped_frames", "outbox_depth")
"""Object ids of this machine's entities (the last level but one of each config topic)."""
_LEGACY_OBJECTS = (("binary_sensor", "anomaly"), ("sensor", "score"), ("sensor", "state"))
"""Entities of versions up to 0.x that used ``legacy_node_id`` (cleared when the new ones are announced)."""


def _escape(text: str) -> str:
    """Letters, digits and ``-`` as they are; every other UTF-8 byte (``_`` too) as ``_`` + two hex digits."""
    out = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch == "-"):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def node_id(machine: MachineConfig) -> str:
    """Discovery node id, one per (site, machine) and never shared: ``edge-monitor_<site>__<machine>``.

    Both names are escaped (see ``_escape``), so a ``_`` in the result is always followed by two
    hex digits except in the ``__`` separator: different names can never give the same id.
    ``hall``/``fan-1`` gives ``edge-monitor_hall__fan-1``. The ``-`` in ``edge-monitor`` keeps
    these ids apart from the legacy ones, which never contain a ``-``.
    """
    return f"edge-monitor_{_escape(machine.site)}__{_escape(machine.id)}"


def legacy_node_id(machine: MachineConfig) -> str:
    """The node id of earlier versions (``edge_monitor_<site>_<machine>``, could collide); only for clean-up."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"edge_monitor_{machine.site}_{machine.id}")


def device_block(machine: MachineConfig, model_name: str) -> dict[str, Any]:
    """The ``device`` object shared by every entity of this machine."""
    device: dict[str, Any] = {
        "identifiers": [node_id(machine)],
        "name": machine.name or machine.id,
        "model": f"Acoustic anomaly monitor ({machine.type}, model {model_name})",
        "manufacturer": MANUFACTURER,
        "sw_version": __version__,
    }
    if machine.site and machine.site != DEFAULT_SITE:
        device["suggested_area"] = machine.site
    return device


_EVENT_TEMPLATE = (
    "{{ {'event_type': value_json.type, 'score': value_json.score, 'threshold': value_json.threshold,"
    " 'label': value_json.label | default(none), 'reason': value_json.reason | default(none),"
    " 'episode': value_json.episode, 'alert_id': value_json.id, 'started_at': value_json.started_at,"
    " 'ended_at': value_json.ended_at | default(none), 'clip': value_json.clip | default(none),"
    " 'model': value_json.model} | to_json }}"
)
"""Alert JSON -> Home Assistant event: ``event_type`` is the alert's ``type``; the rest become attributes."""


def config_topic(ha: HomeAssistantConfig, component: str, node: str, obj: str) -> str:
    """``<discovery_prefix>/<component>/<node>/<object>/config``."""
    return f"{ha.discovery_prefix}/{component}/{node}/{obj}/config"


def discovery_messages(ha: HomeAssistantConfig, machine: MachineConfig, prefix: str,
                       model_name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every discovery config for this machine, as (config topic, payload) pairs."""
    node = node_id(machine)
    common = {
        "availability": [{
            "topic": f"{prefix}/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "device": device_block(machine, model_name),
        "origin": {"name": "edge-monitor", "sw_version": __version__},
    }

    def entity(obj: str, name: str, **fields: Any) -> dict[str, Any]:
        return {**common, "name": name, "unique_id": f"{node}_{obj}", "object_id": _object_id(machine, obj),
                **fields}

    diagnostic = {"entity_category": "diagnostic"}
    configs = [
        ("binary_sensor", "anomaly", entity(
            "anomaly", "Anomaly", device_class="problem", state_topic=f"{prefix}/state",
            # `degraded` is an input problem, not a machine problem: it reads as off here and shows up
            # in the State sensor instead. `unknown` renders None: Home Assistant's unknown.
            value_template="{{ 'ON' if value == 'anomaly' else ('None' if value == 'unknown' else 'OFF') }}",
            payload_on="ON", payload_off="OFF")),
        ("sensor", "score", entity(
            "score", "Anomaly score", state_topic=f"{prefix}/score", json_attributes_topic=f"{prefix}/telemetry",
            state_class="measurement", suggested_display_precision=SCORE_DISPLAY_DECIMALS, icon="mdi:waveform")),
        ("sensor", "state", entity(
            "state", "State", state_topic=f"{prefix}/state", device_class="enum",
            options=["normal", "anomaly", "degraded", "unknown"], icon="mdi:state-machine")),
        ("event", "alert", entity(
            "alert", "Alert", state_topic=f"{prefix}/alert", event_types=["start", "end"],
            value_template=_EVENT_TEMPLATE, qos=1, icon="mdi:alert-decagram")),
        ("number", "threshold", entity(
            "threshold", "Threshold", state_topic=f"{prefix}/threshold/state",
            command_topic=f"{prefix}/threshold/set", qos=1, retain=False, min=THRESHOLD_MIN, max=THRESHOLD_MAX,
            step=0.001, mode="box", entity_category="config", icon="mdi:tune-vertical")),
        ("sensor", "health", entity(
            "health", "Health", state_topic=f"{prefix}/health", value_template="{{ value_json.kind }}",
            json_attributes_topic=f"{prefix}/health", icon="mdi:heart-pulse", **diagnostic)),
        ("sensor", "dropped_frames", entity(
            "dropped_frames", "Dropped frames", state_topic=f"{prefix}/telemetry",
            value_template="{{ value_json.dropped_frames }}", state_class="total_increasing",
            icon="mdi:waveform", **diagnostic)),
        ("sensor", "outbox_depth", entity(
            "outbox_depth", "Outbox depth", state_topic=f"{prefix}/telemetry",
            value_template="{{ value_json.mqtt.outbox_depth }}", state_class="measurement",
            unit_of_measurement="alerts", icon="mdi:tray-full", **diagnostic)),
    ]
    return [(config_topic(ha, component, node, obj), payload) for component, obj, payload in configs]


def _object_id(machine: MachineConfig, obj: str) -> str:
    """Suggested entity id (after the domain): ``<machine>_<object>``, e.g. ``sensor.fan_1_score``."""
    return re.sub(r"[^a-z0-9_]", "_", f"{machine.id}_{obj}".lower())


def removal_topics(ha: HomeAssistantConfig, machine: MachineConfig) -> list[str]:
    """Every discovery config topic this machine may have left retained, this version's and earlier ones'.

    An empty retained message on each removes the entities from Home Assistant.
    """
    node = node_id(machine)
    components = {"anomaly": "binary_sensor", "alert": "event", "threshold": "number"}
    topics = [config_topic(ha, components.get(obj, "sensor"), node, obj) for obj in OBJECTS]
    return topics + legacy_topics(ha, machine)


def legacy_topics(ha: HomeAssistantConfig, machine: MachineConfig) -> list[str]:
    """Config topics of the entities that earlier versions announced under ``legacy_node_id``."""
    legacy = legacy_node_id(machine)
    return [config_topic(ha, component, legacy, obj) for component, obj in _LEGACY_OBJECTS]
