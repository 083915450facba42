"""Test helpers for MQTT: a real mosquitto per test, certificates, a collecting subscriber.

- ``Mosquitto`` (from ``benchmarks/mqtt_rig.py``, which has no pytest): a broker on
  a free 127.0.0.1 port, restartable on the same port to simulate outages; the
  ``mosquitto`` fixture runs one per test.
- ``make_ca`` / ``issue_cert``: a throw-away PKI made with ``openssl``.
- ``make_passwd``: a mosquitto password file made with ``mosquitto_passwd -b``.
- ``Collector``: a paho subscriber that records every message it receives.
- ``sink_child_main``: the body of a child process that runs an ``MqttSink``
  and obeys line commands on stdin, so tests can ``kill -9`` it
  (``python -m tests.helpers.broker '<json args>'``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.mqtt_rig import HOST, Mosquitto, Tls, free_port  # noqa: F401 - re-exported for the tests


def wait_until(predicate: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A running plain-TCP, anonymous mosquitto with persistence, stopped after the test."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _run(cmd: list[str], cwd: Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr}")


@dataclasses.dataclass(frozen=True)
class Ca:
    """A test certificate authority."""

    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> Ca:
    """Create a self-signed EC CA ``<name>.crt``/``<name>.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", str(key), "-out", str(cert), "-days", "3", "-subj", f"/CN=edge-monitor test {name}",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"], directory)
    return Ca(cert, key)


def issue_cert(ca: Ca, directory: Path, name: str, *, server: bool) -> tuple[Path, Path]:
    """Issue ``<name>.crt``/``<name>.key`` signed by ``ca``: a server cert for localhost/127.0.0.1, or a client cert."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    if server:
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                       "authorityKeyIdentifier=keyid\n")
    else:
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=clientAuth\nauthorityKeyIdentifier=keyid\n")
    _run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={'localhost' if server else name}"], directory)
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
          "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext)], directory)
    return cert, key


def make_passwd(path: Path, users: dict[str, str]) -> Path:
    """Write a mosquitto password file for ``users`` (name -> password)."""
    if path.exists():
        path.unlink()
    path.touch()
    for user, password in users.items():
        _run(["mosquitto_passwd", "-b", str(path), user, password], path.parent)
    path.chmod(0o600)
    return path


@dataclasses.dataclass(frozen=True)
class Received:
    """One message a Collector saw."""

    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class Collector:
    """A paho subscriber that records every message on its topics, across reconnects."""

    def __init__(self, broker: Mosquitto, topics: list[str], *, client_id: Optional[str] = None,
                 persistent: bool = False, username: Optional[str] = None, password: Optional[str] = None,
                 tls: Optional[tuple[Path, Path, Path]] = None) -> None:
        """Connect to ``broker`` and subscribe at QoS 1; ``persistent`` keeps a broker-side session."""
        self.topics = topics
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        cid = client_id or f"collector-{os.getpid()}-{id(self)}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=not persistent,
                                  protocol=paho.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        wait_until(self.connected.is_set, what="the collector to connect and subscribe")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, props: Any) -> None:
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))

    def on(self, topic: str) -> list[Received]:
        """Messages received on ``topic`` so far, in arrival order."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Optional[Received]:
        """The latest message on ``topic``, or None."""
        got = self.on(topic)
        return got[-1] if got else None

    def wait_count(self, topic: str, count: int, timeout_s: float = 30.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived on ``topic``; return them all."""
        wait_until(lambda: len(self.on(topic)) >= count, timeout_s, what=f"{count} message(s) on {topic}")
        return self.on(topic)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def read_retained(broker: Mosquitto, topic: str, timeout_s: float = 10.0, **kwargs: Any) -> Optional[bytes]:
    """The retained message on ``topic`` as a fresh subscriber sees it (None when there is none)."""
    collector = Collector(broker, [topic], **kwargs)
    try:
        deadline = time.monotonic() + min(timeout_s, 2.0)
        while time.monotonic() < deadline:
            got = collector.on(topic)
            if got:
                return got[0].payload if got[0].retain else None
            time.sleep(0.05)
        return None
    finally:
        collector.close()


class SinkChild:
    """A child process running an MqttSink (see ``sink_child_main``), talking line commands."""

    def __init__(self, args: dict[str, Any]) -> None:
        """Start ``python -m tests.helpers.broker <json>`` from the repository root."""
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.broker", json.dumps(args)], cwd=root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)

    def command(self, line: str, timeout_s: float = 30.0) -> str:
        """Send one command and return the child's one-line answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not answer or not answer[0]:
            raise AssertionError(f"child gave no answer to {line!r} (exit code {self.proc.poll()})")
        return answer[0].strip()

    def kill9(self) -> None:
        """SIGKILL the child and reap it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        """Ask the child to close its sink and exit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self.command("quit", timeout_s=15)
                self.proc.wait(timeout=15)
            except (AssertionError, subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.proc.kill()
                self.proc.wait(timeout=10)


def sink_child_main(argv: list[str]) -> int:
    """Run an MqttSink from JSON args and obey stdin commands: alert ID, state S, wait_connected, depth, quit."""
    import logging

    from edge_monitor.config import MachineConfig, MqttConfig
    from edge_monitor.events import AlertEvent, StateEvent
    from edge_monitor.sinks.mqtt import MqttSink

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    args = json.loads(argv[0])
    machine = MachineConfig(id=args["machine"], site=args.get("site", "hall"))
    cfg = MqttConfig(enabled=True, host=args["host"], port=args["port"], prefix=args.get("prefix"),
                     keepalive_seconds=5)
    sink = MqttSink(cfg, machine, Path(args["state_dir"]), "test-model", 1.0,
                    reconnect_max_seconds=args.get("reconnect_max_seconds", 2))
    sink.start()
    for line in sys.stdin:
        verb, _, rest = line.strip().partition(" ")
        if verb == "alert":
            sink.handle(AlertEvent(id=rest, type="start", machine=machine.id, score=2.0, threshold=1.0,
                                   started_at_s=time.time(), model="test-model", episode=rest))
            print(f"queued {sink.outbox_depth}", flush=True)
        elif verb == "state":
            sink.handle(StateEvent(machine=machine.id, state=rest, at_s=time.time()))  # type: ignore[arg-type]
            print("ok", flush=True)
        elif verb == "wait_connected":
            deadline = time.monotonic() + 30
            while not sink.is_connected and time.monotonic() < deadline:
                time.sleep(0.05)
            print("connected" if sink.is_connected else "not-connected", flush=True)
        elif verb == "depth":
            print(str(sink.outbox_depth), flush=True)
        elif verb == "quit":
            sink.close()
            print("closed", flush=True)
            return 0
    sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(sink_child_main(sys.argv[1:]))
