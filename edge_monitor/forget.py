"""``edge-monitor forget --config C.yaml``: remove a retired machine from the broker and Home Assistant.

Clears (an empty retained message on each) every retained topic the machine left: its
Home Assistant discovery configs (this version's and earlier versions' node ids), which
removes the device and its entities from Home Assistant, and everything retained under
its prefix (``status``, ``state``, ``threshold/state``, a retained ``threshold/set``).
It refuses while the machine's ``status`` says ``online``: a running monitor would
announce itself again at its next connection. Stop and disable the service first.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_monitor.config import Config, ConfigError, load_config, mqtt_prefix
from edge_monitor.sinks import homeassistant

_LOGGER = logging.getLogger(__name__)

LISTEN_SECONDS = 2.0
"""How long to collect retained messages after the subscription is acknowledged."""


def topics_to_clear(cfg: Config) -> list[str]:
    """The topics cleared even when the broker shows nothing retained on them."""
    prefix = mqtt_prefix(cfg).rstrip("/")
    known = [f"{prefix}/status", f"{prefix}/state", f"{prefix}/threshold/state"]
    return known + homeassistant.removal_topics(cfg.mqtt.homeassistant, cfg.machine)


def _new_client(cfg: Config) -> paho.Client:
    """A client for the config's broker with its credentials and TLS; MqttSetupError when they cannot be set."""
    from edge_monitor.sinks.mqtt import _configure_tls, read_password

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-monitor-forget-{cfg.machine.id}-{time.time_ns()}",
                         clean_session=True, protocol=paho.MQTTv311)
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, read_password(cfg.mqtt))
    if cfg.mqtt.tls is not None:
        _configure_tls(client, cfg.mqtt.tls)
    return client


def _clear(client: paho.Client, cfg: Config, found: dict[str, bytes], force: bool) -> int:
    """Clear the known topics and the retained ``found`` ones, unless the machine is online; print what was done."""
    prefix = mqtt_prefix(cfg).rstrip("/")
    ha = cfg.mqtt.homeassistant
    if found.get(f"{prefix}/status", b"").strip() == b"online" and not force:
        print(f"edge-monitor: {cfg.machine.id} is online ({prefix}/status): stop and disable its service "
              f"first (systemctl disable --now edge-monitor@<name>), or it announces itself again; "
              "--force clears anyway", file=sys.stderr)
        return 1
    topics = sorted(set(topics_to_clear(cfg)) | set(found))
    infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
    for info in infos:
        info.wait_for_publish(timeout=cfg.mqtt.connect_timeout_seconds)
    if not all(info.is_published() for info in infos):
        print("edge-monitor: the broker did not acknowledge every clearing message; run forget again",
              file=sys.stderr)
        return 1
    configs = sorted(t for t in found if t.startswith(f"{ha.discovery_prefix}/"))
    others = sorted(t for t in found if not t.startswith(f"{ha.discovery_prefix}/"))
    print(f"forgot {cfg.machine.id} on {cfg.mqtt.host}:{cfg.mqtt.port}: cleared {len(configs)} Home Assistant "
          f"discovery config(s) and {len(others)} retained topic(s) under {prefix}/"
          + "".join(f"\n  {t}" for t in configs + others))
    return 0


def forget(cfg: Config, *, force: bool = False, listen_s: float = LISTEN_SECONDS) -> int:
    """Clear the machine's retained topics. 0 done, 1 broker problem or the machine is online."""
    from edge_monitor.sinks.mqtt import MqttSetupError

    prefix = mqtt_prefix(cfg).rstrip("/")
    ha = cfg.mqtt.homeassistant
    node, legacy = homeassistant.node_id(cfg.machine), homeassistant.legacy_node_id(cfg.machine)
    retained: dict[str, bytes] = {}
    subscribed = threading.Event()
    failed: list[str] = []
    lock = threading.Lock()

    try:
        client = _new_client(cfg)
    except MqttSetupError as exc:
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2

    def on_connect(c: paho.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            failed.append(f"broker refused the connection: {reason_code}")
            subscribed.set()
            return
        c.subscribe([(f"{prefix}/#", 1), (f"{ha.discovery_prefix}/+/{node}/+/config", 1),
                     (f"{ha.discovery_prefix}/+/{legacy}/+/config", 1)])

    def on_message(c: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            with lock:
                retained[msg.topic] = bytes(msg.payload)

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=max(cfg.mqtt.keepalive_seconds, 10))
    except (OSError, ValueError) as exc:
        print(f"edge-monitor: cannot connect to {cfg.mqtt.host}:{cfg.mqtt.port}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        if not subscribed.wait(cfg.mqtt.connect_timeout_seconds) or failed:
            why = failed[0] if failed else f"no answer within {cfg.mqtt.connect_timeout_seconds:g} s"
            print(f"edge-monitor: {cfg.mqtt.host}:{cfg.mqtt.port}: {why}", file=sys.stderr)
            return 1
        time.sleep(listen_s)  # retained messages arrive right after the subscription
        with lock:
            found = dict(retained)
        return _clear(client, cfg, found, force)
    finally:
        client.disconnect()
        client.loop_stop()


def run_forget(args: argparse.Namespace) -> int:
    """CLI entry for ``forget``."""
    from edge_monitor.daemon import _apply_mqtt_override, parse_mqtt_spec
    try:
        if args.mqtt:
            parse_mqtt_spec(args.mqtt)
        cfg = _apply_mqtt_override(load_config(args.config), args.mqtt)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2
    if not cfg.mqtt.enabled:
        print(f"edge-monitor: {args.config}: mqtt.enabled is false; give the broker with --mqtt HOST[:PORT]",
              file=sys.stderr)
        return 2
    return forget(cfg, force=args.force)


def add_forget_arguments(p: argparse.ArgumentParser) -> None:
    """The ``forget`` verb's options."""
    p.add_argument("--config", "-c", required=True, help="the retired machine's config YAML")
    p.add_argument("--mqtt", default=None, metavar="HOST[:PORT]", help="broker (default: the config's mqtt.host)")
    p.add_argument("--force", action="store_true", help="clear even while the machine's status says online")
