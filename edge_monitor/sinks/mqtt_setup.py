"""What an MQTT connection needs before and while it is made: the password, TLS, a paho client,
and one-line, secret-free explanations of failed attempts."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_monitor.config import MqttConfig, TlsConfig
from edge_monitor.secrets import SecretError, read_secret, secret_path

_LOGGER = logging.getLogger("edge_monitor.sinks.mqtt")


class MqttSetupError(Exception):
    """The MQTT settings cannot work (missing secret or certificate, bad prefix). Names the setting."""


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
            check_tls(cfg.tls)
        except MqttSetupError as exc:
            problems.append(str(exc))
    return problems


def new_client(client_id: str) -> paho.Client:
    """A paho 2.x client: callback API v2, MQTT 3.1.1, clean session."""
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                       protocol=paho.MQTTv311)


_PAHO_LOGGER = logging.getLogger("edge_monitor.sinks.mqtt.paho")


def on_paho_log(client: paho.Client, userdata: Any, level: int, message: str) -> None:
    """paho's own log lines: debug only, except exceptions raised inside our callbacks."""
    # Socket errors are reported once per distinct failure by the sink itself; paho would log every retry.
    if message.startswith("Caught exception in"):
        _PAHO_LOGGER.error("%s", message)
    else:
        _PAHO_LOGGER.debug("%s", message)


def describe_connect_error(exc: Optional[BaseException], host: str, tls: bool = False) -> str:
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


def check_tls(tls: TlsConfig) -> None:
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


def configure_tls(client: paho.Client, tls: TlsConfig) -> None:
    """Load the CA and client certificate; MqttSetupError names the bad setting."""
    check_tls(tls)
    try:
        client.tls_set(ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise MqttSetupError(f"mqtt.tls: cannot load the certificates or key: {exc}") from None
    if tls.insecure:
        _LOGGER.warning("MQTT: mqtt.tls.insecure is set: the broker's host name is not verified")
        client.tls_insecure_set(True)
