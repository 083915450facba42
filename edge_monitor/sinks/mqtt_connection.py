"""How one MQTT connection is doing, in words: every failed attempt explained once, and when it is over.

``ConnectionWatch`` follows paho's connection callbacks for a sink. It reports a
refused or failed attempt, a broker that accepts TCP but sends no CONNACK within
``connect_timeout_seconds`` (then it drops the socket so that paho retries), a
connection closed before CONNACK (a plain client on a TLS listener) and a client id
that another client keeps taking over. Each distinct cause is logged once and
reported as an ``mqtt_error`` HealthEvent; ``mqtt_ok`` follows when it is over.
It runs on paho's network thread and on its own short timers.
"""

from __future__ import annotations

import collections
import logging
import socket
import sys
import threading
import time
from typing import Any, Callable, Optional, cast

import paho.mqtt.client as paho

from edge_monitor.config import MqttConfig
from edge_monitor.events import HealthEvent
from edge_monitor.sinks.mqtt_setup import describe_connect_error

_LOGGER = logging.getLogger("edge_monitor.sinks.mqtt")

SHORT_SESSION_SECONDS = 10.0
"""A connection the broker closes sooner than this after accepting it counts as taken over."""
TAKEOVER_SESSIONS = 3
"""Short sessions within ``TAKEOVER_WINDOW_SECONDS`` that mean another client uses our client id."""
TAKEOVER_WINDOW_SECONDS = 120.0


class ConnectionWatch:
    """The connection state of one sink's client, and its problems explained (see the module docstring)."""

    def __init__(self, cfg: MqttConfig, client: paho.Client, client_id: str, machine_id: str, *,
                 reconnect_max_seconds: int, pending_alerts: Callable[[], int],
                 on_health: Optional[Callable[[HealthEvent], None]]) -> None:
        """``pending_alerts()`` is the outbox depth, quoted in the log; ``on_health`` gets the health events."""
        self._cfg = cfg
        self._client = client
        self._client_id = client_id
        self._machine_id = machine_id
        self._reconnect_max_seconds = reconnect_max_seconds
        self._pending_alerts = pending_alerts
        self._on_health = on_health
        self.closing = False                 # set by the sink's close(): nothing is reported any more
        self.was_connected = False
        self.last_failure: Optional[str] = None
        self.connect_failures = 0
        self.connects = 0
        self._attempt = 0                    # socket opens so far; ties timers to one connection attempt
        self._attempt_failed = False         # this attempt's failure is already reported
        self._connected_at = 0.0             # time.monotonic() of the last CONNACK
        self._short_sessions: collections.deque[float] = collections.deque()
        self._taken_over = False             # another client keeps taking our client id
        self._timers: list[threading.Timer] = []

    @property
    def _where(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    def socket_opened(self) -> None:
        """paho opened a socket: a new attempt, which must see a CONNACK in time."""
        self._attempt += 1
        self._attempt_failed = False
        self._start_timer(float(self._cfg.connect_timeout_seconds), self._connack_overdue, self._attempt)

    def connect_failed(self) -> None:
        """paho's ``on_connect_fail``, called inside its ``except OSError``: the cause is the active exception."""
        self._note_failure(describe_connect_error(sys.exc_info()[1], self._cfg.host, tls=self._cfg.tls is not None))

    def refused(self, reason_code: Any) -> None:
        """A CONNACK with a failure code: say what to check."""
        hint = ""
        if str(reason_code) in ("Not authorized", "Bad user name or password"):
            if self._cfg.username:
                hint = " (check mqtt.username and the password in mqtt.password_file)"
            else:
                hint = (" (the broker wants a user name, mqtt.username and mqtt.password_file, or does not "
                        f"accept the client id {self._client_id!r}; see mqtt.client_id)")
        elif str(reason_code) in ("Client identifier not valid", "Identifier rejected"):
            hint = f" (the broker does not accept the client id {self._client_id!r}; set mqtt.client_id)"
        self._attempt_failed = True
        self._note_failure(f"broker refused the connection: {reason_code}{hint}")

    def connected(self) -> None:
        """A successful CONNACK: count it, and report the end of an earlier problem."""
        self.connects += 1
        self.was_connected = True
        self._connected_at = time.monotonic()
        self._start_timer(SHORT_SESSION_SECONDS, self._session_held, self._attempt)
        if self._taken_over:
            pass  # stays reported until a connection holds (see _session_held)
        elif self.last_failure is not None:
            _LOGGER.info("MQTT: connected to %s after earlier failures", self._where)
            self.last_failure = None
            self.emit_health("mqtt_ok", f"connected to {self._where}")
        else:
            _LOGGER.info("MQTT: connected to %s", self._where)

    def disconnected(self, reason_code: Any) -> None:
        """The connection ended: a take-over, a plain loss, or an attempt closed before CONNACK."""
        if self.closing:
            self.was_connected = False
            return
        if self.was_connected:
            self._session_ended(reason_code)
        elif not self._attempt_failed:
            self._attempt_failed = True
            if self._cfg.tls is None:
                why = "is it a TLS listener? then set mqtt.tls"
            else:
                why = "check mqtt.port, the TLS settings and the broker's log"
            self._note_failure(f"the broker closed the connection before accepting it ({reason_code}; {why})")
        self.was_connected = False

    def _session_ended(self, reason_code: Any) -> None:
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
                f"{self._client_id!r} (two monitors with the same machine id? give each a unique "
                "machine.id or mqtt.client_id)")
        elif not self._taken_over:
            _LOGGER.warning("MQTT: lost the connection to %s (%s); reconnecting, alerts stay in the outbox",
                            self._where, reason_code)

    def _connack_overdue(self, attempt: int) -> None:
        """Timer: the broker took TCP (and TLS) but has not answered CONNECT: say so and drop the socket."""
        if attempt != self._attempt or self.was_connected or self.closing or self._attempt_failed:
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
        if attempt != self._attempt or not self.was_connected or self.closing:
            return
        self._short_sessions.clear()
        if self._taken_over:
            self._taken_over = False
            self.last_failure = None
            _LOGGER.info("MQTT: the connection to %s holds again", self._where)
            self.emit_health("mqtt_ok", f"connected to {self._where}")

    def _note_failure(self, message: str) -> None:
        """Count a failed connection attempt; log it (and report it) only when it differs from the previous one."""
        self.connect_failures += 1
        if message != self.last_failure:
            _LOGGER.error("MQTT: cannot connect to %s: %s. Retrying in the background (every %d s at most); "
                          "alerts are kept in the outbox (%d pending)", self._where, message,
                          self._reconnect_max_seconds, self._pending_alerts())
            self.last_failure = message
            self.emit_health("mqtt_error", f"{self._where}: {message}")

    def emit_health(self, kind: str, detail: str) -> None:
        """Report ``mqtt_error`` / ``mqtt_ok`` (never while closing)."""
        if self._on_health is None or self.closing:
            return
        try:
            self._on_health(HealthEvent(kind, self._machine_id, time.time(), detail))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - keep paho's thread alive
            _LOGGER.exception("MQTT: reporting %s failed", kind)

    def _start_timer(self, seconds: float, func: Callable[[int], None], attempt: int) -> None:
        timer = threading.Timer(seconds, func, args=(attempt,))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def cancel_timers(self) -> None:
        """Stop the pending timers (the sink is closing)."""
        for timer in self._timers:
            timer.cancel()
