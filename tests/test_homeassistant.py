"""Home Assistant discovery: ids that never collide, the entities and their wiring, the score topic's rate,
and clips announced and fetched over MQTT, against a real mosquitto."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_monitor.config import ClipsConfig, HomeAssistantConfig, MachineConfig, MqttConfig
from edge_monitor.events import AlertEvent, ScoreEvent, StateEvent
from edge_monitor.sinks import homeassistant
from edge_monitor.sinks.clips import ClipRecorder
from edge_monitor.sinks.mqtt import MqttSink
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until

__all__ = ["mosquitto"]

HA = HomeAssistantConfig()
MACHINE = MachineConfig(id="fan-1", site="hall", name="Fan 1", type="fan")
PREFIX = "edge-monitor/hall/fan-1"


def configs_by_object(machine: MachineConfig = MACHINE) -> dict[str, tuple[str, dict]]:
    """Discovery configs keyed by object id: (topic, payload)."""
    return {topic.split("/")[-2]: (topic, payload)
            for topic, payload in homeassistant.discovery_messages(HA, machine, PREFIX, "fan-ae")}


# --------------------------------------------------------------------------- pure


def test_the_ids_of_the_issue_no_longer_collide() -> None:
    a = MachineConfig(id="b-c", site="hall-a")
    b = MachineConfig(id="a-b-c", site="hall")
    assert homeassistant.legacy_node_id(a) == homeassistant.legacy_node_id(b)  # the old scheme's collision
    assert homeassistant.node_id(a) != homeassistant.node_id(b)
    assert homeassistant.node_id(MachineConfig(id="fan_1", site="hall")) != homeassistant.node_id(MACHINE)
    assert homeassistant.node_id(MACHINE) == "edge-monitor_hall__fan-1"


_NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(site_a=_NAMES, id_a=_NAMES, site_b=_NAMES, id_b=_NAMES)
def test_different_names_never_share_a_node_id(site_a: str, id_a: str, site_b: str, id_b: str) -> None:
    node_a = homeassistant.node_id(MachineConfig(id=id_a, site=site_a))
    node_b = homeassistant.node_id(MachineConfig(id=id_b, site=site_b))
    assert (node_a == node_b) == ((site_a, id_a) == (site_b, id_b))
    # a valid discovery node id for Home Assistant, and never one of the legacy ids (which have no '-')
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in node_a)
    assert node_a != homeassistant.legacy_node_id(MachineConfig(id=id_b, site=site_b))


def test_every_entity_has_its_own_unique_id_availability_and_device() -> None:
    configs = configs_by_object()
    assert set(configs) == set(homeassistant.OBJECTS)
    unique_ids = [payload["unique_id"] for _, payload in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for topic, payload in configs.values():
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        assert payload["availability"][0]["topic"] == f"{PREFIX}/status"
        assert payload["device"]["identifiers"] == ["edge-monitor_hall__fan-1"]
    assert sorted(homeassistant.removal_topics(HA, MACHINE)[:len(configs)]) == sorted(t for t, _ in configs.values())


def test_the_entities_a_user_acts_on() -> None:
    configs = configs_by_object()
    event = configs["alert"][1]
    assert configs["alert"][0] == "homeassistant/event/edge-monitor_hall__fan-1/alert/config"
    assert event["state_topic"] == f"{PREFIX}/alert" and event["event_types"] == ["start", "end"]
    for field in ("event_type", "score", "label", "threshold", "episode", "reason"):
        assert f"'{field}'" in event["value_template"]
    number = configs["threshold"][1]
    assert configs["threshold"][0].startswith("homeassistant/number/")
    assert number["command_topic"] == f"{PREFIX}/threshold/set"
    assert number["state_topic"] == f"{PREFIX}/threshold/state"
    assert number["min"] > 0 and number["max"] >= 1e9 and number["mode"] == "box"
    score = configs["score"][1]
    assert score["state_topic"] == f"{PREFIX}/score" and score["suggested_display_precision"] == 3
    for obj in ("health", "dropped_frames", "outbox_depth"):
        assert configs[obj][1]["entity_category"] == "diagnostic", obj
    for obj in ("anomaly", "score", "state", "alert"):
        assert "entity_category" not in configs[obj][1], obj


def test_the_default_site_is_not_offered_as_an_area() -> None:
    assert "suggested_area" not in homeassistant.device_block(MachineConfig(id="fan-1"), "m")
    assert homeassistant.device_block(MACHINE, "m")["suggested_area"] == "hall"


# --------------------------------------------------------------------------- real broker


def start_sink(made: list[MqttSink], broker: Mosquitto, state_dir: Path, **kwargs: object) -> MqttSink:
    """A connected sink for MACHINE."""
    cfg = MqttConfig(enabled=True, host=broker.host, port=broker.port, keepalive_seconds=5)
    sink = MqttSink(cfg, MACHINE, state_dir, "fan-ae", 1.5, reconnect_max_seconds=2, **kwargs)  # type: ignore[arg-type]
    made.append(sink)
    sink.start()
    wait_until(lambda: sink.is_connected, what="the sink to connect")
    return sink


def score_event(at_s: float, score: float) -> ScoreEvent:
    """One scored window at event time ``at_s``."""
    return ScoreEvent(machine=MACHINE.id, at_s=at_s, score=score, threshold=1.5, rms_dbfs=-30.0, latency_ms=0.1)


@pytest.mark.timeout(60)
def test_score_goes_out_every_score_seconds_while_it_changes(mosquitto: Mosquitto, tmp_path: Path,
                                                             sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, [f"{PREFIX}/score", f"{PREFIX}/status"])
    sink = start_sink(sinks, mosquitto, tmp_path / "state")
    t0 = 1_700_000_000.0
    for i in range(41):  # 20 s of windows every 0.5 s (event time, not wall time), default score_seconds 5
        sink.handle(score_event(t0 + 0.5 * i, 0.1 + 0.01 * i))
    for i in range(20):  # then 10 s of a score that does not change: nothing more is sent
        sink.handle(score_event(t0 + 20.5 + 0.5 * i, 0.9))
    sink.handle(score_event(t0 + 40.0, 1.25))  # a change after the quiet stretch goes out at once
    watcher.client.publish(f"{PREFIX}/marker", "x")
    got = watcher.wait_count(f"{PREFIX}/score", 7)
    time.sleep(0.3)
    values = [float(m.payload) for m in watcher.on(f"{PREFIX}/score")]
    assert values == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.25])
    assert all(not m.retain for m in got)


def test_score_seconds_is_a_config_key(tmp_path: Path) -> None:
    from edge_monitor.config import parse_config
    cfg = parse_config("machine: {id: fan-1}\nmodel: {path: m.tflite}\nmqtt: {score_seconds: 2}\n", "c.yaml", tmp_path)
    assert cfg.mqtt.score_seconds == 2.0


@pytest.mark.timeout(60)
def test_a_complete_clip_is_announced_and_can_be_fetched(mosquitto: Mosquitto, tmp_path: Path,
                                                         sinks: list[MqttSink]) -> None:
    clips_dir = tmp_path / "clips"
    watcher = Collector(mosquitto, [f"{PREFIX}/clip", f"{PREFIX}/clip/#"])
    sink = start_sink(sinks, mosquitto, tmp_path / "state", clips_dir=clips_dir)
    rate = 16000
    recorder = ClipRecorder(ClipsConfig(pre_seconds=1.0, post_seconds=1.0), clips_dir, MACHINE.id, rate,
                            on_written=sink.handle)
    rng = np.random.default_rng(0)
    t0 = 1_700_000_000.0
    for i in range(20):  # 2 s of audio in 0.1 s blocks
        recorder.push(rng.uniform(-0.5, 0.5, rate // 10).astype(np.float32), t0 + 0.1 * i)
    alert = AlertEvent(id=str(uuid.uuid4()), type="start", machine=MACHINE.id, score=3.0, threshold=1.5,
                       started_at_s=t0 + 1.5, model="fan-ae", episode="ep-1")
    path = recorder.start_clip(alert)
    assert path is not None
    assert watcher.on(f"{PREFIX}/clip") == [], "announced before its audio exists"
    for i in range(20, 40):
        recorder.push(rng.uniform(-0.5, 0.5, rate // 10).astype(np.float32), t0 + 0.1 * i)
    announce = watcher.wait_count(f"{PREFIX}/clip", 1)[0]
    body = announce.json()
    assert announce.qos == 1 and not announce.retain
    data = Path(path).read_bytes()
    assert body["path"] == path and body["id"] == Path(path).stem
    assert body["alert_id"] == alert.id and body["episode"] == "ep-1" and body["machine"] == MACHINE.id
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size_bytes"] == len(data)
    assert body["duration_s"] == pytest.approx(2.0) and body["sample_rate_hz"] == rate
    assert body["started_at"].startswith("2023-11-14T22:13:2")  # 1 s before the alert's start

    watcher.client.publish(f"{PREFIX}/clip/get", body["id"], qos=1)
    fetched = watcher.wait_count(f"{PREFIX}/clip/data/{body['id']}", 1)[0]
    assert hashlib.sha256(fetched.payload).hexdigest() == body["sha256"]

    for bad in ("../../etc/passwd", "fan-1-20231114T221321Z-deadbeef", "x" * 200):
        watcher.client.publish(f"{PREFIX}/clip/get", bad, qos=1)
    errors = watcher.wait_count(f"{PREFIX}/clip/error", 3)
    reasons = [json.loads(m.payload)["error"] for m in errors]
    assert reasons[0].startswith("not a clip id") and reasons[1].startswith("no such clip")
    assert reasons[2].startswith("not a clip id")
    assert [m.topic for m in watcher.messages if m.topic.startswith(f"{PREFIX}/clip/data/")] == \
        [f"{PREFIX}/clip/data/{body['id']}"]


@pytest.mark.timeout(60)
def test_turning_discovery_off_removes_the_entities(mosquitto: Mosquitto, tmp_path: Path,
                                                    sinks: list[MqttSink]) -> None:
    from tests.helpers.broker import read_retained
    score_config = homeassistant.config_topic(HA, "sensor", homeassistant.node_id(MACHINE), "score")
    sink = start_sink(sinks, mosquitto, tmp_path / "state")
    wait_until(lambda: read_retained(mosquitto, score_config), what="the retained discovery config")
    sink.close(timeout_s=2)
    cfg = MqttConfig(enabled=True, host=mosquitto.host, port=mosquitto.port, keepalive_seconds=5,
                     homeassistant=HomeAssistantConfig(enabled=False))
    off = MqttSink(cfg, MACHINE, tmp_path / "state", "fan-ae", 1.5, reconnect_max_seconds=2)
    sinks.append(off)
    off.start()
    wait_until(lambda: off.is_connected, what="the sink to connect")
    wait_until(lambda: read_retained(mosquitto, score_config) is None, what="the discovery config to be cleared")


def _forget(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", "forget", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.timeout(120)
def test_forget_clears_the_retained_discovery_and_state_topics(mosquitto: Mosquitto, tmp_path: Path,
                                                              sinks: list[MqttSink]) -> None:
    from tests.helpers.broker import read_retained
    from tests.helpers.daemon import write_config
    config = write_config(tmp_path, machine_id="fan-1", mqtt={"host": mosquitto.host, "port": mosquitto.port,
                                                              "prefix": None, "homeassistant": {"enabled": True}})
    text = config.read_text().replace("site: e2e", "site: hall")
    config.write_text(text)
    legacy = homeassistant.legacy_topics(HA, MACHINE)[0]
    mosquitto_pub = Collector(mosquitto, ["unused/topic"])
    mosquitto_pub.client.publish(legacy, "{}", qos=1, retain=True).wait_for_publish(5)  # an earlier version's
    mosquitto_pub.client.publish(f"{PREFIX}/threshold/set", "2.5", qos=1, retain=True).wait_for_publish(5)
    mosquitto_pub.close()
    sink = start_sink(sinks, mosquitto, tmp_path / "sink-state")
    sink.handle(StateEvent(MACHINE.id, "anomaly", time.time()))
    retained = [topic for topic, _ in homeassistant.discovery_messages(HA, MACHINE, PREFIX, "fan-ae")] + \
        [f"{PREFIX}/status", f"{PREFIX}/state", f"{PREFIX}/threshold/state"]
    for topic in retained:
        wait_until(lambda t=topic: read_retained(mosquitto, t), what=f"retained {topic}")

    refused = _forget(config)  # the machine is still online
    assert refused.returncode == 1 and "is online" in refused.stderr
    assert read_retained(mosquitto, f"{PREFIX}/state") == b"anomaly"

    sink.close(timeout_s=2)
    done = _forget(config)
    assert done.returncode == 0, done.stderr
    assert f"cleared {len(homeassistant.OBJECTS)} Home Assistant discovery config(s)" in done.stdout
    for topic in retained + [f"{PREFIX}/threshold/set", legacy]:
        assert read_retained(mosquitto, topic) is None, topic
    again = _forget(config)
    assert again.returncode == 0 and "cleared 0 Home Assistant discovery config(s) and 0 retained" in again.stdout


def test_forget_needs_a_broker(tmp_path: Path) -> None:
    from tests.helpers.daemon import write_config
    config = write_config(tmp_path)
    result = _forget(config)
    assert result.returncode == 2 and "--mqtt" in result.stderr
