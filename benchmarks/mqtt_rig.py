"""A private mosquitto broker on a free 127.0.0.1 port, for benchmarks (no pytest).

Packages: ``mosquitto``.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

HOST = "127.0.0.1"
_START_TIMEOUT_SECONDS = 20.0


def mosquitto_available() -> bool:
    """True when the ``mosquitto`` binary is installed."""
    return shutil.which("mosquitto") is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Broker:
    """One anonymous, non-persistent mosquitto process whose files live in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        """Choose a port and write the config; ``start()`` runs it."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = _free_port()
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        """Start the broker and wait until it accepts TCP connections; RuntimeError if it does not."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {HOST}\nuser {getpass.getuser()}\nallow_anonymous true\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\n")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on port {self.port}; see {self.log_path}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
