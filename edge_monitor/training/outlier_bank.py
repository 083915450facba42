"""Outlier exposure with real sounds of other machines: the shipped bank and the logistic head.

The ``frames`` detector learns what its own machine sounds like from a few of its normal
clips. Alone, a distance to those clips cannot tell which differences matter. The bank gives it
a contrast: log-mel frames of *other* real machines' normal sound (fans, pumps, sliders, valves,
toy cars and conveyors, bearings, gearboxes; MIMII, DCASE 2020 and DCASE 2023 development
recordings, under their CC BY-SA / CC BY terms, see ``data/README.md``). A logistic regression
separates the machine's frames from the bank's; its log-odds of "another machine" for each
frame is the second part of the ``frames`` score. It is one more column of the same
FULLY_CONNECTED layer, so the model stays one int8 op.

The bank holds features, not audio: per clip a fixed random choice of frames, each the 128-band
dB log-mel of ``edge_monitor.features`` with its mean over bands removed, stored as int8 in
0.25 dB steps. Rebuild it with::

    python -m edge_monitor.training.outlier_bank --data ../shared/data/real

Each frame carries the key of the machine it came from (``"fan id_04"``; DCASE 2023 sections
as ``"dcase2023 fan section_00"``), so a benchmark can leave a machine's own sound out of its
bank (``load_bank(exclude=...)``). MIMII, DCASE 2020 and the MIMII 0 dB set share machine IDs,
so a key names the physical machine across those sets.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

BANK_PATH = Path(__file__).with_name("data") / "outlier_bank.npz"
FRAMES_PER_CLIP = 100
DB_STEP = 0.25            # storage resolution of the bank, dB
N_MELS = 128
LOGISTIC_L2 = 5.0         # ridge penalty 0.5 * l2 * |w|^2 on the standardised weights (scikit-learn C = 0.2)
MAX_NEWTON_STEPS = 25


class BankError(RuntimeError):
    """The outlier bank is missing or unreadable (a broken install)."""


def _level_free(frames: np.ndarray) -> np.ndarray:
    return frames - frames.mean(axis=1, keepdims=True)


def load_bank(exclude: Iterable[str] = (), path: Path = BANK_PATH) -> np.ndarray:
    """``(n, 128)`` float64 level-free dB frames of other machines, without the machines in ``exclude``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            codes, keys, owner = z["frames"], z["keys"], z["owner"]
    except (OSError, KeyError, ValueError) as exc:
        raise BankError(f"outlier bank {path} is missing or unreadable ({exc}); reinstall edge-monitor") from exc
    drop = {str(k) for k in exclude}
    keep_key = np.array([str(k) not in drop for k in keys], dtype=bool)
    return codes[keep_key[owner]].astype(np.float64) * DB_STEP


def bank_keys(path: Path = BANK_PATH) -> list[str]:
    """The machine keys the bank holds."""
    with np.load(path, allow_pickle=False) as z:
        return [str(k) for k in z["keys"]]


def fit_logistic(own: np.ndarray, other: np.ndarray, l2: float = LOGISTIC_L2) -> tuple[np.ndarray, float]:
    """Class-balanced, L2-penalised logistic regression of "other" (1) against "own" (0) by Newton steps.

    Returns ``(w, b)`` on the standardised inputs given; the bias is not penalised. Deterministic,
    no solver tolerance surprises: at most ``MAX_NEWTON_STEPS`` steps, each a 129 x 129 solve.
    """
    x = np.concatenate([own, other]).astype(np.float64)
    y = np.concatenate([np.zeros(len(own)), np.ones(len(other))])
    weight = np.where(y > 0, len(x) / (2.0 * len(other)), len(x) / (2.0 * len(own)))
    xb = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0
    theta = np.zeros(xb.shape[1])
    for _ in range(MAX_NEWTON_STEPS):
        z = np.clip(xb @ theta, -30.0, 30.0)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = xb.T @ (weight * (p - y)) + penalty * theta
        hess = (xb * (weight * p * (1.0 - p))[:, None]).T @ xb + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    return theta[:-1], float(theta[-1])


def machine_key(path: Path, data: Path) -> Optional[str]:
    """The bank key of a clip under the shared data layout, or None for a clip that is not normal sound."""
    rel = path.relative_to(data).as_posix()
    m = re.match(r"dcase2020_dev/(\w+)/normal_(id_\d+)_", rel)
    if m:
        return f"{m[1]} {m[2]}"
    m = re.match(r"mimii(?:_0db_ch0)?/(\w+)/(id_\d+)/normal/", rel)
    if m:
        return f"{m[1]} {m[2]}"
    m = re.match(r"dcase2023/(\w+)/\w+/section_(\d+)_\w+_normal_", rel)
    if m:
        return f"dcase2023 {m[1]} section_{m[2]}"
    return None


def build_bank(data: Path, out: Path, frames_per_clip: int = FRAMES_PER_CLIP, seed: int = 0) -> dict:
    """Write the bank from every normal clip under ``data`` that :func:`machine_key` names."""
    from edge_monitor.features import FeatureSpec, extract
    from edge_monitor.scoring import load_mono

    rng = np.random.default_rng(seed)
    spec = FeatureSpec(n_mels=N_MELS)
    keys: list[str] = []
    parts, owner, clips = [], [], []
    for path in sorted(data.rglob("*.wav")):
        key = machine_key(path, data)
        if key is None:
            continue
        frames = _level_free(extract(spec, load_mono(path, 16000, 0)).astype(np.float64))
        pick = np.sort(rng.choice(len(frames), min(frames_per_clip, len(frames)), replace=False))
        if key not in keys:
            keys.append(key)
        parts.append(np.clip(np.rint(frames[pick] / DB_STEP), -127, 127).astype(np.int8))
        owner.append(np.full(len(pick), keys.index(key), dtype=np.int16))
        clips.append(path.relative_to(data).as_posix())
    if not parts:
        raise BankError(f"no normal clips of known machines under {data}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, frames=np.concatenate(parts), owner=np.concatenate(owner), keys=np.array(keys),
                        clips=np.array(clips))
    return {"clips": len(clips), "machines": len(keys), "frames": int(sum(len(p) for p in parts)),
            "bytes": out.stat().st_size}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: rebuild the shipped bank from the shared real recordings."""
    p = argparse.ArgumentParser(description="Rebuild the outlier bank of other machines' normal sound.")
    p.add_argument("--data", type=Path, required=True, help="the real-recordings folder (MIMII / DCASE layout)")
    p.add_argument("--out", type=Path, default=BANK_PATH)
    p.add_argument("--frames-per-clip", type=int, default=FRAMES_PER_CLIP)
    args = p.parse_args(argv)
    try:
        info = build_bank(args.data, args.out, args.frames_per_clip)
    except BankError as exc:
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {info['frames']} frames from {info['clips']} clips of {info['machines']} machines, "
          f"{info['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
