"""A real Home Assistant (2024.3.3, in ``.venv-ha`` built by ``scripts/ha-venv.sh``) sees every entity change.

The live demo (the bundled SYNTHETIC recording in real time, looping) publishes to a real mosquitto that a
real Home Assistant's MQTT integration reads. Through Home Assistant's REST API the test sees: every
discovered entity; the score sensor updating every few seconds while telemetry is not sent at all; the
threshold set from Home Assistant (number.set_value) reaching the detector (the next alert carries it);
the alert event firing ``start`` then ``end`` with score and reason; the anomaly on then off; the
diagnostic and config entity categories; everything unavailable once the monitor stops; and
``edge-monitor forget`` removing the device's entities.

Skipped when ``.venv-ha`` is missing, unless ``EDGE_MONITOR_REQUIRE_HA`` is set (``scripts/test.sh`` builds the
venv and sets it, so CI runs this).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from edge_monitor.daemon import DEMO_LIVE_CONFIG
from tests.helpers.broker import Collector, Mosquitto, free_port, mosquitto, wait_until
from tests.helpers.daemon import DEMO_DIR, REPO_ROOT, DaemonProcess
from tests.helpers.homeassistant import HomeAssistant, ha_venv

__all__ = ["mosquitto"]

PREFIX = "edge-monitor/demo/demo-fan"
ENTITIES = {
    "anomaly": "binary_sensor.demo_fan_anomaly", "score": "sensor.demo_fan_score", "state": "sensor.demo_fan_state",
    "alert": "event.demo_fan_alert", "threshold": "number.demo_fan_threshold", "health": "sensor.demo_fan_health",
    "dropped_frames": "sensor.demo_fan_dropped_frames", "outbox_depth": "sensor.demo_fan_outbox_depth",
}
NEW_THRESHOLD = 1.2  # the model's is 1.58; the fault scores 2.2-2.9, normal windows 0.1-0.6


@pytest.fixture
def home_assistant(mosquitto: Mosquitto, tmp_path: Path):
    """A started Home Assistant whose MQTT integration uses the test's broker."""
    if not (ha_venv() / "bin" / "hass").exists():
        if os.environ.get("EDGE_MONITOR_REQUIRE_HA"):
            pytest.fail(f"no Home Assistant in {ha_venv()}: run bash scripts/ha-venv.sh")
        pytest.skip(f"no Home Assistant in {ha_venv()} (bash scripts/ha-venv.sh builds it)")
    ha = HomeAssistant(tmp_path / "ha", free_port(), mosquitto.host, mosquitto.port)
    seconds = ha.start()
    print(f"Home Assistant answered after {seconds:.1f} s")
    try:
        yield ha
    finally:
        ha.stop()


class Sampler(threading.Thread):
    """Reads one entity's state every 0.5 s and keeps every distinct value in order."""

    def __init__(self, ha: HomeAssistant, entity_id: str) -> None:
        super().__init__(daemon=True)
        self.ha, self.entity_id = ha, entity_id
        self.values: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                state = self.ha.state(self.entity_id)
            except OSError:
                continue
            if state and (not self.values or self.values[-1] != state["state"]):
                self.values.append(state["state"])


def numbers(values: list[str]) -> list[float]:
    """The numeric ones among sampled states."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out


@pytest.mark.timeout(600)
def test_home_assistant_sees_every_entity_change(home_assistant: HomeAssistant, mosquitto: Mosquitto,
                                                 tmp_path: Path) -> None:
    ha = home_assistant
    config = yaml.safe_load(DEMO_LIVE_CONFIG.read_text())
    config["model"]["path"] = str(DEMO_DIR / config["model"]["path"])
    config["source"]["path"] = str(DEMO_DIR / config["source"]["path"])
    config["state_dir"] = str(tmp_path / "state")
    config["mqtt"]["telemetry_seconds"] = 3600  # no telemetry during the test: the score has its own topic
    path = tmp_path / "demo-live.yaml"
    path.write_text(yaml.safe_dump(config))
    watcher = Collector(mosquitto, [f"{PREFIX}/#"])
    daemon = DaemonProcess(path, tmp_path / "daemon.log", extra_args=("--mqtt", f"{mosquitto.host}:{mosquitto.port}"))
    sampler = Sampler(ha, ENTITIES["score"])
    try:
        wait_until(lambda: all(ha.state(e) for e in ENTITIES.values()), 60, 0.5, what="every entity in HA")
        sampler.start()
        wait_until(lambda: ha.state(ENTITIES["anomaly"])["state"] == "off", 30, 0.25,
                   what="the anomaly to be available and off")
        wait_until(lambda: ha.state(ENTITIES["state"])["state"] == "normal", 30, 0.25, what="the state normal")
        assert float(ha.state(ENTITIES["threshold"])["state"]) == pytest.approx(1.58, abs=0.01)

        ha.call("number", "set_value", {"entity_id": ENTITIES["threshold"], "value": NEW_THRESHOLD})
        wait_until(lambda: float(ha.state(ENTITIES["threshold"])["state"]) == NEW_THRESHOLD, 30, 0.5,
                   what="the threshold number to show the value the monitor took")
        assert watcher.last(f"{PREFIX}/threshold/state").payload == b"1.2"

        def alert_of_type(kind: str):
            attrs = ha.state(ENTITIES["alert"])["attributes"]
            return attrs if attrs.get("event_type") == kind and attrs.get("threshold") == NEW_THRESHOLD else None

        start = wait_until(lambda: alert_of_type("start"), 120, 0.25, what="the alert event to fire start")
        assert start["score"] > NEW_THRESHOLD and start["episode"] and start["alert_id"]
        wait_until(lambda: ha.state(ENTITIES["anomaly"])["state"] == "on", 30, 0.25, what="the anomaly to be on")
        end = wait_until(lambda: alert_of_type("end"), 60, 0.25, what="the alert event to fire end")
        assert end["reason"] == "clear" and end["episode"] == start["episode"] and end["score"] >= start["score"]
        wait_until(lambda: ha.state(ENTITIES["anomaly"])["state"] == "off", 30, 0.25, what="the anomaly to clear")

        scores = numbers(sampler.values)
        assert len(set(scores)) >= 5, f"the score sensor changed only {scores}"
        assert watcher.on(f"{PREFIX}/telemetry") == [], "the score must not depend on telemetry"

        registry = wait_until(lambda: {e["entity_id"]: e for e in ha.entity_registry()
                                       if e["entity_id"] in ENTITIES.values()} if len(
            [e for e in ha.entity_registry() if e["entity_id"] in ENTITIES.values()]) == len(ENTITIES) else None,
            60, 1.0, what="Home Assistant to save its entity registry")
        for obj in ("health", "dropped_frames", "outbox_depth"):
            assert registry[ENTITIES[obj]]["entity_category"] == "diagnostic", obj
        assert registry[ENTITIES["threshold"]]["entity_category"] == "config"
        assert registry[ENTITIES["anomaly"]]["entity_category"] is None
        assert registry[ENTITIES["score"]]["options"].get("sensor", {}).get("suggested_display_precision") == 3
        assert len({e["unique_id"] for e in registry.values()}) == len(ENTITIES)
    finally:
        sampler.stop_event.set()
        code = daemon.stop()
    assert code == 0, daemon.log_text()
    wait_until(lambda: ha.state(ENTITIES["anomaly"])["state"] == "unavailable", 30, 0.5,
               what="the entities to become unavailable once the monitor stopped")
    assert ha.state(ENTITIES["threshold"])["state"] == "unavailable"

    forget = subprocess.run([sys.executable, "-m", "edge_monitor", "forget", "--config", str(path),
                             "--mqtt", f"{mosquitto.host}:{mosquitto.port}"], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    assert forget.returncode == 0, forget.stderr
    wait_until(lambda: all(ha.state(e) is None for e in ENTITIES.values()), 30, 0.5,
               what="forget to remove the entities from Home Assistant")
    print(f"score sensor values seen: {sampler.values[:12]} ...; alert start {start}; end {end}")
