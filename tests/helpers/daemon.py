"""Run ``python -m edge_monitor run`` as a real subprocess for end-to-end tests.

- ``write_config``: a YAML config in a test folder for the bundled demo model,
  with state and clips in that folder and any section overridden.
- ``DaemonProcess``: starts the daemon with extra environment (e.g. a private
  PulseAudio), logs to a file, and can be stopped, killed (-9) or waited for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "edge_monitor" / "demo"
DEMO_WAV = DEMO_DIR / "demo-fan.wav"
DEMO_MODEL = DEMO_DIR / "demo-fan.tflite"
DEMO_FAULT_ONSET_SECONDS = 15.0
DEMO_FAULT_END_SECONDS = 25.0


def write_config(directory: Path, *, machine_id: str = "e2e-fan", source: Optional[dict] = None,
                 mqtt: Optional[dict] = None, detection: Optional[dict] = None, health: Optional[dict] = None,
                 name: str = "machine.yaml") -> Path:
    """Write a config for the demo model; state and clips live in ``directory``. Returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "machine": {"id": machine_id, "site": "e2e", "type": "fan"},
        "model": {"path": str(DEMO_MODEL)},
        "source": source or {"type": "file", "path": str(DEMO_WAV), "realtime": False},
        "detection": {"trigger_k": 3, "trigger_n": 5, "clear_windows": 4, "cooldown_seconds": 5,
                      "window_hop_seconds": 0.5, **(detection or {})},
        "clips": {"enabled": True, "dir": str(directory / "clips"), "pre_seconds": 2, "post_seconds": 2},
        "state_dir": str(directory / "state"),
    }
    if health:
        data["health"] = health
    if mqtt:
        data["mqtt"] = {"enabled": True, "prefix": f"e2e/{machine_id}", "telemetry_seconds": 1,
                        "homeassistant": {"enabled": False}, **mqtt}
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class DaemonProcess:
    """One ``edge-monitor run`` child process; output goes to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, *, extra_args: tuple[str, ...] = (),
                 env: Optional[dict] = None) -> None:
        """Start the daemon on ``config``."""
        self.log_path = log_path
        merged = dict(os.environ)
        merged["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + merged.get("PYTHONPATH", "")
        merged["PYTHONUNBUFFERED"] = "1"
        merged.update(env or {})
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_monitor", "run", "--config", str(config),
                                      *extra_args], cwd=REPO_ROOT, env=merged, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def running(self) -> bool:
        """True while the child is alive."""
        return self.proc.poll() is None

    def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for the child to exit on its own; return its exit code."""
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (orderly shutdown) and wait; SIGKILL if it does not exit."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        """SIGKILL the child, like a power cut."""
        if self.running:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def log_text(self) -> str:
        """Everything the daemon printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
