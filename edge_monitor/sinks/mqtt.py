"""Publish one machine's events to an MQTT broker, losing no alert.

Topics (``<prefix>`` defaults to ``edge-monitor/<site>/<machine>``; docs/mqtt.md
has payload examples):

- ``<prefix>/status``           retained ``online``/``offline`` (the will is ``offline``)
- ``<prefix>/state``            retained ``normal``/``anomaly``/``degraded``
- ``<prefix>/alert``            QoS 1, not retained, JSON from ``AlertEvent.to_payload()``
- ``<prefix>/telemetry``        JSON handed in by the daemon, plus this sink's counters
- ``<prefix>/threshold/set``    (subscribed) a new threshold, as a plain number
- ``<prefix>/threshold/state``  retained current threshold, as a plain number
- ``<prefix>/threshold/error``  JSON describing a rejected ``threshold/set``

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

Threads: ``handle`` runs on the pipeline thread, callbacks on paho's network
thread. Neither ever waits for the other: the pump runs on whichever thread
gets its lock first, and a thread that finds it busy leaves the work to the
holder (see ``_kick``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_monitor.config import MachineConfig, MqttConfig, TlsConfig
from edge_monitor.events import AlertEvent, Event, HealthEvent, ScoreEvent, StateEvent, utc_iso
from edge_monitor.secrets import SecretError, read_secret
from edge_monitor.sinks import homeassistant
from edge_monitor.sinks.outbox import Outbox
from edge_monitor.threshold_store import THRESHOLD_MAX, ThresholdStore, is_valid_threshold

_LOGGER = logging.getLogger(__name__)

INFLIGHT_WINDOW = 1
"""Alerts handed to paho and not yet acknowledged, at most.

One at a time: a lost connection can then duplicate at most one alert (the
one whose PUBACK was lost, which QoS 1 allows), and order is trivially kept.
Replaying a backlog costs one round trip per alert, which is ample for alerts.
"""
_ERROR_PAYLOAD_CHARS = 64


class MqttSetupError(Exception):
    """The MQTT settings cannot work (missing secret or certificate, bad prefix). Names the setting."""


@dataclasses.dataclass(frozen=True)
class Topics:
    """Every topic of one machine, derived from its prefix."""

    prefix: str

    @property
    def status(self) -> str:
        """Retained online/offline."""
        return f"{self.prefix}/status"

    @property
    def state(self) -> str:
        """Retained normal/anomaly/degraded."""
        return f"{self.prefix}/state"

    @property
    def alert(self) -> str:
        """QoS 1 alert JSON."""
        return f"{self.prefix}/alert"

    @property
    def telemetry(self) -> str:
        """Periodic telemetry JSON."""
        return f"{self.prefix}/telemetry"

    @property
    def threshold_set(self) -> str:
        """Subscribed: new threshold value."""
        return f"{self.prefix}/threshold/set"

    @property
    def threshold_state(self) -> str:
        """Retained current threshold."""
        return f"{self.prefix}/threshold/state"

    @property
    def threshold_error(self) -> str:
        """Rejected threshold/set messages."""
        return f"{self.prefix}/threshold/error"


def default_prefix(machine: MachineConfig) -> str:
    """``edge-monitor/<site>/<machine>``."""
    return f"edge-monitor/{machine.site}/{machine.id}"


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


def _default_client(client_id: str) -> paho.Client:
    """A paho 2.x client: callback API v2, MQTT 3.1.1, clean session."""
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                       protocol=paho.MQTTv311)


class MqttSink:
    """The MQTT sink of one machine (see the module docstring for topics and delivery)."""

    def __init__(self, cfg: MqttConfig, machine: MachineConfig, state_dir: Path, model_name: str,
                 threshold: float, on_threshold_set: Optional[Callable[[float], None]] = None,
                 client_factory: Optional[Callable[[str], paho.Client]] = None, *,
                 reconnect_min_seconds: float = 1.0, reconnect_max_seconds: float = 30.0,
                 inflight_window: int = INFLIGHT_WINDOW) -> None:
        """Prepare the client and open the outbox; nothing touches the network before ``start()``.

        Raises MqttSetupError for settings that can never work (password
        file, TLS files, prefix) and OutboxError if the outbox is in use.
        """
        self._cfg = cfg
        self._machine = machine
        self._model_name = model_name
        self._threshold = float(threshold)
        self._on_threshold_set = on_threshold_set
        self._window = max(1, int(inflight_window))
        prefix = (cfg.prefix or default_prefix(machine)).rstrip("/")
        if not prefix or "+" in prefix or "#" in prefix:
            raise MqttSetupError(f"mqtt.prefix {prefix!r}: must be non-empty and contain no + or # wildcard")
        self.topics = Topics(prefix)
        self._threshold_store = ThresholdStore(state_dir, machine.id)

        password = None
        if cfg.password_file:
            if not cfg.username:
                raise MqttSetupError("mqtt.password_file is set but mqtt.username is not: MQTT needs both")
            try:
                password = read_secret(cfg.password_file)
            except SecretError as exc:
                raise MqttSetupError(f"mqtt.password_file: {exc}") from None

        self.client_id = cfg.client_id or f"edge-monitor-{machine.site}-{machine.id}"
        client = (client_factory or _default_client)(self.client_id)
        client.on_log = _on_paho_log
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        del password
        if cfg.tls is not None:
            _configure_tls(client, cfg.tls)
        self._reconnect_max_seconds = max(1, round(reconnect_max_seconds))
        client.reconnect_delay_set(min_delay=max(1, round(reconnect_min_seconds)),
                                   max_delay=self._reconnect_max_seconds)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

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
        self._health_counts: collections.Counter[str] = collections.Counter()
        self._last_health: Optional[dict[str, Any]] = None

        self._started = False
        self._closing = False
        self._closed = False
        self._was_connected = False
        self._last_failure: Optional[str] = None
        self._connect_failures = 0
        self._connects = 0
        self._alerts_published = 0
        self._telemetry_skipped = 0

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
        self._closing = True
        deadline_s = time.monotonic() + timeout_s
        if self._started and self._client.is_connected():
            while self._inflight and time.monotonic() < deadline_s and self._client.is_connected():
                time.sleep(0.02)
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
        """The current threshold as last set (constructor or ``threshold/set``)."""
        return self._threshold

    def stats(self) -> dict[str, Any]:
        """This sink's counters (they also go into every telemetry message under ``mqtt``)."""
        return {
            "connected": self._client.is_connected(),
            "outbox_depth": self._outbox.depth,
            "outbox_dropped_total": self._outbox.dropped_total,
            "alerts_published": self._alerts_published,
            "connects": self._connects,
            "connect_failures": self._connect_failures,
            "last_error": self._last_failure,
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
            _LOGGER.info("health of %s: %s %s", event.machine, event.kind, event.detail)
        elif isinstance(event, ScoreEvent):
            self._last_score = float(event.score)

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
        text = json.dumps(_json_safe(body), separators=(",", ":"), default=_json_default, allow_nan=False)
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
        if reason_code.is_failure:
            hint = ""
            if str(reason_code) in ("Not authorized", "Bad user name or password"):
                hint = " (check mqtt.username and the password in mqtt.password_file)"
            self._note_failure(f"broker refused the connection: {reason_code}{hint}")
            return
        self._connects += 1
        self._was_connected = True
        if self._last_failure is not None:
            _LOGGER.info("MQTT: connected to %s:%d after earlier failures", self._cfg.host, self._cfg.port)
        else:
            _LOGGER.info("MQTT: connected to %s:%d", self._cfg.host, self._cfg.port)
        self._last_failure = None
        with self._state_lock:
            client.publish(self.topics.status, "online", qos=0, retain=True)
            if self._state is not None:
                client.publish(self.topics.state, self._state, qos=0, retain=True)
            client.publish(self.topics.threshold_state, repr(self._threshold), qos=0, retain=True)
        subscriptions = [(self.topics.threshold_set, 1)]
        if self._cfg.homeassistant.enabled:
            subscriptions.append((f"{self._cfg.homeassistant.discovery_prefix}/status", 1))
            self._announce_discovery()
        client.subscribe(subscriptions)
        self._kick()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError` block: the cause is the active exception.
        self._note_failure(describe_connect_error(sys.exc_info()[1], self._cfg.host, self._cfg.port))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        # paho resends unacknowledged alerts first after the next CONNACK; publish nothing newer until then.
        self._hold = True
        if self._was_connected and not self._closing:
            _LOGGER.warning("MQTT: lost the connection to %s:%d (%s); reconnecting, alerts stay in the outbox",
                            self._cfg.host, self._cfg.port, reason_code)
        self._was_connected = False

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._acks.append(mid)
        self._kick()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.threshold_set:
                self._on_threshold_message(message.payload)
            elif (self._cfg.homeassistant.enabled
                  and message.topic == f"{self._cfg.homeassistant.discovery_prefix}/status"
                  and message.payload.strip() == b"online"):
                _LOGGER.info("MQTT: Home Assistant came online; announcing discovery again")
                self._announce_discovery()
        except Exception:  # noqa: BLE001 - keep paho's thread alive
            _LOGGER.exception("MQTT: failed to handle a message on %s", message.topic)

    def _note_failure(self, message: str) -> None:
        """Count a failed connection attempt; log it only when it differs from the previous one."""
        self._connect_failures += 1
        if message != self._last_failure:
            _LOGGER.error("MQTT: cannot connect to %s:%d: %s. Retrying in the background (every %d s at most); "
                          "alerts are kept in the outbox (%d pending)", self._cfg.host, self._cfg.port, message,
                          self._reconnect_max_seconds, self._outbox.depth)
            self._last_failure = message

    # ---------------------------------------------------------------- features

    def _announce_discovery(self) -> None:
        for topic, config in homeassistant.discovery_messages(self._cfg.homeassistant, self._machine,
                                                              self.topics.prefix, self._model_name):
            self._client.publish(topic, json.dumps(config, separators=(",", ":")), qos=0, retain=True)

    def _on_threshold_message(self, payload: bytes) -> None:
        if not payload:
            return  # an empty message clears a retained one; it is not a request
        value, problem = parse_threshold(payload)
        if value is None:
            self._reject_threshold(payload, problem)
            return
        if self._on_threshold_set is not None:
            try:
                self._on_threshold_set(value)
            except Exception as exc:  # noqa: BLE001 - report whatever the daemon objects to
                self._reject_threshold(payload, f"not applied: {exc}")
                return
        self._threshold = value
        try:
            self._threshold_store.save(value, source="mqtt")
        except OSError as exc:
            _LOGGER.error("MQTT: threshold %g applied but not saved to %s: %s", value,
                          self._threshold_store.path, exc.strerror)
            self._publish_threshold_error(payload, f"applied but not saved: {exc.strerror}")
        with self._state_lock:
            self._client.publish(self.topics.threshold_state, repr(value), qos=0, retain=True)
        _LOGGER.info("MQTT: threshold of %s set to %g", self._machine.id, value)

    def _reject_threshold(self, payload: bytes, problem: str) -> None:
        shown = payload[:_ERROR_PAYLOAD_CHARS].decode("utf-8", errors="replace")
        _LOGGER.warning("MQTT: rejected threshold/set %r: %s", shown, problem)
        self._publish_threshold_error(payload, problem)

    def _publish_threshold_error(self, payload: bytes, problem: str) -> None:
        shown = payload[:_ERROR_PAYLOAD_CHARS].decode("utf-8", errors="replace")
        body = {"error": problem, "payload": shown, "threshold": self._threshold, "at": utc_iso(time.time())}
        self._client.publish(self.topics.threshold_error, json.dumps(body), qos=1, retain=False)


_PAHO_LOGGER = logging.getLogger(__name__ + ".paho")


def _on_paho_log(client: paho.Client, userdata: Any, level: int, message: str) -> None:
    """paho's own log lines: debug only, except exceptions raised inside our callbacks."""
    # Socket errors are reported once per distinct failure by the sink itself; paho would log every retry.
    if message.startswith("Caught exception in"):
        _PAHO_LOGGER.error("%s", message)
    else:
        _PAHO_LOGGER.debug("%s", message)


def describe_connect_error(exc: Optional[BaseException], host: str, port: int) -> str:
    """A one-line, secret-free explanation of a failed connection attempt."""
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed ({exc.verify_message}): "
                "check mqtt.tls.ca and the broker's certificate and host name")
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {host!r}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "connection timed out"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _configure_tls(client: paho.Client, tls: TlsConfig) -> None:
    """Load the CA and client certificate; MqttSetupError names the bad setting."""
    for key, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if path and not Path(path).is_file():
            raise MqttSetupError(f"mqtt.tls.{key}: file {path!r} does not exist")
    if bool(tls.cert) != bool(tls.key):
        raise MqttSetupError("mqtt.tls.cert and mqtt.tls.key must be given together")
    try:
        client.tls_set(ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise MqttSetupError(f"mqtt.tls: cannot load the certificates or key: {exc}") from None
    if tls.insecure:
        _LOGGER.warning("MQTT: mqtt.tls.insecure is set: the broker's host name is not verified")
        client.tls_insecure_set(True)


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays, and anything else as its string."""
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    return str(value)
