"""A private mosquitto broker on a free 127.0.0.1 port, for benchmarks and tests (no pytest here).

``Mosquitto`` runs ``mosquitto -c <generated config>`` and can be stopped and
restarted on the same port to simulate outages (with persistence on, subscribers'
persistent sessions survive). ``tests/helpers/broker.py`` adds the pytest fixture,
certificates and a collecting subscriber.

Packages: ``mosquitto``.
"""

from __future__ import annotations

import dataclasses
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional


def mosquitto_available() -> bool:
    """True when the ``mosquitto`` binary is installed."""
    return shutil.which("mosquitto") is not None


HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Tls:
    """Server-side TLS files for mosquitto."""

    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool = True


class Mosquitto:
    """One mosquitto broker process for one test, restartable on the same port."""

    def __init__(self, workdir: Path, *, persistence: bool = True, tls: Optional[Tls] = None,
                 password_file: Optional[Path] = None) -> None:
        """Configure (not start) a broker whose files live in ``workdir``."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.persistence = persistence
        self.tls = tls
        self.password_file = password_file
        self.log_path = self.workdir / "mosquitto.log"
        self._proc: Optional[subprocess.Popen] = None

    def config_text(self) -> str:
        """The mosquitto.conf for the current settings."""
        lines = [
            f"listener {self.port} {HOST}",
            f"user {getpass.getuser()}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        if self.password_file is not None:
            lines += [f"password_file {self.password_file}", "allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}",
                      f"require_certificate {'true' if self.tls.require_client_cert else 'false'}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        assert self._proc is None, "already running"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"mosquitto exited with {code}:\n{self.log_text()[-2000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    pass
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log_text()[-2000:]}") from None
                time.sleep(0.05)
                continue
            # the port answers; make sure it is mosquitto that does (another process may hold a port we
            # were told was free, and then mosquitto exits on "address already in use")
            time.sleep(0.1)
            if self._proc.poll() is None:
                return

    def stop(self) -> None:
        """Stop the broker (SIGTERM, which saves persistence; SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port, with the (possibly changed) settings."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything mosquitto logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
