"""A tiny, dependency-free client for systemd's ``sd_notify`` protocol.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: an ``AF_UNIX``
datagram socket (a path, or an abstract name written with a leading ``@``).
Each notification is one datagram of ``KEY=VALUE`` lines. Outside systemd the
variable is absent and every call here is a no-op that returns ``False``, so
the daemon can call these functions unconditionally.

Watchdog: with ``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``); the service must send ``WATCHDOG=1`` more often than that,
conventionally every half interval, or systemd kills and restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Optional

_LOGGER = logging.getLogger(__name__)

_failures_logged: set[tuple[str, int]] = set()


def _socket_address(env: Mapping[str, str]) -> Optional[str]:
    """The address from ``$NOTIFY_SOCKET``, ``@`` mapped to a leading NUL byte; None if unset or unusable."""
    raw = env.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # systemd also allows vsock:CID:PORT (for VMs); a Pi service never gets one.
    _log_failure_once("unsupported", 0, f"unsupported NOTIFY_SOCKET address {raw!r}; systemd notifications disabled")
    return None


def _log_failure_once(kind: str, errno_value: int, message: str) -> None:
    """Warn about a notification failure the first time it happens, then stay quiet."""
    key = (kind, errno_value)
    if key in _failures_logged:
        _LOGGER.debug("%s", message)
        return
    _failures_logged.add(key)
    _LOGGER.warning("%s", message)


def notify(state: str) -> bool:
    """Send one notification (e.g. ``"READY=1"``, newline-separated ``KEY=VALUE`` lines).

    Returns True if the datagram was sent, False when not running under
    systemd or when sending failed (logged once per kind of failure, never raised).
    """
    address = _socket_address(os.environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        _log_failure_once("send", exc.errno or 0,
                          f"cannot notify systemd at NOTIFY_SOCKET={os.environ.get('NOTIFY_SOCKET')!r}: {exc}")
        return False
    return True


def ready() -> bool:
    """Tell systemd that start-up finished (``READY=1``); ``Type=notify`` units count as started only then."""
    return notify("READY=1")


def reloading() -> bool:
    """Tell systemd a configuration reload started; follow with ``ready()`` when it is done."""
    return notify("RELOADING=1")


def stopping() -> bool:
    """Tell systemd that an orderly shutdown began (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (newlines are replaced by spaces)."""
    one_line = " ".join(text.splitlines())
    return notify(f"STATUS={one_line}")


def watchdog() -> bool:
    """Pet the watchdog (``WATCHDOG=1``). Send only while the pipeline is really making progress."""
    return notify("WATCHDOG=1")


def watchdog_interval_s(env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """The watchdog timeout (seconds) systemd expects pings within, or None if the watchdog is off.

    Reads ``$WATCHDOG_USEC``; if ``$WATCHDOG_PID`` is set it must name this
    process (otherwise the watchdog belongs to another process). Ping at about
    half this interval.
    """
    env = os.environ if env is None else env
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            _LOGGER.warning("ignoring malformed WATCHDOG_PID=%r", pid_text)
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        _LOGGER.warning("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000.0
