"""Home Assistant MQTT discovery messages for one monitored machine.

Pure functions: they build (topic, JSON object) pairs; ``mqtt.py`` publishes
them retained on connect and again whenever Home Assistant announces itself
on ``<discovery_prefix>/status``. Three entities share one device:

- ``binary_sensor`` "Anomaly" (device_class ``problem``): on while the state is ``anomaly``;
- ``sensor`` "Anomaly score": the last window score, from the telemetry topic
  (all other telemetry fields become its attributes);
- ``sensor`` "State" (device_class ``enum``): normal, anomaly, degraded or unknown
  (``unknown``: the monitor was stopped during an alert; the anomaly shows as unknown too).

All three follow ``<prefix>/status`` for availability.
"""

from __future__ import annotations

import re
from typing import Any

from edge_monitor import __version__
from edge_monitor.config import HomeAssistantConfig, MachineConfig

MANUFACTURER = "edge-monitor"
SCORE_KEY = "score_last"
"""Telemetry key the score sensor reads."""


def node_id(machine: MachineConfig) -> str:
    """Discovery node id: ``edge_monitor_<site>_<machine>`` with only [a-zA-Z0-9_]."""
    raw = f"edge_monitor_{machine.site}_{machine.id}"
    return re.sub(r"[^a-zA-Z0-9_]", "_", raw)


def device_block(machine: MachineConfig, model_name: str) -> dict[str, Any]:
    """The ``device`` object shared by every entity of this machine."""
    return {
        "identifiers": [node_id(machine)],
        "name": machine.name or machine.id,
        "model": f"Acoustic anomaly monitor ({machine.type}, model {model_name})",
        "manufacturer": MANUFACTURER,
        "sw_version": __version__,
        "suggested_area": machine.site,
    }


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
    anomaly = {
        **common,
        "name": "Anomaly",
        "unique_id": f"{node}_anomaly",
        "device_class": "problem",
        "state_topic": f"{prefix}/state",
        # `degraded` is an input problem, not a machine problem: it reads as off here
        # and shows up in the State sensor instead. `unknown` renders None: Home Assistant's unknown.
        "value_template": "{{ 'ON' if value == 'anomaly' else ('None' if value == 'unknown' else 'OFF') }}",
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    score = {
        **common,
        "name": "Anomaly score",
        "unique_id": f"{node}_score",
        "state_topic": f"{prefix}/telemetry",
        "value_template": "{{ value_json." + SCORE_KEY + " }}",
        "json_attributes_topic": f"{prefix}/telemetry",
        "state_class": "measurement",
        "icon": "mdi:waveform",
    }
    state = {
        **common,
        "name": "State",
        "unique_id": f"{node}_state",
        "state_topic": f"{prefix}/state",
        "device_class": "enum",
        "options": ["normal", "anomaly", "degraded", "unknown"],
        "icon": "mdi:state-machine",
    }
    base = ha.discovery_prefix
    return [
        (f"{base}/binary_sensor/{node}/anomaly/config", anomaly),
        (f"{base}/sensor/{node}/score/config", score),
        (f"{base}/sensor/{node}/state/config", state),
    ]
