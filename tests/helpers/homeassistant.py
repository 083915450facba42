"""A real Home Assistant for tests: its own venv (``scripts/ha-venv.sh``), a fresh config folder, REST access.

- The MQTT integration is configured by writing ``.storage/core.config_entries`` before the first start.
- Only ``http``, ``api`` and ``onboarding`` are loaded besides it; Home Assistant runs with ``--skip-pip``
  (the venv already has every requirement), so nothing is downloaded at run time.
- The access token comes from the onboarding API: create the owner, trade the auth code for a token.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-ha"


def ha_venv() -> Path:
    """The Home Assistant venv (``EDGE_MONITOR_HA_VENV`` or ``.venv-ha``)."""
    return Path(os.environ.get("EDGE_MONITOR_HA_VENV", DEFAULT_VENV))


class HomeAssistant:
    """One ``hass`` process on 127.0.0.1:``port`` with its config in ``config_dir``."""

    def __init__(self, config_dir: Path, port: int, broker_host: str, broker_port: int) -> None:
        """Write the configuration (nothing runs yet)."""
        self.config_dir = config_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.token: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        storage = config_dir / ".storage"
        storage.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: edge-monitor check\n  latitude: 0\n  longitude: 0\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  currency: EUR\n  country: DE\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {port}\n"
            "api:\nonboarding:\nfrontend:\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n")
        entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 1, "domain": "mqtt",
                 "title": f"{broker_host}:{broker_port}", "data": {"broker": broker_host, "port": broker_port},
                 "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False,
                 "source": "user", "unique_id": None, "disabled_by": None}
        (storage / "core.config_entries").write_text(json.dumps(
            {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}))
        self.log_path = config_dir / "hass.out"

    def start(self, timeout_s: float = 180.0) -> float:
        """Start ``hass``, wait for the HTTP API, onboard and get a token. Returns the seconds it took."""
        started = time.monotonic()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(ha_venv() / "bin" / "hass"), "-c", str(self.config_dir), "--skip-pip"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        client_id = f"{self.base}/"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hass exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                answer = self._post("/api/onboarding/users", {"client_id": client_id, "name": "Check",
                                                              "username": "check", "password": "check-pass-1",
                                                              "language": "en"}, auth=False)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Home Assistant did not answer within {timeout_s} s:\n{self.log_tail()}") from None
                time.sleep(0.5)
        form = urllib.parse.urlencode({"grant_type": "authorization_code", "code": answer["auth_code"],
                                       "client_id": client_id}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.base}/auth/token", data=form), timeout=30) as r:
            self.token = json.loads(r.read())["access_token"]
        return time.monotonic() - started

    def _post(self, path: str, body: dict[str, Any], auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(f"{self.base}{path}", data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        """GET an API path with the token; None on 404."""
        request = urllib.request.Request(f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def state(self, entity_id: str) -> Optional[dict[str, Any]]:
        """``/api/states/<entity_id>`` (None: no such entity)."""
        return self.get(f"/api/states/{entity_id}")

    def call(self, domain: str, service: str, data: dict[str, Any]) -> Any:
        """Call a service through the REST API."""
        return self._post(f"/api/services/{domain}/{service}", data)

    def entity_registry(self) -> list[dict[str, Any]]:
        """The entities Home Assistant has saved (``.storage/core.entity_registry``; written a few s after changes)."""
        path = self.config_dir / ".storage" / "core.entity_registry"
        try:
            return json.loads(path.read_text())["data"]["entities"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    def log_tail(self, chars: int = 4000) -> str:
        """The end of Home Assistant's output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM and wait (Home Assistant saves its registries on the way out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
