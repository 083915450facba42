"""SYNTHETIC labelled datasets for the classifier and evaluation tests (mono 16-bit WAVs, 16 kHz).

Every clip comes from :mod:`edge_monitor.training.synthetic`; none is a recording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edge_monitor.training.synthetic import generate
from edge_monitor.wavio import write_wav

SAMPLE_RATE_HZ = 16000

CLEAR_CLASSES: dict[str, Optional[str]] = {"normal": None, "bearing": "bearing", "leak": "leak"}
"""Label folder -> synthetic fault (None: normal). At severity 0.9 these are easy to tell apart."""


def write_clip(path: Path, machine: str = "pump", anomaly: Optional[str] = None, *, seed: int,
               seconds: float = 4.0, severity: float = 0.9) -> Path:
    """Write one SYNTHETIC clip and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, generate(machine, seconds, SAMPLE_RATE_HZ, seed=seed, anomaly=anomaly, severity=severity),
              SAMPLE_RATE_HZ)
    return path


def write_label_folders(root: Path, classes: dict[str, Optional[str]] = CLEAR_CLASSES, *, per_label: int = 6,
                        seconds: float = 4.0, machine: str = "pump", seed0: int = 0) -> Path:
    """``root/<label>/NN.wav`` for every label, plus a SYNTHETIC.txt marker; returns ``root``."""
    for label, anomaly in classes.items():
        for i in range(per_label):
            write_clip(root / label / f"{i:02d}.wav", machine, anomaly, seed=seed0 + i, seconds=seconds)
    (root / "SYNTHETIC.txt").write_text("SYNTHETIC test clips\n")
    return root


def write_mimii_layout(root: Path, machine: str = "pump", *, n_normal: int = 5, n_abnormal: int = 5,
                       seconds: float = 4.0, long_seconds: float = 0.0, seed0: int = 100) -> Path:
    """``root/<machine>/id_00/{normal,abnormal}/*.wav``; optionally one long abnormal clip; returns ``root``."""
    base = root / machine / "id_00"
    for i in range(n_normal):
        write_clip(base / "normal" / f"{i:08d}.wav", machine, None, seed=seed0 + i, seconds=seconds)
    faults = ("bearing", "leak")
    for i in range(n_abnormal):
        write_clip(base / "abnormal" / f"{i:08d}.wav", machine, faults[i % 2], seed=seed0 + 50 + i,
                   seconds=seconds)
    if long_seconds:
        write_clip(base / "abnormal" / "long_recording.wav", machine, "bearing", seed=seed0 + 99,
                   seconds=long_seconds)
    return root
