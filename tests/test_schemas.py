"""The JSON Schemas in docs/schemas/ hold for what the monitor really publishes through a real mosquitto.

The live demo (the bundled SYNTHETIC recording at real-time pace, looping, clips and Home Assistant on)
runs for a little more than one loop against a broker; every message on the machine's topics is
validated against the schema of its topic, and the schemas themselves are checked to be valid. Health
events, rejected thresholds and refused clip requests are produced through the same daemon or sink.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edge_monitor.config import HomeAssistantConfig, MachineConfig, MqttConfig
from edge_monitor.daemon import DEMO_LIVE_CONFIG
from edge_monitor.events import HealthEvent
from edge_monitor.sinks.mqtt import MqttSink
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until
from tests.helpers.daemon import DEMO_DIR, DaemonProcess

__all__ = ["mosquitto"]

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
PLAIN_NUMBER = {"score", "threshold-state"}
PLAIN_WORD = {"state", "status"}


def load_schema(name: str) -> dict[str, Any]:
    """One schema file, checked against its own meta-schema."""
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def schema_for(prefix: str, topic: str) -> str | None:
    """The schema name of a topic under ``prefix`` (None: not a JSON/plain payload with a schema)."""
    rest = topic[len(prefix) + 1:]
    if rest.startswith("clip/data/"):
        return None  # WAV bytes; checked by their sha256 in test_homeassistant.py
    if rest in ("threshold/set", "clip/get"):
        return None  # what subscribers send (this test's own requests)
    return {"alert": "alert", "telemetry": "telemetry", "state": "state", "status": "status", "health": "health",
            "score": "score", "clip": "clip", "clip/error": "clip-error", "threshold/state": "threshold-state",
            "threshold/error": "threshold-error"}.get(rest, "?" + rest)


def validate(prefix: str, topic: str, payload: bytes) -> str | None:
    """Validate one message; returns the schema name used."""
    name = schema_for(prefix, topic)
    if name is None:
        return None
    assert not name.startswith("?"), f"{topic}: a topic without a schema"
    text = payload.decode("utf-8")
    if name in PLAIN_NUMBER:
        value: Any = float(text)
    elif name in PLAIN_WORD:
        value = text
    else:
        value = json.loads(text)
    jsonschema.validate(value, load_schema(name), cls=jsonschema.Draft202012Validator)
    return name


def test_every_schema_is_valid_and_strict() -> None:
    names = sorted(p.name[:-len(".schema.json")] for p in SCHEMAS.glob("*.schema.json"))
    assert {"alert", "telemetry", "state", "health", "clip"} <= set(names)
    for name in names:
        schema = load_schema(name)
        if schema.get("type") == "object":
            assert schema["additionalProperties"] is False, f"{name}: undocumented fields must fail"
    alert = load_schema("alert")
    with pytest.raises(jsonschema.ValidationError):  # an end must say why it ended
        jsonschema.validate({"id": "5b0f3c7e-2f1e-4d7a-9a55-5c8d3f0f9c21", "type": "end", "machine": "m",
                             "score": 1.0, "threshold": 1.0, "started_at": "2024-05-02T07:41:13.250Z",
                             "ended_at": "2024-05-02T07:41:14.250Z", "model": "x", "episode": "e"}, alert)


@pytest.mark.timeout(180)
def test_the_live_demo_publishes_only_what_the_schemas_allow(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A little more than one 40 s loop of ``run --demo-live``: alert start and end, clip, score, telemetry."""
    config = yaml.safe_load(DEMO_LIVE_CONFIG.read_text())
    assert config["source"]["realtime"] is True and config["source"]["loop"] is True
    config["model"]["path"] = str(DEMO_DIR / config["model"]["path"])
    config["source"]["path"] = str(DEMO_DIR / config["source"]["path"])
    config["state_dir"] = str(tmp_path / "state")  # the shipped one lives in /tmp, shared between runs
    path = tmp_path / "demo-live.yaml"
    path.write_text(yaml.safe_dump(config))
    prefix = "edge-monitor/demo/demo-fan"
    watcher = Collector(mosquitto, [f"{prefix}/#"])
    daemon = DaemonProcess(path, tmp_path / "daemon.log", extra_args=("--mqtt", f"{mosquitto.host}:{mosquitto.port}"))
    try:
        wait_until(lambda: watcher.on(f"{prefix}/status"), 30, what="the daemon to come online")
        wait_until(lambda: watcher.on(f"{prefix}/alert"), 60, what="the demo's alert start")
        watcher.client.publish(f"{prefix}/threshold/set", "not-a-number", qos=1)  # long subscribed by now
        watcher.client.publish(f"{prefix}/clip/get", "demo-fan-20000101T000000Z-00000000", qos=1)
        wait_until(lambda: len(watcher.on(f"{prefix}/alert")) >= 2, 60, what="the demo's alert end")
        wait_until(lambda: watcher.on(f"{prefix}/clip"), 30, what="the clip announcement")
        # past the end of the recording: a file source without loop would have stopped by now
        windows = wait_until(lambda: sum(m.json()["windows"] for m in watcher.on(f"{prefix}/telemetry")) > 85
                             and daemon.running, 60, what="more windows than one pass of the recording has")
        assert windows
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    time.sleep(0.3)
    used: dict[str, int] = {}
    for message in watcher.messages:
        name = validate(prefix, message.topic, message.payload)
        if name:
            used[name] = used.get(name, 0) + 1
    assert {"alert", "telemetry", "state", "status", "score", "clip", "threshold-state", "threshold-error",
            "clip-error"} <= set(used), used
    alerts = [m.json() for m in watcher.on(f"{prefix}/alert")]
    assert [a["type"] for a in alerts[:2]] == ["start", "end"] and alerts[1]["reason"] == "clear"
    assert alerts[1]["score"] >= alerts[0]["score"], "an end carries the episode's peak score"
    clip = watcher.on(f"{prefix}/clip")[0].json()
    assert clip["alert_id"] == alerts[0]["id"] and clip["path"] == alerts[0]["clip"]


@pytest.mark.timeout(60)
def test_health_events_match_their_schema(mosquitto: Mosquitto, tmp_path: Path) -> None:
    prefix = "edge-monitor/hall/fan-1"
    watcher = Collector(mosquitto, [f"{prefix}/health"])
    cfg = MqttConfig(enabled=True, host=mosquitto.host, port=mosquitto.port, keepalive_seconds=5,
                     homeassistant=HomeAssistantConfig(enabled=False))
    sink = MqttSink(cfg, MachineConfig(id="fan-1", site="hall"), tmp_path, "m", 1.0, reconnect_max_seconds=2)
    sink.start()
    try:
        wait_until(lambda: sink.is_connected, what="the sink to connect")
        kinds = ("silence", "silence_end", "source_lost", "source_ok", "reload_failed", "mqtt_ok")
        for kind in kinds:
            sink.handle(HealthEvent(kind, "fan-1", time.time(), f"detail of {kind}"))  # type: ignore[arg-type]
        got = watcher.wait_count(f"{prefix}/health", len(kinds))
    finally:
        sink.close(timeout_s=2)
    for message in got:
        assert validate(prefix, message.topic, message.payload) == "health"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "exploded", "machine": "m", "at": "2024-05-02T07:41:13.250Z", "detail": ""},
                            load_schema("health"))
