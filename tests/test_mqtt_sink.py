"""MqttSink against a real mosquitto: topics, retained flags, Home Assistant, outages, kill -9, TLS, auth, threshold."""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from edge_monitor.config import HomeAssistantConfig, MachineConfig, MqttConfig, TlsConfig
from edge_monitor.events import AlertEvent, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.secrets import SecretError, read_secret
from edge_monitor.sinks.mqtt import MqttSetupError, MqttSink, parse_threshold
from edge_monitor.threshold_store import ThresholdStore
from tests.helpers.broker import (
    Collector,
    Mosquitto,
    SinkChild,
    Tls,
    issue_cert,
    make_ca,
    make_passwd,
    mosquitto,
    read_retained,
    wait_until,
)

__all__ = ["mosquitto"]  # the fixture, imported explicitly

MACHINE = MachineConfig(id="fan-1", site="hall", name="Fan 1", type="fan")
PREFIX = "edge-monitor/hall/fan-1"
ALERT = f"{PREFIX}/alert"
STATUS = f"{PREFIX}/status"


def make_alert(n: int, kind: str = "start") -> AlertEvent:
    """A distinct alert; ``n`` goes into the score so payloads differ."""
    now = time.time()
    return AlertEvent(id=str(uuid.uuid4()), type=kind, machine=MACHINE.id, score=2.0 + n, threshold=1.5,
                      started_at_s=now - 3.0, ended_at_s=now if kind == "end" else None, model="fan-ae",
                      episode="ep", clip=f"/var/lib/edge-monitor/clips/{n}.wav" if kind == "start" else None)


def new_sink(made: list[MqttSink], broker: Mosquitto, state_dir: Path, *, threshold: float = 1.5,
             on_threshold_set: Any = None, start: bool = True, **cfg: Any) -> MqttSink:
    """An MqttSink for MACHINE on ``broker`` with fast reconnects."""
    config = MqttConfig(enabled=True, host=broker.host, port=broker.port, keepalive_seconds=5, **cfg)
    sink = MqttSink(config, MACHINE, state_dir, "fan-ae", threshold, on_threshold_set,
                    reconnect_max_seconds=2)
    made.append(sink)
    if start:
        sink.start()
    return sink


def alert_ids(collector: Collector) -> list[str]:
    """Alert ids in arrival order."""
    return [m.json()["id"] for m in collector.on(ALERT)]


# --------------------------------------------------------------------------- payloads


@pytest.mark.timeout(60)
def test_topics_payloads_and_retained_flags(mosquitto: Mosquitto, tmp_path: Path, sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, [f"{PREFIX}/#"])
    sink = new_sink(sinks, mosquitto, tmp_path / "state")
    wait_until(lambda: sink.is_connected, what="sink connected")
    sink.handle(StateEvent(MACHINE.id, "anomaly", time.time()))
    start, end = make_alert(1), make_alert(2, "end")
    sink.handle(start)
    sink.handle(end)
    sink.handle(ScoreEvent(MACHINE.id, time.time(), 2.5, 1.5, -30.0, 1.2))
    sink.handle(HealthEvent("silence", MACHINE.id, time.time(), "rms -80 dBFS"))
    wait_until(lambda: sink.outbox_depth == 0, what="outbox drained")
    assert sink.publish_telemetry({"uptime_s": 12.5, "rms_dbfs": float("nan"), "dropped_frames": 0})

    alerts = watcher.wait_count(ALERT, 2)
    assert [a.json()["id"] for a in alerts] == [start.id, end.id]
    assert all(a.qos == 1 and not a.retain for a in alerts)
    first, second = alerts[0].json(), alerts[1].json()
    assert first == start.to_payload()
    assert first["started_at"].endswith("Z") and first["clip"].endswith("1.wav")
    assert second["type"] == "end" and "ended_at" in second and "clip" not in second

    telemetry = watcher.wait_count(f"{PREFIX}/telemetry", 1)[-1].json()
    assert telemetry["uptime_s"] == 12.5
    assert telemetry["rms_dbfs"] is None, "NaN must become null: it is not valid JSON"
    assert telemetry["score_last"] == 2.5
    assert telemetry["health"]["counts"] == {"silence": 1}
    assert telemetry["mqtt"]["connected"] is True
    assert telemetry["mqtt"]["alerts_published"] == 2
    assert telemetry["mqtt"]["outbox_depth"] == 0

    # A late subscriber sees the retained topics, and nothing retained on alert.
    assert read_retained(mosquitto, STATUS) == b"online"
    assert read_retained(mosquitto, f"{PREFIX}/state") == b"anomaly"
    assert read_retained(mosquitto, f"{PREFIX}/threshold/state") == b"1.5"
    assert read_retained(mosquitto, ALERT) is None

    sink.close()
    assert read_retained(mosquitto, STATUS) == b"offline"
    assert watcher.last(STATUS).payload == b"offline"
    watcher.close()


@pytest.mark.timeout(60)
def test_state_published_while_offline_is_renewed_on_connect(tmp_path: Path, sinks: list[MqttSink]) -> None:
    broker = Mosquitto(tmp_path / "broker")
    sink = new_sink(sinks, broker, tmp_path / "state")  # broker down at boot
    sink.handle(StateEvent(MACHINE.id, "degraded", time.time()))
    sink.handle(make_alert(0))
    assert not sink.is_connected and sink.outbox_depth == 1
    broker.start()
    try:
        wait_until(lambda: sink.outbox_depth == 0, what="alert delivered after the broker came up")
        assert read_retained(broker, f"{PREFIX}/state") == b"degraded"
        assert read_retained(broker, STATUS) == b"online"
    finally:
        sink.close()
        broker.stop()


# ----------------------------------------------------------------------- home assistant


@pytest.mark.timeout(60)
def test_homeassistant_discovery_and_reannounce(mosquitto: Mosquitto, tmp_path: Path,
                                                sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, ["homeassistant/#"])
    sink = new_sink(sinks, mosquitto, tmp_path / "state")
    configs = watcher.wait_count("homeassistant/binary_sensor/edge-monitor_hall__fan-1/anomaly/config", 1)
    score_topic = "homeassistant/sensor/edge-monitor_hall__fan-1/score/config"
    watcher.wait_count(score_topic, 1)
    binary = configs[0].json()
    score = watcher.on(score_topic)[0].json()
    for config in (binary, score):
        assert {"name", "unique_id", "state_topic", "availability", "device"} <= config.keys()
        assert config["availability"] == [{"topic": STATUS, "payload_available": "online",
                                           "payload_not_available": "offline"}]
        device = config["device"]
        assert {"identifiers", "name", "model", "manufacturer", "sw_version"} <= device.keys()
        assert device["name"] == "Fan 1"
    assert binary["device_class"] == "problem"
    assert binary["state_topic"] == f"{PREFIX}/state"
    assert binary["unique_id"] != score["unique_id"]
    assert score["state_topic"] == f"{PREFIX}/score" and score["json_attributes_topic"] == f"{PREFIX}/telemetry"
    assert read_retained(mosquitto, score_topic) is not None, "discovery config must be retained"
    # the entities of earlier versions (node id edge_monitor_<site>_<machine>) are removed
    legacy = watcher.wait_count("homeassistant/binary_sensor/edge_monitor_hall_fan_1/anomaly/config", 1)
    assert legacy[0].payload == b"" and legacy[0].retain is False  # a live subscriber sees retain=0

    before = len(watcher.on(score_topic))
    watcher.client.publish("homeassistant/status", "online", qos=1)
    watcher.wait_count(score_topic, before + 1)
    assert sink.is_connected


@pytest.mark.timeout(60)
def test_discovery_can_be_disabled(mosquitto: Mosquitto, tmp_path: Path, sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, ["homeassistant/#", STATUS])
    new_sink(sinks, mosquitto, tmp_path / "state", homeassistant=HomeAssistantConfig(enabled=False))
    watcher.wait_count(STATUS, 1)
    watcher.client.publish("homeassistant/status", "online", qos=1)
    time.sleep(0.5)
    # nothing announced; earlier announcements of this machine are removed (empty payloads)
    assert [m.payload for m in watcher.messages if m.topic.endswith("/config") and m.payload] == []


@pytest.mark.timeout(90)
def test_will_sets_offline_when_the_process_is_killed(mosquitto: Mosquitto, tmp_path: Path) -> None:
    watcher = Collector(mosquitto, [STATUS])
    child = SinkChild({"host": mosquitto.host, "port": mosquitto.port, "state_dir": str(tmp_path / "state"),
                       "machine": MACHINE.id})
    try:
        assert child.command("wait_connected") == "connected"
        wait_until(lambda: watcher.last(STATUS) and watcher.last(STATUS).payload == b"online", what="online")
        child.kill9()
        wait_until(lambda: watcher.last(STATUS).payload == b"offline", what="the will (offline)")
        assert read_retained(mosquitto, STATUS) == b"offline"
    finally:
        child.close()
        watcher.close()


# ---------------------------------------------------------------------- zero loss


@pytest.mark.timeout(120)
def test_broker_outage_delivers_every_alert_exactly_once_in_order(mosquitto: Mosquitto, tmp_path: Path,
                                                                  sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, [ALERT], client_id="watcher-outage", persistent=True)
    sink = new_sink(sinks, mosquitto, tmp_path / "state")
    sent = [make_alert(i) for i in range(15)]
    for event in sent[:5]:
        sink.handle(event)
    wait_until(lambda: sink.outbox_depth == 0, what="first alerts acknowledged")
    watcher.wait_count(ALERT, 5)
    time.sleep(0.5)  # let the watcher's own PUBACKs reach the broker, or the broker re-sends after restart
    mosquitto.stop()
    wait_until(lambda: not sink.is_connected, what="sink noticed the outage")
    for event in sent[5:10]:
        sink.handle(event)
    assert sink.outbox_depth == 5
    mosquitto.start()
    for event in sent[10:]:   # raised while the backlog is being replayed
        sink.handle(event)
    wait_until(lambda: sink.outbox_depth == 0, 60, what="outbox drained")
    watcher.wait_count(ALERT, len(sent), 60)
    time.sleep(0.5)  # a duplicate would arrive right behind the last one
    assert alert_ids(watcher) == [e.id for e in sent]
    watcher.close()


@pytest.mark.timeout(120)
def test_broker_stopped_mid_burst_loses_nothing_and_keeps_order(mosquitto: Mosquitto, tmp_path: Path,
                                                                sinks: list[MqttSink]) -> None:
    """Stopping the broker with alerts in flight: nothing lost, first arrivals in order."""
    watcher = Collector(mosquitto, [ALERT], client_id="watcher-burst", persistent=True)
    sink = new_sink(sinks, mosquitto, tmp_path / "state")
    wait_until(lambda: sink.is_connected, what="sink connected")
    sent: list[str] = []

    def burst(n: int) -> None:
        for _ in range(n):
            event = make_alert(len(sent))
            sent.append(event.id)
            sink.handle(event)

    burst(20)        # the broker goes away while these are being published
    mosquitto.stop()
    burst(10)
    mosquitto.start()
    burst(10)
    wait_until(lambda: sink.outbox_depth == 0, 60, what="outbox drained")
    watcher.wait_count(ALERT, len(sent), 60)
    time.sleep(0.5)
    received = alert_ids(watcher)
    first_seen = list(dict.fromkeys(received))
    assert first_seen == sent, str([sent.index(i) for i in received])
    # Repeats are QoS 1's at-least-once, on either hop: the sink re-sends the one alert whose
    # PUBACK was lost, and the broker re-sends to the watcher what the watcher's lost PUBACKs left open.
    assert set(received) == set(sent)
    watcher.close()


@pytest.mark.timeout(120)
def test_kill_9_during_outage_then_new_process_replays(mosquitto: Mosquitto, tmp_path: Path,
                                                       sinks: list[MqttSink]) -> None:
    state_dir = tmp_path / "state"
    child = SinkChild({"host": mosquitto.host, "port": mosquitto.port, "state_dir": str(state_dir),
                       "machine": MACHINE.id})
    sent = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(6)]
    try:
        assert child.command("wait_connected") == "connected"
        mosquitto.stop()
        answers = [child.command(f"alert {alert_id}") for alert_id in sent]
        assert answers[-1] == f"queued {len(sent)}"
        child.kill9()
    finally:
        child.close()
    mosquitto.start()
    watcher = Collector(mosquitto, [ALERT])
    sink = new_sink(sinks, mosquitto, state_dir)
    assert sink.outbox_depth == len(sent)
    watcher.wait_count(ALERT, len(sent))
    wait_until(lambda: sink.outbox_depth == 0, what="outbox drained")
    time.sleep(0.3)
    assert alert_ids(watcher) == sent
    watcher.close()


@pytest.mark.timeout(90)
def test_full_outbox_drops_oldest_and_reports_it(mosquitto: Mosquitto, tmp_path: Path,
                                                 sinks: list[MqttSink]) -> None:
    watcher = Collector(mosquitto, [ALERT, f"{PREFIX}/telemetry"])
    sink = new_sink(sinks, mosquitto, tmp_path / "state", outbox_max_alerts=10, start=False)
    events = [make_alert(i) for i in range(14)]
    for event in events:
        sink.handle(event)
    assert sink.outbox_depth == 10
    assert sink.stats()["outbox_dropped_total"] == 4
    assert not sink.publish_telemetry({}), "nothing is published before start()"
    sink.start()
    watcher.wait_count(ALERT, 10)
    wait_until(lambda: sink.outbox_depth == 0, what="outbox drained")
    assert alert_ids(watcher) == [e.id for e in events[4:]]
    assert sink.publish_telemetry({})
    telemetry = watcher.wait_count(f"{PREFIX}/telemetry", 1)[-1].json()
    assert telemetry["mqtt"]["outbox_dropped_total"] == 4
    assert telemetry["mqtt"]["telemetry_skipped"] == 1
    watcher.close()


# --------------------------------------------------------------------- security


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA with a server (localhost) and a client certificate, and a second, unrelated CA."""
    directory = tmp_path / "pki"
    ca = make_ca(directory, "ca")
    other = make_ca(directory, "other-ca")
    server_cert, server_key = issue_cert(ca, directory, "server", server=True)
    other_cert, other_key = issue_cert(other, directory, "server-other", server=True)
    client_cert, client_key = issue_cert(ca, directory, "client", server=False)
    bundle = directory / "both.crt"
    bundle.write_text(ca.cert.read_text() + other.cert.read_text())
    return {"ca": ca.cert, "other_ca": other.cert, "server_cert": server_cert, "server_key": server_key,
            "other_server_cert": other_cert, "other_server_key": other_key, "client_cert": client_cert,
            "client_key": client_key, "both": bundle}


PASSWORD = "Edge-S3cret-pw!"
WATCHER = ("watcher", "watch-pw")


@pytest.mark.timeout(90)
def test_tls_with_client_cert_and_password_delivers(tmp_path: Path, pki: dict[str, Path],
                                                    sinks: list[MqttSink],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    passwd = make_passwd(tmp_path / "passwd", {"edge": PASSWORD, WATCHER[0]: WATCHER[1]})
    broker = Mosquitto(tmp_path / "broker", password_file=passwd,
                       tls=Tls(pki["ca"], pki["server_cert"], pki["server_key"], require_client_cert=True))
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    try:
        tls_files = (pki["ca"], pki["client_cert"], pki["client_key"])
        watcher = Collector(broker, [ALERT], username=WATCHER[0], password=WATCHER[1], tls=tls_files)
        sink = new_sink(sinks, broker, tmp_path / "state", username="edge", password_file=str(secret),
                        tls=TlsConfig(ca=str(pki["ca"]), cert=str(pki["client_cert"]), key=str(pki["client_key"])))
        event = make_alert(0)
        sink.handle(event)
        watcher.wait_count(ALERT, 1)
        assert alert_ids(watcher) == [event.id]
        sink.close()
        watcher.close()
        assert PASSWORD not in caplog.text
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_wrong_password_is_logged_once_retried_and_loses_nothing(tmp_path: Path, sinks: list[MqttSink],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    passwd = make_passwd(tmp_path / "passwd", {"edge": "the-right-one", WATCHER[0]: WATCHER[1]})
    broker = Mosquitto(tmp_path / "broker", password_file=passwd)
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD)
    try:
        watcher = Collector(broker, [ALERT], client_id="watcher-auth", persistent=True,
                            username=WATCHER[0], password=WATCHER[1])
        sink = new_sink(sinks, broker, tmp_path / "state", username="edge", password_file=str(secret))
        events = [make_alert(i) for i in range(3)]
        for event in events:
            sink.handle(event)
        wait_until(lambda: sink.stats()["connect_failures"] >= 3, 60, what="three refused attempts")
        refusals = [r for r in caplog.records if r.levelno >= logging.ERROR and "refused" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert "not authorized" in refusals[0].getMessage().lower()
        assert "mqtt.password_file" in refusals[0].getMessage()
        assert sink.outbox_depth == 3 and not sink.is_connected

        make_passwd(passwd, {"edge": PASSWORD, WATCHER[0]: WATCHER[1]})
        broker.restart()
        watcher.wait_count(ALERT, 3, 60)
        wait_until(lambda: sink.outbox_depth == 0, what="outbox drained")
        assert alert_ids(watcher) == [e.id for e in events]
        sink.close()
        watcher.close()
        assert PASSWORD not in caplog.text
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_untrusted_broker_certificate_is_logged_once_retried_and_loses_nothing(
        tmp_path: Path, pki: dict[str, Path], sinks: list[MqttSink], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    broker = Mosquitto(tmp_path / "broker", tls=Tls(pki["other_ca"], pki["other_server_cert"],
                                                     pki["other_server_key"], require_client_cert=False))
    broker.start()
    try:
        watcher = Collector(broker, [ALERT], client_id="watcher-tls", persistent=True,
                            tls=(pki["both"], pki["client_cert"], pki["client_key"]))
        sink = new_sink(sinks, broker, tmp_path / "state", tls=TlsConfig(ca=str(pki["ca"])))
        events = [make_alert(i) for i in range(2)]
        for event in events:
            sink.handle(event)
        wait_until(lambda: sink.stats()["connect_failures"] >= 3, 60, what="three failed handshakes")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert "certificate verification failed" in errors[0] and "mqtt.tls.ca" in errors[0]
        assert sink.outbox_depth == 2

        broker.tls = Tls(pki["ca"], pki["server_cert"], pki["server_key"], require_client_cert=False)
        broker.restart()
        watcher.wait_count(ALERT, 2, 60)
        assert alert_ids(watcher) == [e.id for e in events]
        watcher.close()
    finally:
        broker.stop()


def test_setup_errors_name_the_setting(tmp_path: Path) -> None:
    missing = MqttConfig(enabled=True, tls=TlsConfig(ca=str(tmp_path / "nope.crt")))
    with pytest.raises(MqttSetupError, match=r"mqtt\.tls\.ca"):
        MqttSink(missing, MACHINE, tmp_path, "m", 1.0)
    no_user = MqttConfig(enabled=True, password_file=str(tmp_path / "pw"))
    with pytest.raises(MqttSetupError, match="username"):
        MqttSink(no_user, MACHINE, tmp_path, "m", 1.0)
    no_file = MqttConfig(enabled=True, username="u", password_file=str(tmp_path / "pw"))
    with pytest.raises(MqttSetupError, match="does not exist"):
        MqttSink(no_file, MACHINE, tmp_path, "m", 1.0)
    with pytest.raises(MqttSetupError, match="wildcard"):
        MqttSink(MqttConfig(enabled=True, prefix="a/+/b"), MACHINE, tmp_path, "m", 1.0)


def test_secret_from_file_and_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("hunter2-secret\n")
    assert read_secret(str(tmp_path / "pw")) == "hunter2-secret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_secret("credential:mqtt") == "from-systemd"
    with pytest.raises(SecretError, match="does not exist"):
        read_secret("credential:other")
    with pytest.raises(SecretError, match="plain file name"):
        read_secret("credential:../pw")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        read_secret(str(tmp_path / "empty"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY") as info:
        read_secret("credential:mqtt")
    assert "from-systemd" not in str(info.value)


# -------------------------------------------------------------------- threshold


def test_parse_threshold_bounds() -> None:
    assert parse_threshold(b" 0.75\n") == (0.75, "")
    for bad in (b"abc", b"nan", b"inf", b"-1", b"0", b"1e12", b"\xff\xfe"):
        value, problem = parse_threshold(bad)
        assert value is None and problem, bad


@pytest.mark.timeout(90)
def test_threshold_set_rejects_garbage_applies_valid_and_persists(mosquitto: Mosquitto, tmp_path: Path,
                                                                  sinks: list[MqttSink]) -> None:
    state_dir = tmp_path / "state"
    applied: list[float] = []
    store = ThresholdStore(state_dir, MACHINE.id)

    def on_set(value: float) -> None:
        """The owner's side (the daemon's Machine): refuse, or save, apply and publish."""
        if value == 42.0:
            raise ValueError("above the model's maximum score")
        store.save(value, source="mqtt")
        applied.append(value)
        sink.show_threshold(value)

    watcher = Collector(mosquitto, [f"{PREFIX}/threshold/#"])
    sink = new_sink(sinks, mosquitto, state_dir, on_threshold_set=on_set)
    watcher.wait_count(f"{PREFIX}/threshold/state", 1)
    garbage = [b"abc", b"nan", b"-1", b"0", b"1e12", b"42"]
    for payload in garbage:
        watcher.client.publish(f"{PREFIX}/threshold/set", payload, qos=1)
    errors = watcher.wait_count(f"{PREFIX}/threshold/error", len(garbage))
    reports = [e.json() for e in errors]
    assert [r["payload"] for r in reports] == [p.decode() for p in garbage]
    assert "not a number" in reports[0]["error"] and "finite" in reports[1]["error"]
    assert "above the model's maximum" in reports[-1]["error"]
    assert applied == [] and ThresholdStore(state_dir, MACHINE.id).load() is None

    watcher.client.publish(f"{PREFIX}/threshold/set", b"0.75", qos=1)
    wait_until(lambda: applied == [0.75], what="callback with 0.75")
    wait_until(lambda: watcher.last(f"{PREFIX}/threshold/state").payload == b"0.75", what="threshold/state")
    assert sink.threshold == 0.75
    assert ThresholdStore(state_dir, MACHINE.id).load() == 0.75
    sink.close()

    # The daemon reads the store at start and hands the value to the new sink.
    restored = ThresholdStore(state_dir, MACHINE.id).load()
    assert restored == 0.75
    again = new_sink(sinks, mosquitto, state_dir, threshold=restored)
    wait_until(lambda: again.is_connected, what="second sink connected")
    assert read_retained(mosquitto, f"{PREFIX}/threshold/state") == b"0.75"
    watcher.close()



@pytest.mark.timeout(90)
def test_threshold_set_is_only_a_request_the_sink_neither_applies_nor_saves(mosquitto: Mosquitto, tmp_path: Path,
                                                                          sinks: list[MqttSink]) -> None:
    """Without an owner to apply it, a valid threshold/set is refused; with one, what it shows is what goes out."""
    state_dir = tmp_path / "state"
    watcher = Collector(mosquitto, [f"{PREFIX}/threshold/#"])

    def request_until(payload: bytes, answered: Callable[[], Any], what: str) -> None:
        """Publish ``payload`` on threshold/set (again each second: the sink subscribes just after it connects)."""
        deadline = time.monotonic() + 30
        while True:
            watcher.client.publish(f"{PREFIX}/threshold/set", payload, qos=1).wait_for_publish(5)
            try:
                wait_until(answered, 1.0, what=what)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    sink = new_sink(sinks, mosquitto, state_dir, threshold=1.5)
    watcher.wait_count(f"{PREFIX}/threshold/state", 1)
    request_until(b"0.75", lambda: watcher.on(f"{PREFIX}/threshold/error"), "threshold/error")
    errors = [m.json() for m in watcher.on(f"{PREFIX}/threshold/error")]
    assert all("no threshold at run time" in e["error"] and e["threshold"] == 1.5 for e in errors), errors
    assert sink.threshold == 1.5 and ThresholdStore(state_dir, MACHINE.id).load() is None
    assert {m.payload for m in watcher.on(f"{PREFIX}/threshold/state")} == {b"1.5"}
    sink.close()

    # an owner that applies something else than asked (e.g. a reload won the race): its value goes out
    owner = new_sink(sinks, mosquitto, state_dir, threshold=1.5, on_threshold_set=lambda v: owner.show_threshold(2.0))
    wait_until(lambda: owner.is_connected, what="second sink connected")
    request_until(b"0.5", lambda: watcher.last(f"{PREFIX}/threshold/state").payload == b"2.0", "the owner's value")
    assert b"0.5" not in [m.payload for m in watcher.on(f"{PREFIX}/threshold/state")]
    assert owner.threshold == 2.0 and ThresholdStore(state_dir, MACHINE.id).load() is None
    watcher.close()

def test_threshold_store_is_atomic_and_tolerates_corruption(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    store = ThresholdStore(tmp_path / "state", "fan-1")
    assert store.load() is None
    store.save(0.5)
    store.save(0.25)
    assert store.load() == 0.25
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["threshold-fan-1.json"]
    assert json.loads(store.path.read_text())["threshold"] == 0.25
    with pytest.raises(ValueError):
        store.save(math.inf)
    store.path.write_text('{"threshold": "oops"')
    assert store.load() is None
    assert "ignoring saved threshold" in caplog.text
    store.path.write_text('{"threshold": -3}')
    assert store.load() is None
