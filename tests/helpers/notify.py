"""A stand-in for systemd's notification socket: what a ``Type=notify`` service sends, as it arrives.

``NotifySocket`` binds an ``AF_UNIX`` datagram socket in a short private folder
(socket paths are limited to 107 bytes) and records every datagram on a thread.
Pass ``env`` to the service; add ``WATCHDOG_USEC`` to switch its watchdog on.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from pathlib import Path


class NotifySocket:
    """Collects ``sd_notify`` datagrams (``READY=1``, ``WATCHDOG=1``, ...) in arrival order."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="em-notify-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """The environment a service needs to talk to this socket."""
        return {"NOTIFY_SOCKET": str(self.path)}

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.extend(data.decode("utf-8", errors="replace").splitlines())

    def messages(self) -> list[str]:
        """Every ``KEY=VALUE`` line received so far."""
        with self._lock:
            return list(self._messages)

    def count(self, line: str) -> int:
        """How many times ``line`` (e.g. ``"WATCHDOG=1"``) arrived."""
        return self.messages().count(line)

    def close(self) -> None:
        """Stop receiving and remove the socket."""
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)
