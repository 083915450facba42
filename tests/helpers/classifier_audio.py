"""SYNTHETIC recordings and configs for the shipped classifier bundles (tests only).

Every WAV here comes from :mod:`edge_monitor.training.synthetic`; none is a recording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from edge_monitor.training.synthetic import generate, generate_sequence
from edge_monitor.wavio import write_wav

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
MACHINE_TYPE_MODEL = MODELS_DIR / "machine-type.tflite"
SAMPLE_RATE_HZ = 16000
FAULT_ONSET_SECONDS = 10.0
FAULT_END_SECONDS = 20.0


def write_fault_sequence(path: Path, machine: str, fault: str, *, seed: int = 1, severity: float = 0.9,
                         seconds: tuple[float, float, float] = (FAULT_ONSET_SECONDS,
                                                                FAULT_END_SECONDS - FAULT_ONSET_SECONDS, 10.0)) -> Path:
    """SYNTHETIC normal, ``fault``, normal (default 10 s each; mono, 16 kHz). Returns ``path``."""
    lead_s, fault_s, tail_s = seconds
    audio = generate_sequence(machine, (("normal", lead_s), (fault, fault_s, severity), ("normal", tail_s)),
                              SAMPLE_RATE_HZ, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, audio, SAMPLE_RATE_HZ)
    return path


def write_machine_clip(path: Path, machine: str, seconds: float = 12.0, *, seed: int = 5,
                       lead_silence_seconds: float = 0.0) -> Path:
    """SYNTHETIC normal clip of ``machine``, optionally preceded by digital silence. Returns ``path``."""
    import numpy as np
    audio = generate(machine, seconds, SAMPLE_RATE_HZ, seed=seed)
    if lead_silence_seconds:
        audio = np.concatenate((np.zeros(int(lead_silence_seconds * SAMPLE_RATE_HZ), dtype=np.float32), audio))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, audio, SAMPLE_RATE_HZ)
    return path


def write_classifier_config(directory: Path, model: str, wav: Path, *, machine_type: str = "fan",
                            machine_id: str = "cls-1", detection: Optional[dict] = None,
                            machine: Optional[dict] = None, mqtt: Optional[dict] = None,
                            source: Optional[dict] = None, name: str = "machine.yaml") -> Path:
    """A config using ``models/<model>.tflite`` on a file source; state lives in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "machine": {"id": machine_id, "site": "test", "type": machine_type, **(machine or {})},
        "model": {"path": str(MODELS_DIR / f"{model}.tflite")},
        "source": {"type": "file", "path": str(wav), **(source or {})},
        "detection": {"trigger_k": 3, "trigger_n": 5, "clear_windows": 4, "cooldown_seconds": 5,
                      "window_hop_seconds": 0.5, **(detection or {})},
        "clips": {"enabled": False},
        "state_dir": str(directory / "state"),
    }
    if mqtt:
        data["mqtt"] = {"enabled": True, "prefix": f"test/{machine_id}", "telemetry_seconds": 1,
                        "homeassistant": {"enabled": False}, **mqtt}
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """``python -m edge_monitor ARGS`` from the repo root; text output captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s)


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` that is a JSON object (event lines), parsed."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def events_of(lines: list[dict], kind: str) -> list[dict]:
    """The event lines of one kind (``alert``, ``state``, ``health``, ``score``)."""
    return [e for e in lines if e.get("event") == kind]
