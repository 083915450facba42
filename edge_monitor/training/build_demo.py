"""Rebuild the bundled demo: a SYNTHETIC fan recording (normal → bearing fault → normal) and its model.

``python -m edge_monitor.training.build_demo --out edge_monitor/demo``

The model is trained only on separate synthetic normal fan audio (other seeds of the
same fan instance), exactly as a user trains on their own machine's healthy sound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edge_monitor.training.synthetic import generate, generate_sequence
from edge_monitor.wavio import write_wav

RATE_HZ = 16000
DEMO_SEGMENTS = (("normal", 15.0), ("bearing", 10.0), ("normal", 15.0))


def build(out_dir: Path, *, normal_clips: int = 18, clip_seconds: float = 10.0, seed: int = 7,
          method: str = "frames") -> int:
    """Write ``demo-fan.wav`` and ``demo-fan.tflite`` into ``out_dir``; returns an exit code."""
    from edge_monitor.training import unsupervised

    out_dir.mkdir(parents=True, exist_ok=True)
    demo = generate_sequence("fan", DEMO_SEGMENTS, RATE_HZ, seed=seed, instance=0, severity=0.8, snr_db=10.0)
    write_wav(out_dir / "demo-fan.wav", demo, RATE_HZ)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(normal_clips):
            clip = generate("fan", clip_seconds, RATE_HZ, seed=1000 + i, instance=0, snr_db=10.0)
            write_wav(Path(tmp) / f"normal_{i:03d}.wav", clip, RATE_HZ)
        summary = unsupervised.train_unsupervised(
            [tmp], out_dir / "demo-fan.tflite", method=method, seed=seed, name="demo-fan",
            machine_type="fan", progress=lambda line: print(line, file=sys.stderr))
    print(summary)
    return 0


def main() -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "demo")
    p.add_argument("--method", default="frames")
    args = p.parse_args()
    return build(args.out, method=args.method)


if __name__ == "__main__":
    sys.exit(main())
