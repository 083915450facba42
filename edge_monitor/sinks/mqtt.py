"""Publish one machine's events to an MQTT broker, losing no alert.

Topics (``<prefix>`` defaults to ``edge-monitor/<site>/<machine>``; docs/mqtt.md
has payload examples):

- ``<prefix>/status``           retained ``online``/``offline`` (the will is ``offline``)
- ``<prefix>/state``            retained ``normal``/``anomaly``/``degraded``
- ``<prefix>/alert``            QoS 1, not retained, JSON from ``AlertEvent.to_payload()``
- ``<prefix>/telemetry``        JSON handed in by the daemon, plus this sink's counters
- ``<prefix>/health``           JSON of each health event (QoS 0, not retained; sent while connected)
- ``<prefix>/threshold/set``    (subscribed) a new threshold, as a plain number
- ``<prefix>/threshold/state``  retained current threshold, as a plain number
- ``<prefix>/threshold/error``  JSON describing a rejected ``threshold/set``
- ``<prefix>/score``            the latest window score, a plain number, at most every ``score_seconds``
- ``<prefix>/clip``             QoS 1 JSON announcing a complete evidence clip (id, alert id, size, sha256)
- ``<prefix>/clip/get``         (subscribed) a clip id; answered on ``<prefix>/clip/data/<id>`` (the WAV
                                bytes, QoS 1) or ``<prefix>/clip/error`` (JSON)

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

Connection problems: every refused or failed attempt, a broker that accepts TCP
but sends no CONNACK within ``connect_timeout_seconds``, a connection closed before
CONNACK (a plain client on a TLS listener) and a client id that another client keeps
taking over is logged once per distinct cause and reported to ``on_health`` as an
``mqtt_error`` HealthEvent (``mqtt_ok`` when it is over).

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
import os
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_monitor.config import MachineConfig, MqttConfig, TlsConfig, topic_problem
from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent, utc_iso
from edge_monitor.secrets import SecretError, read_secret, secret_path
from edge_monitor.sinks import homeassistant
from edge_monitor.sinks.outbox import Outbox
from edge_monitor.threshold_store import THRESHOLD_MAX, is_valid_threshold

_LOGGER = logging.getLogger(__name__)

INFLIGHT_WINDOW = 1
"""Alerts handed to paho and not yet acknowledged, at most.

One at a time: a lost connection can then duplicate at most one alert (the
one whose PUBACK was lost, which QoS 1 allows), and order is trivially kept.
Replaying a backlog costs one round trip per alert, which is ample for alerts.
"""
_ERROR_PAYLOAD_CHARS = 64
SHORT_SESSION_SECONDS = 10.0
"""A connection the broker closes sooner than this after accepting it counts as taken over."""
TAKEOVER_SESSIONS = 3
"""Short sessions within ``TAKEOVER_WINDOW_SECONDS`` that mean another client uses our client id."""
TAKEOVER_WINDOW_SECONDS = 120.0


ThresholdRequestHandler = Callable[[float], Optional[str]]
"""Receives a ``threshold/set`` value; raises to refuse it, returns a warning text or None/"" when applied."""


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

    @property
    def health(self) -> str:
        """Health events as JSON."""
        return f"{self.prefix}/health"

    @property
    def score(self) -> str:
        """The latest score as a plain number."""
        return f"{self.prefix}/score"

    @property
    def clip(self) -> str:
        """Announcements of complete clips (JSON)."""
        return f"{self.prefix}/clip"

    @property
    def clip_get(self) -> str:
        """Subscribed: requests for a clip's bytes (payload: the clip id)."""
        return f"{self.prefix}/clip/get"

    def clip_data(self, clip_id: str) -> str:
        """The answer to a ``clip/get``: the WAV file's bytes."""
        return f"{self.prefix}/clip/data/{clip_id}"

    @property
    def clip_error(self) -> str:
        """A ``clip/get`` that cannot be answered (JSON)."""
        return f"{self.prefix}/clip/error"

    @property
    def feedback(self) -> str:
        """A person's verdict on an alert, from the web page (JSON, QoS 1, not retained)."""
        return f"{self.prefix}/feedback"


CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}-[0-9]{8}T[0-9]{6}Z-[0-9A-Za-z]{1,8}$")
"""A clip id as ``ClipRecorder`` names clips (file name without ``.wav``); nothing else is ever read."""


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


def read_password(cfg: MqttConfig) -> Optional[str]:
    """The broker password from ``mqtt.password_file`` (None without one). MqttSetupError names the problem.

    Warns when the file can be read or written by other users.
    """
    if not cfg.password_file:
        return None
    if not cfg.username:
        raise MqttSetupError("mqtt.password_file is set but mqtt.username is not: MQTT needs both")
    try:
        path = secret_path(cfg.password_file)
        password = read_secret(cfg.password_file)
    except SecretError as exc:
        raise MqttSetupError(f"mqtt.password_file: {exc}") from None
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & 0o077:
        _LOGGER.warning("MQTT: the password file %s can be %s by other users (mode %04o); "
                        "make it readable by the service only (chmod 600)", path,
                        "read or written" if mode & 0o066 else "accessed", mode & 0o7777)
    return password


def setup_problems(cfg: MqttConfig) -> list[str]:
    """What would stop ``MqttSink`` from starting: the password file and the TLS files (empty when fine)."""
    if not cfg.enabled:
        return []
    problems = []
    outside_service = (cfg.password_file or "").startswith("credential:") and not os.environ.get(
        "CREDENTIALS_DIRECTORY")
    try:
        if not outside_service:  # a systemd credential exists only inside the service (and its ExecStartPre)
            read_password(cfg)
        elif not cfg.username:
            raise MqttSetupError("mqtt.password_file is set but mqtt.username is not: MQTT needs both")
    except MqttSetupError as exc:
        problems.append(str(exc))
    if cfg.tls is not None:
        try:
            _check_tls(cfg.tls)
        except MqttSetupError as exc:
            problems.append(str(exc))
    return problems


def _default_client(client_id: str) -> paho.Client:
    """A paho 2.x client: callback API v2, MQTT 3.1.1, clean session."""
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                       protocol=paho.MQTTv311)


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
        ``threshold/error``) or returns a warning text (applied, but e.g. not saved).
        Without a handler every request is refused.
        ``on_health`` receives the sink's ``mqtt_error``/``mqtt_ok`` events.
        ``clips_dir`` is where ``clip/get`` requests are served from (None: they are refused).

        Raises MqttSetupError for settings that can never work (password
        file, TLS files, prefix) and OutboxError if the outbox is in use.
        """
        self._cfg = cfg
        self._machine = machine
        self._model_name = model_name
        self._threshold = float(threshold)
        self._on_threshold_set = on_threshold_set
        self._on_health = on_health
        self._window = max(1, int(inflight_window))
        prefix = (cfg.prefix or default_prefix(machine)).rstrip("/")
        for name, topic in (("mqtt.prefix", prefix), ("mqtt.homeassistant.discovery_prefix",
                                                     cfg.homeassistant.discovery_prefix)):
            why = topic_problem(topic)
            if why:
                raise MqttSetupError(f"{name} {topic!r} cannot be used: {why}")
        self.topics = Topics(prefix)

        password = read_password(cfg)

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
        client.connect_timeout = float(cfg.connect_timeout_seconds)  # TCP connect and TLS handshake
        client.on_socket_open = self._on_socket_open
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
        self._score_sent_at_s: Optional[float] = None  # event time (s) of the last score message
        self._score_text: Optional[str] = None
        self._clips_dir = Path(clips_dir) if clips_dir is not None else None
        self._health_counts: collections.Counter[str] = collections.Counter()
        self._last_health: Optional[dict[str, Any]] = None

        self._started = False
        self._closing = False
        self._closed = False
        self._was_connected = False
        self._last_failure: Optional[str] = None
        self._attempt = 0                    # socket opens so far; ties timers to one connection attempt
        self._attempt_failed = False         # this attempt's failure is already reported
        self._connected_at = 0.0             # time.monotonic() of the last CONNACK
        self._short_sessions: collections.deque[float] = collections.deque()
        self._taken_over = False             # another client keeps taking our client id
        self._timers: list[threading.Timer] = []
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
        deadline_s = time.monotonic() + timeout_s
        if self._started and self._client.is_connected():
            self._kick()  # e.g. the end of an alert closed by the shutdown: deliver it now if the broker is there
            while (self._inflight or self._outbox.depth) and time.monotonic() < deadline_s \
                    and self._client.is_connected():
                time.sleep(0.02)
        self._closing = True
        for timer in self._timers:
            timer.cancel()
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
            if self._client.is_connected() and not self._closed:
                self._client.publish(self.topics.health, json.dumps(_json_safe(self._last_health)), qos=0,
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
        try:
            self._handle_connect(client, reason_code)
        except Exception as exc:  # noqa: BLE001 - an exception here would end paho's network thread
            _LOGGER.exception("MQTT: setting up the connection failed")
            self._emit_health("mqtt_error", f"setting up the connection failed: {exc}")

    def _handle_connect(self, client: paho.Client, reason_code: Any) -> None:
        if reason_code.is_failure:
            hint = ""
            if str(reason_code) in ("Not authorized", "Bad user name or password"):
                if self._cfg.username:
                    hint = " (check mqtt.username and the password in mqtt.password_file)"
                else:
                    hint = (" (the broker wants a user name, mqtt.username and mqtt.password_file, or does not "
                            f"accept the client id {self.client_id!r}; see mqtt.client_id)")
            elif str(reason_code) in ("Client identifier not valid", "Identifier rejected"):
                hint = f" (the broker does not accept the client id {self.client_id!r}; set mqtt.client_id)"
            self._attempt_failed = True
            self._note_failure(f"broker refused the connection: {reason_code}{hint}")
            return
        self._connects += 1
        self._was_connected = True
        self._connected_at = time.monotonic()
        self._start_timer(SHORT_SESSION_SECONDS, self._session_held, self._attempt)
        if self._taken_over:
            pass  # stays reported until a connection holds (see _session_held)
        elif self._last_failure is not None:
            _LOGGER.info("MQTT: connected to %s:%d after earlier failures", self._cfg.host, self._cfg.port)
            self._last_failure = None
            self._emit_health("mqtt_ok", f"connected to {self._cfg.host}:{self._cfg.port}")
        else:
            _LOGGER.info("MQTT: connected to %s:%d", self._cfg.host, self._cfg.port)
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
        # paho calls this from inside its `except OSError` block: the cause is the active exception.
        self._note_failure(describe_connect_error(sys.exc_info()[1], self._cfg.host, self._cfg.port,
                                                  tls=self._cfg.tls is not None))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._attempt += 1
        self._attempt_failed = False
        self._start_timer(float(self._cfg.connect_timeout_seconds), self._connack_overdue, self._attempt)

    def _connack_overdue(self, attempt: int) -> None:
        """Timer: the broker took TCP (and TLS) but has not answered CONNECT: say so and drop the socket."""
        if attempt != self._attempt or self._was_connected or self._closing or self._attempt_failed:
            return
        self._attempt_failed = True
        plain = "" if self._cfg.tls is not None else "; is it an MQTT port, or a TLS listener that needs mqtt.tls?"
        self._note_failure(f"the broker accepted the connection but sent no CONNACK within "
                           f"{self._cfg.connect_timeout_seconds:g} s{plain}")
        sock = self._client.socket()
        if sock is not None:
            try:  # wakes paho's loop, which then reconnects with its back-off; the base method also for TLS
                socket.socket.shutdown(cast(socket.socket, sock), socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass

    def _session_held(self, attempt: int) -> None:
        """Timer: a connection lasted SHORT_SESSION_SECONDS; a take-over problem is over."""
        if attempt != self._attempt or not self._was_connected or self._closing:
            return
        self._short_sessions.clear()
        if self._taken_over:
            self._taken_over = False
            self._last_failure = None
            _LOGGER.info("MQTT: the connection to %s:%d holds again", self._cfg.host, self._cfg.port)
            self._emit_health("mqtt_ok", f"connected to {self._cfg.host}:{self._cfg.port}")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        # paho resends unacknowledged alerts first after the next CONNACK; publish nothing newer until then.
        self._hold = True
        if self._closing:
            self._was_connected = False
            return
        if self._was_connected:
            now = time.monotonic()
            if now - self._connected_at < SHORT_SESSION_SECONDS:
                self._short_sessions.append(now)
                while self._short_sessions and now - self._short_sessions[0] > TAKEOVER_WINDOW_SECONDS:
                    self._short_sessions.popleft()
            if len(self._short_sessions) >= TAKEOVER_SESSIONS:
                self._taken_over = True
                self._note_failure(
                    f"the broker closed the connection {len(self._short_sessions)} times within seconds of "
                    f"accepting it: another client is probably connected with the same client id "
                    f"{self.client_id!r} (two monitors with the same machine id? give each a unique "
                    "machine.id or mqtt.client_id)")
            elif not self._taken_over:
                _LOGGER.warning("MQTT: lost the connection to %s:%d (%s); reconnecting, alerts stay in the outbox",
                                self._cfg.host, self._cfg.port, reason_code)
        elif not self._attempt_failed:
            self._attempt_failed = True
            if self._cfg.tls is None:
                why = "is it a TLS listener? then set mqtt.tls"
            else:
                why = "check mqtt.port, the TLS settings and the broker's log"
            self._note_failure(f"the broker closed the connection before accepting it ({reason_code}; {why})")
        self._was_connected = False

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._acks.append(mid)
        self._kick()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.threshold_set:
                self._on_threshold_message(bytes(message.payload))
            elif message.topic == self.topics.clip_get:
                self._on_clip_request(bytes(message.payload))
            elif (self._cfg.homeassistant.enabled
                  and message.topic == f"{self._cfg.homeassistant.discovery_prefix}/status"
                  and message.payload.strip() == b"online"):
                _LOGGER.info("MQTT: Home Assistant came online; announcing discovery again")
                self._announce_discovery()
        except Exception:  # noqa: BLE001 - keep paho's thread alive
            _LOGGER.exception("MQTT: failed to handle a message on %s", message.topic)

    def _note_failure(self, message: str) -> None:
        """Count a failed connection attempt; log it (and report it) only when it differs from the previous one."""
        self._connect_failures += 1
        if message != self._last_failure:
            _LOGGER.error("MQTT: cannot connect to %s:%d: %s. Retrying in the background (every %d s at most); "
                          "alerts are kept in the outbox (%d pending)", self._cfg.host, self._cfg.port, message,
                          self._reconnect_max_seconds, self._outbox.depth)
            self._last_failure = message
            self._emit_health("mqtt_error", f"{self._cfg.host}:{self._cfg.port}: {message}")

    def _emit_health(self, kind: str, detail: str) -> None:
        if self._on_health is None or self._closing:
            return
        try:
            self._on_health(HealthEvent(kind, self._machine.id, time.time(), detail))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - keep paho's thread alive
            _LOGGER.exception("MQTT: reporting %s failed", kind)

    def _start_timer(self, seconds: float, func: Callable[[int], None], attempt: int) -> None:
        timer = threading.Timer(seconds, func, args=(attempt,))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    # ---------------------------------------------------------------- features

    def _announce_discovery(self) -> None:
        ha = self._cfg.homeassistant
        for topic in homeassistant.legacy_topics(ha, self._machine):  # entities of versions before the new ids
            self._client.publish(topic, b"", qos=0, retain=True)
        for topic, config in homeassistant.discovery_messages(ha, self._machine, self.topics.prefix,
                                                              self._model_name):
            self._client.publish(topic, json.dumps(config, separators=(",", ":")), qos=0, retain=True)

    def _on_clip_request(self, payload: bytes) -> None:
        """``clip/get``: send the clip's bytes on ``clip/data/<id>``, or say why not on ``clip/error``."""
        clip_id = payload[:80].decode("utf-8", errors="replace").strip()
        problem = ""
        data = b""
        if not clip_id:
            return  # an empty message clears a retained request
        if not CLIP_ID.fullmatch(clip_id):
            problem = "not a clip id (expected <machine>-<YYYYmmddTHHMMSSZ>-<alert id prefix>)"
        elif self._clips_dir is None:
            problem = "this monitor saves no clips (clips.enabled is false)"
        else:
            try:
                data = (self._clips_dir / f"{clip_id}.wav").read_bytes()
            except FileNotFoundError:
                problem = "no such clip (never written, or deleted by clips.max_count / max_total_mb)"
            except OSError as exc:
                problem = f"cannot read the clip: {exc.strerror or exc}"
        if problem:
            _LOGGER.warning("MQTT: clip/get %r refused: %s", clip_id, problem)
            body = {"error": problem, "id": clip_id, "at": utc_iso(time.time())}
            self._client.publish(self.topics.clip_error, json.dumps(body), qos=1, retain=False)
            return
        _LOGGER.info("MQTT: sending clip %s (%d bytes)", clip_id, len(data))
        self._client.publish(self.topics.clip_data(clip_id), data, qos=1, retain=False)

    def _on_threshold_message(self, payload: bytes) -> None:
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
        _LOGGER.info("MQTT: threshold of %s requested: %g", self._machine.id, value)

    def publish_feedback(self, payload: dict[str, Any]) -> bool:
        """Send a verdict on an alert on ``<prefix>/feedback``; False when it cannot be queued now."""
        if self._closed:
            return False
        info = self._client.publish(self.topics.feedback, json.dumps(_json_safe(payload), separators=(",", ":")),
                                    qos=1, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def show_threshold(self, value: float) -> None:
        """The owner's threshold in force (set at run time, reloaded): publish it on retained ``threshold/state``."""
        with self._state_lock:
            self._threshold = float(value)
            if self._client.is_connected() and not self._closed:
                self._client.publish(self.topics.threshold_state, repr(self._threshold), qos=0, retain=True)

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


def describe_connect_error(exc: Optional[BaseException], host: str, port: int, tls: bool = False) -> str:
    """A one-line, secret-free explanation of a failed connection attempt."""
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed ({exc.verify_message}): "
                "check mqtt.tls.ca and the broker's certificate and host name")
    if isinstance(exc, ssl.SSLError):
        hint = ""
        if "WRONG_VERSION_NUMBER" in str(exc) or "EOF" in str(exc) or "RECORD_LAYER" in str(exc):
            hint = "; is this port a plain (non-TLS) listener?"
        return f"TLS handshake failed ({exc.reason or exc}{hint})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    if isinstance(exc, ConnectionResetError) and tls:
        return "the broker reset the connection during the TLS handshake (is this port a TLS listener?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {host!r}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        if tls and "handshake" in str(exc):
            return "the TLS handshake timed out (is this port a TLS listener? does it answer at all?)"
        return "connection timed out"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _check_tls(tls: TlsConfig) -> None:
    """The TLS files exist and load; MqttSetupError names the bad setting."""
    for key, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if path and not Path(path).is_file():
            raise MqttSetupError(f"mqtt.tls.{key}: file {path!r} does not exist")
    if bool(tls.cert) != bool(tls.key):
        raise MqttSetupError("mqtt.tls.cert and mqtt.tls.key must be given together")
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls.ca:
            context.load_verify_locations(cafile=tls.ca)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise MqttSetupError(f"mqtt.tls: cannot load the certificates or key: {exc}") from None


def _configure_tls(client: paho.Client, tls: TlsConfig) -> None:
    """Load the CA and client certificate; MqttSetupError names the bad setting."""
    _check_tls(tls)
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
