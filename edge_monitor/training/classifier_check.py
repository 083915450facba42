"""Measure the shipped classifiers on real recordings they never saw.

Run::

    python -m edge_monitor.training.classifier_check --data ../shared/data/real [--models models/]

* ``normal-vs-abnormal``: every labelled real clip (the folders of ``per_machine``), file score =
  mean of the window scores as ``edge-monitor score``; flagged when above the bundle's threshold.
  Printed per set: anomalous clips flagged / anomalous clips, normal clips flagged / normal clips.
* ``machine-type``: every real clip whose machine type is one of the classifier's labels; the
  prediction is the label with the highest mean window probability. Printed per true type.

Channel 0 of multi-channel files (one microphone).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

SKIP_SETS = ("mimii_fan_rerecorded", "dcase2020_unlabelled_machine")


def labelled_clips(data: Path) -> list[tuple[str, str, int, Path]]:
    """``(set, machine type, 1 if anomalous, path)`` for every labelled clip under ``data``."""
    out = []
    for f in sorted(data.rglob("*.wav")):
        rel = f.relative_to(data)
        if len(rel.parts) < 3 or rel.parts[0] in SKIP_SETS:
            continue
        out.append((rel.parts[0], rel.parts[1].lower(), 1 if re.search(r"anomaly|abnormal", str(rel)) else 0, f))
    return out


def check_normal_vs_abnormal(model: Path, clips: list[tuple[str, str, int, Path]]) -> dict[str, list[int]]:
    """Per set: ``[anomalous flagged, anomalous, normal flagged, normal]``."""
    from edge_monitor.model import load_model
    from edge_monitor.scoring import score_file

    runner = load_model(model)
    out: dict[str, list[int]] = {}
    for s, _t, lab, f in clips:
        flagged = int(score_file(runner, f, channel=0).anomalous)
        row = out.setdefault(s, [0, 0, 0, 0])
        row[0 if lab else 2] += flagged
        row[1 if lab else 3] += 1
    return out


def check_machine_type(model: Path, clips: list[tuple[str, str, int, Path]]) -> dict[str, list[int]]:
    """Per true type: ``[correct, clips]``."""
    from edge_monitor.features import extract, windows
    from edge_monitor.model import load_model
    from edge_monitor.scoring import load_mono

    runner = load_model(model)
    spec, labels = runner.bundle.spec, runner.bundle.labels
    out: dict[str, list[int]] = {}
    for _s, t, _lab, f in clips:
        if t not in labels:
            continue
        wins = windows(spec, extract(spec, load_mono(f, spec.sample_rate, 0)), 16)
        probs = np.mean([runner.probabilities(w) for w in wins], axis=0)
        row = out.setdefault(t, [0, 0])
        row[0] += int(labels[int(np.argmax(probs))] == t)
        row[1] += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    args = p.parse_args(argv)
    clips = labelled_clips(args.data)
    if not clips:
        print(f"classifier_check: no labelled clips under {args.data}", file=sys.stderr)
        return 2
    nva = check_normal_vs_abnormal(args.models / "normal-vs-abnormal.tflite", clips)
    print("normal-vs-abnormal | anomalous clips flagged | normal clips flagged")
    for s, (af, a, nf, n) in sorted(nva.items()):
        print(f"{s} | {af}/{a} | {nf}/{n}")
    tot = np.sum(list(nva.values()), axis=0)
    print(f"total | {tot[0]}/{tot[1]} | {tot[2]}/{tot[3]}")
    mt = check_machine_type(args.models / "machine-type.tflite", clips)
    print("machine-type | correct")
    for t, (ok, n) in sorted(mt.items()):
        print(f"{t} | {ok}/{n}")
    print(f"total | {sum(v[0] for v in mt.values())}/{sum(v[1] for v in mt.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
