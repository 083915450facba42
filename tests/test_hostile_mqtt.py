"""Hostile brokers and payloads: every failed connection says why (log + health event); no payload hurts the sink.

Real mosquitto brokers on free ports (plain, TLS, one that refuses client ids), a
TCP port that accepts and never answers, two sinks fighting over one client id,
and hypothesis-generated payloads on every topic the sink subscribes to.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_monitor.config import MachineConfig, MqttConfig, TlsConfig
from edge_monitor.events import AlertEvent, HealthEvent
from edge_monitor.sinks.mqtt import MqttSetupError, MqttSink, parse_threshold
from edge_monitor.threshold_store import THRESHOLD_MAX
from tests.helpers.broker import Collector, Mosquitto, Tls, issue_cert, make_ca, mosquitto, wait_until  # noqa: F401

MACHINE = MachineConfig(id="fan-9", site="hall", type="fan")
PREFIX = "edge-monitor/hall/fan-9"


class HealthLog:
    """Collects the health events a sink reports."""

    def __init__(self) -> None:
        self.events: list[HealthEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: HealthEvent) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        """Kinds in order."""
        with self._lock:
            return [e.kind for e in self.events]

    def errors(self) -> list[str]:
        """Details of the mqtt_error events."""
        with self._lock:
            return [e.detail for e in self.events if e.kind == "mqtt_error"]


def new_sink(made: list[MqttSink], host: str, port: int, state_dir: Path, health: HealthLog, *,
             machine: MachineConfig = MACHINE, **cfg: Any) -> MqttSink:
    """A started sink with fast reconnects that reports health events to ``health``."""
    config = MqttConfig(enabled=True, host=host, port=port, keepalive_seconds=cfg.pop("keepalive_seconds", 5),
                        connect_timeout_seconds=cfg.pop("connect_timeout_seconds", 3), **cfg)
    sink = MqttSink(config, machine, state_dir, "fan-ae", 1.5, reconnect_min_seconds=1, reconnect_max_seconds=2,
                    on_health=health)
    made.append(sink)
    sink.start()
    return sink


def alert(n: int) -> AlertEvent:
    """A distinct alert start."""
    return AlertEvent(id=str(uuid.uuid4()), type="start", machine=MACHINE.id, score=2.0 + n, threshold=1.5,
                      started_at_s=time.time(), model="fan-ae", episode=f"ep-{n}")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA and a localhost server certificate."""
    ca = make_ca(tmp_path / "pki", "ca")
    cert, key = issue_cert(ca, tmp_path / "pki", "server", server=True)
    return {"ca": ca.cert, "cert": cert, "key": key}


def _error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("edge_monitor")]


# ---------------------------------------------------------------- connection failures

@pytest.mark.timeout(60)
def test_refused_connection_is_logged_and_reported(tmp_path: Path, sinks: list[MqttSink],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    health = HealthLog()
    sink = new_sink(sinks, "127.0.0.1", port, tmp_path / "state", health)
    sink.handle(alert(0))
    wait_until(health.errors, 30, what="an mqtt_error health event")
    assert "connection refused" in health.errors()[0]
    assert any("connection refused" in m for m in _error_logs(caplog))
    assert sink.outbox_depth == 1


@pytest.mark.timeout(90)
def test_plain_client_on_a_tls_port_says_so(tmp_path: Path, pki: dict[str, Path], sinks: list[MqttSink],
                                            caplog: pytest.LogCaptureFixture) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=Tls(pki["ca"], pki["cert"], pki["key"], require_client_cert=False))
    broker.start()
    try:
        health = HealthLog()
        new_sink(sinks, broker.host, broker.port, tmp_path / "state", health)
        wait_until(health.errors, 30, what="an mqtt_error health event")
        assert "closed the connection before accepting it" in health.errors()[0]
        assert "TLS listener" in health.errors()[0]
        wait_until(lambda: len([m for m in _error_logs(caplog) if "TLS listener" in m]) >= 1, 10, what="a log line")
        time.sleep(3)  # several more attempts: still one log line for the same cause
        assert len([m for m in _error_logs(caplog) if "TLS listener" in m]) == 1
    finally:
        broker.stop()


@pytest.mark.timeout(90)
def test_tls_client_on_a_plain_port_says_so(tmp_path: Path, pki: dict[str, Path], sinks: list[MqttSink],
                                            mosquitto: Mosquitto) -> None:
    health = HealthLog()
    new_sink(sinks, mosquitto.host, mosquitto.port, tmp_path / "state", health, tls=TlsConfig(ca=str(pki["ca"])))
    wait_until(health.errors, 30, what="an mqtt_error health event")
    assert "TLS" in health.errors()[0], health.errors()


@pytest.mark.timeout(90)
def test_port_that_accepts_tcp_and_never_answers_is_reported_within_the_connect_timeout(
        tmp_path: Path, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # and never answer
            except OSError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    try:
        health = HealthLog()
        # keepalive far longer than the connect timeout: only the CONNACK timer can report this
        sink = new_sink(sinks, "127.0.0.1", listener.getsockname()[1], tmp_path / "state", health,
                        keepalive_seconds=300, connect_timeout_seconds=2)
        wait_until(health.errors, 60, what="an mqtt_error health event")
        assert "no CONNACK within 2 s" in health.errors()[0]
        wait_until(lambda: len(accepted) >= 2, 30, what="a second attempt after the timeout")
        assert sink.stats()["connect_failures"] >= 1
        assert any("no CONNACK" in m for m in _error_logs(caplog))
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


class PrefixBroker(Mosquitto):
    """A mosquitto that only accepts client ids starting with ``allowed-``."""

    def config_text(self) -> str:
        """The usual config plus ``clientid_prefixes``."""
        return super().config_text() + "clientid_prefixes allowed-\n"


@pytest.mark.timeout(60)
def test_refused_client_id_is_logged_and_reported(tmp_path: Path, sinks: list[MqttSink]) -> None:
    broker = PrefixBroker(tmp_path / "broker")
    broker.start()
    try:
        health = HealthLog()
        new_sink(sinks, broker.host, broker.port, tmp_path / "state", health)
        wait_until(health.errors, 30, what="an mqtt_error health event")
        assert "refused" in health.errors()[0] and "client id" in health.errors()[0], health.errors()
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_two_monitors_with_one_client_id_say_why_they_keep_losing_the_broker(
        tmp_path: Path, mosquitto: Mosquitto, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture) -> None:
    first, second = HealthLog(), HealthLog()
    new_sink(sinks, mosquitto.host, mosquitto.port, tmp_path / "a", first)
    new_sink(sinks, mosquitto.host, mosquitto.port, tmp_path / "b", second)
    wait_until(lambda: first.errors() and second.errors(), 90, what="both sinks to report the take-over")
    for log in (first, second):
        assert "same client id 'edge-monitor-hall-fan-9'" in log.errors()[0]
    takeovers = [m for m in _error_logs(caplog) if "same client id" in m]
    assert 2 <= len(takeovers) <= 4, takeovers  # once per sink (and cause), not once per kick
    sinks[1].close(timeout_s=2)  # one of them goes away: the other settles and says so
    wait_until(lambda: "mqtt_ok" in first.kinds(), 60, what="mqtt_ok once the connection holds")


def test_wildcard_discovery_prefix_is_refused_before_connecting(tmp_path: Path) -> None:
    from edge_monitor.config import HomeAssistantConfig
    for bad in ("home/#", "+", "a//b", "ha\x00"):
        cfg = MqttConfig(enabled=True, homeassistant=HomeAssistantConfig(discovery_prefix=bad))
        with pytest.raises(MqttSetupError, match="discovery_prefix"):
            MqttSink(cfg, MACHINE, tmp_path, "m", 1.0)


def test_world_readable_password_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o666)
    sink = MqttSink(MqttConfig(enabled=True, username="u", password_file=str(secret)), MACHINE, tmp_path, "m", 1.0)
    sink.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(secret) in r.getMessage()]
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and "read or written" in warnings[0]
    assert "s3cret-value" not in caplog.text
    caplog.clear()
    secret.chmod(0o600)
    MqttSink(MqttConfig(enabled=True, username="u", password_file=str(secret)), MACHINE, tmp_path, "m", 1.0).close()
    assert str(secret) not in caplog.text


# ---------------------------------------------------------------- payload fuzzing

@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(payload=st.one_of(st.binary(max_size=64), st.text(max_size=32).map(str.encode),
                         st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode())))
def test_fuzz_parse_threshold_never_raises_and_accepts_only_sane_values(payload: bytes) -> None:
    value, problem = parse_threshold(payload)
    if value is None:
        assert problem and isinstance(problem, str)
    else:
        assert problem == "" and math.isfinite(value) and 0 < value <= THRESHOLD_MAX


_PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.sampled_from([b"nan", b"inf", b"-inf", b"1e999", b"0", b"-0", b"1e-320", b"0x10", b"1_000", b" 2.5 ",
                     b"{\"threshold\": 2}", b"\x00", b"\xff\xfe", b"9" * 5000, b"online", b"offline", b"ONLINE"]),
    st.floats(min_value=1e-6, max_value=1e6).map(lambda f: repr(f).encode()),
)


@pytest.mark.timeout(300)
def test_fuzz_every_subscribed_topic_with_a_live_sink(tmp_path: Path, mosquitto: Mosquitto,
                                                      sinks: list[MqttSink]) -> None:
    applied: list[float] = []
    health = HealthLog()
    config = MqttConfig(enabled=True, host=mosquitto.host, port=mosquitto.port, keepalive_seconds=5)

    def apply(value: float) -> None:  # the owner's side: apply and publish what is in force
        applied.append(value)
        sink.show_threshold(value)

    sink = MqttSink(config, MACHINE, tmp_path / "state", "fan-ae", 1.5, on_threshold_set=apply,
                    reconnect_max_seconds=2, on_health=health)
    sinks.append(sink)
    watcher = Collector(mosquitto, [f"{PREFIX}/threshold/#", f"{PREFIX}/alert"])
    sink.start()
    wait_until(lambda: sink.is_connected, what="sink connected")
    answers = {"n": 0}

    def responses() -> int:
        return len(watcher.on(f"{PREFIX}/threshold/state")) + len(watcher.on(f"{PREFIX}/threshold/error"))

    wait_until(lambda: watcher.on(f"{PREFIX}/threshold/state"), what="the first threshold/state")
    answers["n"] = responses()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=_PAYLOADS, topic=st.sampled_from(["threshold/set", "homeassistant/status"]))
    def one(payload: bytes, topic: str) -> None:
        full = f"{PREFIX}/threshold/set" if topic == "threshold/set" else "homeassistant/status"
        watcher.client.publish(full, payload, qos=1).wait_for_publish(10)
        if topic == "threshold/set":
            # every non-empty threshold/set gets exactly one answer: the new state or an error
            wait_until(lambda: responses() > answers["n"], 15, what=f"an answer to {payload[:20]!r}")
            answers["n"] += 1
            value, _ = parse_threshold(payload)
            last_state = watcher.last(f"{PREFIX}/threshold/state")
            if value is not None:
                assert applied[-1] == value and float(last_state.payload) == value
        assert sink.is_connected

    one()
    # the sink is unharmed: alerts still flow, and nothing was reported as a connection problem
    event = alert(1)
    sink.handle(event)
    wait_until(lambda: any(m.json()["id"] == event.id for m in watcher.on(f"{PREFIX}/alert")), 30,
               what="an alert after the fuzzing")
    assert health.errors() == []
    watcher.close()
