"""Publish one machine's events to an MQTT broker, losing no alert.

Topics: see ``mqtt_topics`` (``<prefix>`` defaults to ``edge-monitor/<site>/<machine>``).

Delivery of alerts: ``handle`` commits each alert to the SQLite outbox and
returns; a small pump hands pending alerts to paho, oldest first, with at
most ``inflight_window`` (default 1) unacknowledged at a time, and deletes each from the
outbox on its PUBACK. paho keeps unacknowledged QoS 1 messages across a
reconnect and resends them (DUP) right after CONNACK, so after a lost
connection the pump publishes nothing new until every alert that was in
flight has been acknowledged: the broker receives alerts in outbox order.
After a restart (or ``kill -9``) the new process publishes the outbox from
the oldest entry. An alert whose PUBACK was lost in a crash is sent again:
that is QoS 1's at-least-once; subscribers may de-duplicate by ``id``.

Connection problems are explained by ``mqtt_connection.ConnectionWatch``; the
subscribed requests (``threshold/set``, ``clip/get``) are answered by
``mqtt_requests.Requests``; topic names are in ``mqtt_topics``; password, TLS and
the paho client in ``mqtt_setup``. This module is the sink itself: events in,
the outbox pump, and paho's callbacks.

Threads: ``handle`` runs on the pipeline thread, callbacks on paho's network
thread. Neither ever waits for the other: the pump runs on whichever thread
gets its lock first, and a thread that finds it busy leaves the work to the
holder (see ``_kick``).
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edge_monitor.config import MachineConfig, MqttConfig, topic_problem
from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.sinks import homeassistant
from edge_monitor.sinks.mqtt_connection import ConnectionWatch
from edge_monitor.sinks.mqtt_requests import Requests, ThresholdRequestHandler, parse_threshold
from edge_monitor.sinks.mqtt_setup import (
    MqttSetupError,
    configure_tls,
    new_client,
    on_paho_log,
    read_password,
    setup_problems,
)
from edge_monitor.sinks.mqtt_topics import Topics, default_prefix, json_default, json_safe
from edge_monitor.sinks.outbox import Outbox

__all__ = ["INFLIGHT_WINDOW", "MqttSetupError", "MqttSink", "ThresholdRequestHandler", "Topics", "default_prefix",
           "parse_threshold", "read_password", "setup_problems"]

_configure_tls = configure_tls  # the name forget.py imports

_LOGGER = logging.getLogger(__name__)

INFLIGHT_WINDOW = 1
"""Alerts handed to paho and not yet acknowledged, at most.

One at a time: a lost connection can then duplicate at most one alert (the
one whose PUBACK was lost, which QoS 1 allows), and order is trivially kept.
Replaying a backlog costs one round trip per alert, which is ample for alerts.
"""


class MqttSink:
    """The MQTT sink of one machine (see the module docstring for topics and delivery)."""

    def __init__(self, cfg: MqttConfig, machine: MachineConfig, state_dir: Path, model_name: str,
                 threshold: float, on_threshold_set: Optional[ThresholdRequestHandler] = None,
                 client_factory: Optional[Callable[[str], paho.Client]] = None, *,
                 reconnect_min_seconds: float = 1.0, reconnect_max_seconds: float = 30.0,
                 inflight_window: int = INFLIGHT_WINDOW,
                 on_health: Optional[Callable[[HealthEvent], None]] = None,
                 clips_dir: Optional[Path] = None) -> None:
        """Prepare the client and open the outbox; nothing touches the network before ``start()``.

        ``on_threshold_set(value)`` receives every well-formed ``threshold/set`` value: a
        request. The sink neither applies nor saves it; the owner (the daemon's Machine)
        validates, saves and applies it and publishes the threshold in force through
        ``show_threshold``. It raises to refuse the value (the reason goes out on
        ``threshold/error``) or returns a warning text. Without one every request is refused.
        ``on_health`` receives the sink's ``mqtt_error``/``mqtt_ok`` events.
        ``clips_dir`` is where ``clip/get`` requests are served from (None: they are refused).

        Raises MqttSetupError for settings that can never work (password
        file, TLS files, prefix) and OutboxError if the outbox is in use.
        """
        self._cfg = cfg
        self._machine = machine
        self._model_name = model_name
        self._threshold = float(threshold)
        self._window = max(1, int(inflight_window))
        self.topics = Topics(_checked_prefix(cfg, machine))
        self.client_id = cfg.client_id or f"edge-monitor-{machine.site}-{machine.id}"
        reconnect_max = max(1, round(reconnect_max_seconds))
        self._client = self._make_client(client_factory or new_client, max(1, round(reconnect_min_seconds)),
                                         reconnect_max)
        self._watch = ConnectionWatch(cfg, self._client, self.client_id, machine.id,
                                      reconnect_max_seconds=reconnect_max, pending_alerts=lambda: self._outbox.depth,
                                      on_health=on_health)
        self._requests = Requests(self._client, self.topics, machine.id, on_threshold_set, clips_dir,
                                  lambda: self._threshold)

        outbox_path = Path(cfg.outbox_path) if cfg.outbox_path else Path(state_dir) / f"outbox-{machine.id}.sqlite"
        self._outbox = Outbox(outbox_path, cfg.outbox_max_alerts)

        # Pump state, guarded by _pump_lock (see _kick).
        self._pump_lock = threading.Lock()
        self._dirty = False
        self._acks: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._last_sent_seq = 0
        self._hold = False  # set on disconnect: wait for paho's resends before publishing newer alerts

        self._state_lock = threading.Lock()  # orders retained state publishes across threads
        self._state: Optional[str] = None
        self._last_score: Optional[float] = None
        self._score_sent_at_s: Optional[float] = None  # event time (s) of the last score message
        self._score_text: Optional[str] = None
        self._health_counts: collections.Counter[str] = collections.Counter()
        self._last_health: Optional[dict[str, Any]] = None

        self._started = False
        self._closing = False
        self._closed = False
        self._alerts_published = 0
        self._telemetry_skipped = 0

    def _make_client(self, factory: Callable[[str], paho.Client], reconnect_min: int,
                     reconnect_max: int) -> paho.Client:
        """The paho client: will, credentials, TLS, back-off and our callbacks. MqttSetupError names a bad setting."""
        cfg = self._cfg
        password = read_password(cfg)
        client = factory(self.client_id)
        client.on_log = on_paho_log
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        del password
        if cfg.tls is not None:
            configure_tls(client, cfg.tls)
        client.reconnect_delay_set(min_delay=reconnect_min, max_delay=reconnect_max)
        client.connect_timeout = float(cfg.connect_timeout_seconds)  # TCP connect and TLS handshake
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Begin connecting in the background. A broker that is down is retried forever, never an error."""
        if self._started:
            return
        self._started = True
        _LOGGER.info("MQTT: connecting to %s:%d as %s (prefix %s, %d alert(s) pending in the outbox)",
                     self._cfg.host, self._cfg.port, self.client_id, self.topics.prefix, self._outbox.depth)
        self._client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_seconds)
        self._client.loop_start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Let in-flight alerts be acknowledged, publish ``offline``, disconnect. Safe to call twice.

        Alerts still unacknowledged stay in the outbox for the next start.
        """
        if self._closed:
            return
        deadline_s = time.monotonic() + timeout_s
        if self._started and self._client.is_connected():
            self._kick()  # e.g. the end of an alert closed by the shutdown: deliver it now if the broker is there
            while (self._inflight or self._outbox.depth) and time.monotonic() < deadline_s \
                    and self._client.is_connected():
                time.sleep(0.02)
        self._closing = True
        self._watch.closing = True
        self._watch.cancel_timers()
        if self._started and self._client.is_connected():
            try:
                with self._state_lock:
                    info = self._client.publish(self.topics.status, "offline", qos=1, retain=True)
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    info.wait_for_publish(timeout=max(0.0, deadline_s - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                _LOGGER.warning("MQTT: could not publish offline status on close: %s", exc)
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
        self._closed = True
        with self._pump_lock:
            self._outbox.close()
        _LOGGER.info("MQTT: closed (%d alert(s) left in the outbox)", self._outbox.depth)

    @property
    def is_connected(self) -> bool:
        """True while connected to the broker."""
        return self._client.is_connected()

    @property
    def outbox_depth(self) -> int:
        """Alerts committed but not yet acknowledged by the broker."""
        return self._outbox.depth

    @property
    def threshold(self) -> float:
        """The threshold last shown on ``threshold/state`` (constructor or ``show_threshold``)."""
        return self._threshold

    def stats(self) -> dict[str, Any]:
        """This sink's counters (they also go into every telemetry message under ``mqtt``)."""
        return {
            "connected": self._client.is_connected(),
            "outbox_depth": self._outbox.depth,
            "outbox_dropped_total": self._outbox.dropped_total,
            "alerts_published": self._alerts_published,
            "connects": self._watch.connects,
            "connect_failures": self._watch.connect_failures,
            "last_error": self._watch.last_failure,
            "telemetry_skipped": self._telemetry_skipped,
        }

    # ------------------------------------------------------------------- events

    def handle(self, event: Event) -> None:
        """Deliver or durably queue one event. Never waits for the network."""
        if isinstance(event, AlertEvent):
            self._handle_alert(event)
        elif isinstance(event, StateEvent):
            with self._state_lock:
                self._state = event.state
                if self._client.is_connected():
                    self._client.publish(self.topics.state, event.state, qos=0, retain=True)
        elif isinstance(event, HealthEvent):
            self._health_counts[event.kind] += 1
            self._last_health = event.to_payload()
            if self._client.is_connected() and not self._closed:
                self._client.publish(self.topics.health, json.dumps(json_safe(self._last_health)), qos=0,
                                     retain=False)
        elif isinstance(event, ScoreEvent):
            self._last_score = float(event.score)
            self._publish_score(event)
        elif isinstance(event, ClipEvent):
            if not self._closed:  # QoS 1: paho keeps it across a lost connection, not across a restart
                self._client.publish(self.topics.clip, json.dumps(event.to_payload(), separators=(",", ":")),
                                     qos=1, retain=False)

    def _publish_score(self, event: ScoreEvent) -> None:
        """Send the score on ``<prefix>/score`` if ``score_seconds`` have passed and the value changed."""
        score = float(event.score)
        if not math.isfinite(score) or self._closed or not self._client.is_connected():
            return
        if self._score_sent_at_s is not None and event.at_s - self._score_sent_at_s < self._cfg.score_seconds:
            return
        text = format(score, ".6g")
        if text == self._score_text:
            return
        self._score_text = text
        self._score_sent_at_s = event.at_s
        self._client.publish(self.topics.score, text, qos=0, retain=False)

    def _handle_alert(self, event: AlertEvent) -> None:
        payload = json.dumps(event.to_payload(), separators=(",", ":"))
        if self._closed:
            _LOGGER.error("MQTT sink is closed; alert %s (%s) was not queued", event.id, event.type)
            return
        try:
            self._outbox.add(event.id, payload)
        except Exception as exc:  # noqa: BLE001 - a full disk must not lose the alert outright
            _LOGGER.error("MQTT: cannot write alert %s to the outbox (%s); publishing it without a durable copy",
                          event.id, exc)
            self._client.publish(self.topics.alert, payload, qos=1, retain=False)
            return
        self._kick()

    def publish_telemetry(self, telemetry: dict[str, Any]) -> bool:
        """Publish the daemon's telemetry plus this sink's counters. False (and counted) when offline."""
        body = dict(telemetry)
        body.setdefault(homeassistant.SCORE_KEY, self._last_score)
        body.setdefault("health", {"counts": dict(self._health_counts), "last": self._last_health})
        body["mqtt"] = self.stats()
        if not self._client.is_connected():
            self._telemetry_skipped += 1
            return False
        text = json.dumps(json_safe(body), separators=(",", ":"), default=json_default, allow_nan=False)
        info = self._client.publish(self.topics.telemetry, text, qos=0, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    # --------------------------------------------------------------------- pump

    def _kick(self) -> None:
        """Run the pump now, or leave it to the thread already running it."""
        self._dirty = True
        while True:
            if not self._pump_lock.acquire(blocking=False):
                return  # the holder re-checks _dirty/_acks after releasing
            try:
                self._dirty = False
                self._apply_acks()
                self._publish_pending()
            except Exception:  # noqa: BLE001 - never kill paho's thread or the pipeline
                _LOGGER.exception("MQTT: alert pump failed; will retry on the next event")
            finally:
                self._pump_lock.release()
            if not self._dirty and not self._acks:
                return

    def _apply_acks(self) -> None:
        """Delete acknowledged alerts from the outbox (pump lock held)."""
        while self._acks:
            mid = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # status, state, discovery or telemetry: not an alert
            if not self._closed:
                self._outbox.remove(seq)
            self._alerts_published += 1
        if self._hold and not self._inflight:
            self._hold = False

    def _publish_pending(self) -> None:
        """Hand the oldest pending alerts to paho, up to the window (pump lock held)."""
        if self._closing or self._hold or not self._client.is_connected():
            return
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        for entry in self._outbox.pending(after_seq=self._last_sent_seq, limit=room):
            info = self._client.publish(self.topics.alert, entry.payload, qos=1, retain=False)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                _LOGGER.warning("MQTT: paho refused alert %s (%s); it stays in the outbox", entry.id, info.rc)
                return
            # NO_CONN still queues a QoS 1 message inside paho; it goes out after the reconnect.
            self._inflight[info.mid] = entry.seq
            self._last_sent_seq = entry.seq

    # ---------------------------------------------------------- paho callbacks

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        try:
            self._handle_connect(client, reason_code)
        except Exception as exc:  # noqa: BLE001 - an exception here would end paho's network thread
            _LOGGER.exception("MQTT: setting up the connection failed")
            self._watch.emit_health("mqtt_error", f"setting up the connection failed: {exc}")

    def _handle_connect(self, client: paho.Client, reason_code: Any) -> None:
        if reason_code.is_failure:
            self._watch.refused(reason_code)
            return
        self._watch.connected()
        with self._state_lock:
            client.publish(self.topics.status, "online", qos=0, retain=True)
            if self._state is not None:
                client.publish(self.topics.state, self._state, qos=0, retain=True)
            client.publish(self.topics.threshold_state, repr(self._threshold), qos=0, retain=True)
        subscriptions = [(self.topics.threshold_set, 1), (self.topics.clip_get, 1)]
        if self._cfg.homeassistant.enabled:
            subscriptions.append((f"{self._cfg.homeassistant.discovery_prefix}/status", 1))
            self._announce_discovery()
        else:  # discovery turned off: remove this machine's entities that an earlier run announced
            for topic in homeassistant.removal_topics(self._cfg.homeassistant, self._machine):
                client.publish(topic, b"", qos=0, retain=True)
        client.subscribe(subscriptions)
        self._kick()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._watch.connect_failed()

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._watch.socket_opened()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        # paho resends unacknowledged alerts first after the next CONNACK; publish nothing newer until then.
        self._hold = True
        self._watch.disconnected(reason_code)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._acks.append(mid)
        self._kick()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.threshold_set:
                self._requests.threshold_set(bytes(message.payload))
            elif message.topic == self.topics.clip_get:
                self._requests.clip_get(bytes(message.payload))
            elif (self._cfg.homeassistant.enabled
                  and message.topic == f"{self._cfg.homeassistant.discovery_prefix}/status"
                  and message.payload.strip() == b"online"):
                _LOGGER.info("MQTT: Home Assistant came online; announcing discovery again")
                self._announce_discovery()
        except Exception:  # noqa: BLE001 - keep paho's thread alive
            _LOGGER.exception("MQTT: failed to handle a message on %s", message.topic)

    # ---------------------------------------------------------------- features

    def _announce_discovery(self) -> None:
        ha = self._cfg.homeassistant
        for topic in homeassistant.legacy_topics(ha, self._machine):  # entities of versions before the new ids
            self._client.publish(topic, b"", qos=0, retain=True)
        for topic, config in homeassistant.discovery_messages(ha, self._machine, self.topics.prefix,
                                                              self._model_name):
            self._client.publish(topic, json.dumps(config, separators=(",", ":")), qos=0, retain=True)

    def publish_feedback(self, payload: dict[str, Any]) -> bool:
        """Send a verdict on an alert on ``<prefix>/feedback``; False when it cannot be queued now."""
        if self._closed:
            return False
        info = self._client.publish(self.topics.feedback, json.dumps(json_safe(payload), separators=(",", ":")),
                                    qos=1, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def show_threshold(self, value: float) -> None:
        """The owner's threshold in force (set at run time, reloaded): publish it on retained ``threshold/state``."""
        with self._state_lock:
            self._threshold = float(value)
            if self._client.is_connected() and not self._closed:
                self._client.publish(self.topics.threshold_state, repr(self._threshold), qos=0, retain=True)


def _checked_prefix(cfg: MqttConfig, machine: MachineConfig) -> str:
    """The topic prefix; MqttSetupError when it, or the discovery prefix, cannot be used as a topic."""
    prefix = (cfg.prefix or default_prefix(machine)).rstrip("/")
    for name, topic in (("mqtt.prefix", prefix), ("mqtt.homeassistant.discovery_prefix",
                                                 cfg.homeassistant.discovery_prefix)):
        why = topic_problem(topic)
        if why:
            raise MqttSetupError(f"{name} {topic!r} cannot be used: {why}")
    return prefix
