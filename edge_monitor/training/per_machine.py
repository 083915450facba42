"""The per-machine benchmark on real recordings: every machine ID trained on its own normal audio only.

Run::

    python -m edge_monitor.training.per_machine --data ../shared/data/real --out reports/per_machine

It prints Markdown tables (also ``<out>/per_machine.md``; raw numbers in ``<out>/per_machine.json``).

Protocol (deterministic; see docs/detection.md):

* A **group** is one machine ID that has both normal and anomalous recordings:
  ``dcase2020_dev/<type>/{normal,anomaly}_id_XX_*.wav``, ``dcase2023/<type>/{train,test}/``
  (one section per type), ``mimii/<type>/id_XX/{normal,abnormal}/`` and
  ``mimii_0db_ch0/<type>/id_XX/{normal,abnormal}/``.
* **Leave one normal out** (groups with two or more normal clips): each normal clip in turn is
  held out; the model trains on the ID's other normal clips and scores the held-out clip and all
  the ID's anomalous clips. File score = mean of the window scores (one 1.06 s window every 0.5 s),
  exactly as ``edge-monitor score``. AUC and pAUC are computed per fold and averaged over the folds.
* **Time split** (groups with a single normal clip: mimii_0db_ch0, MIMII valve id_06): train on
  the first 70 % of the normal clip, score the last 30 % against the anomalous clips **at window
  level** (every window carries its file's label). A weaker check, reported in its own column.
* Every method trains through the product path where it is a product method (``train_unsupervised``:
  int8 conversion, out-of-fold calibration) and is scored through ``ModelRunner``. The peer
  ``librosa_lw`` is the plain script a user would write: librosa log-mel frames (128 mels,
  n_fft 1024, hop 512, power dB), a scikit-learn Ledoit-Wolf covariance, per-frame Mahalanobis
  distance, averaged over the same windows. It needs the ``[dev]`` extra. Its threshold is
  calibrated with the same 5-fold out-of-fold procedure and tail model as the product.
* **Operating point**: at each method's calibrated default threshold (1 false alarm a week),
  with the daemon's detector (3 of 5 windows), how many anomalous clips raise an alert and how
  many held-out normal clips do.
* **False-alarm check**: ``dcase2020_unlabelled_machine/id_00``: train on the first 40 clips,
  score the other 35.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_monitor.training.metrics import MetricsError, partial_auc, roc_auc

DEFAULT_METHODS = ("frames", "frames_bank", "librosa_lw", "dense_ae", "stats")
PEERS = ("librosa_lw", "dense_ae", "stats")  # what the product is measured against
BOOTSTRAP_RESAMPLES = 10000
BANK_SUFFIX = "_bank"  # a product method trained with the outlier bank (train --outlier-bank)
SPLIT_TRAIN_FRACTION = 0.7
WINDOW_HOP_SECONDS = 0.5
RATE_HZ = 16000


# ---------------------------------------------------------------- groups

def find_groups(data: Path) -> list[dict[str, Any]]:
    """Every machine ID under ``data`` with normal and anomalous clips, as
    ``{"name", "set", "type", "normals": [Path], "anomalies": [Path]}`` sorted by set and name."""
    groups: list[dict[str, Any]] = []
    by_id: dict[tuple[str, str], dict[str, list[Path]]] = {}
    for f in sorted((data / "dcase2020_dev").glob("*/*.wav")):
        m = re.match(r"(normal|anomaly)_(id_\d+)_", f.name)
        if m:
            g = by_id.setdefault((f.parent.name, m[2]), {"normals": [], "anomalies": []})
            g["normals" if m[1] == "normal" else "anomalies"].append(f)
    for (mtype, mid), g in sorted(by_id.items()):
        groups.append({"name": f"{mtype} {mid}", "set": "dcase2020_dev", "type": mtype, **g})
    for folder in ("mimii_0db_ch0", "mimii"):
        for idd in sorted((data / folder).glob("*/id_*")):
            normals = sorted((idd / "normal").glob("*.wav"))
            anomalies = sorted((idd / "abnormal").glob("*.wav"))
            groups.append({"name": f"{idd.parent.name} {idd.name}", "set": folder, "type": idd.parent.name,
                           "normals": normals, "anomalies": anomalies})
    for tdir in sorted((data / "dcase2023").glob("*")):
        files = sorted(tdir.glob("*/*.wav"))
        groups.append({"name": f"{tdir.name} section_00", "set": "dcase2023", "type": tdir.name,
                       "normals": [f for f in files if "_normal_" in f.name],
                       "anomalies": [f for f in files if "_anomaly_" in f.name]})
    return [g for g in groups if g["normals"] and g["anomalies"]]


def _mono(path: Path) -> np.ndarray:
    from edge_monitor.scoring import load_mono

    return load_mono(path, RATE_HZ, 0)  # channel 0: what one microphone gives (MIMII raw files have 8)


def folds(group: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """``[{"train": [Path], "test": [(Path, label)], "level": "file"|"window"}]`` for one group."""
    from edge_monitor.wavio import write_wav

    normals, anomalies = group["normals"], group["anomalies"]
    if len(normals) >= 2:
        return [{"train": [p for j, p in enumerate(normals) if j != i],
                 "test": [(held, 0)] + [(a, 1) for a in anomalies], "level": "file"}
                for i, held in enumerate(normals)]
    audio = _mono(normals[0])
    cut = int(round(SPLIT_TRAIN_FRACTION * audio.size))
    stem = tmp / re.sub(r"\W+", "_", f"{group['set']}_{group['name']}")
    head, tail = Path(f"{stem}_train.wav"), Path(f"{stem}_heldout.wav")
    write_wav(head, audio[:cut], RATE_HZ)
    write_wav(tail, audio[cut:], RATE_HZ)
    return [{"train": [head], "test": [(tail, 0)] + [(a, 1) for a in anomalies], "level": "window"}]


# ---------------------------------------------------------------- methods

class _Scored:
    """A trained detector: window scores for a file, and its calibrated threshold."""

    def __init__(self, window_scores: Callable[[Path], np.ndarray], threshold: float) -> None:
        self.window_scores = window_scores
        self.threshold = threshold


def bank_key(group: dict[str, Any]) -> str:
    """The outlier-bank key of a group's machine (``outlier_bank.machine_key``), left out of its own bank."""
    return f"dcase2023 {group['name']}" if group["set"] == "dcase2023" else str(group["name"])


Fitter = Callable[[list[Path], Path, Sequence[str]], _Scored]


def _product_method(method: str) -> Fitter:
    base = method[:-len(BANK_SUFFIX)] if method.endswith(BANK_SUFFIX) else method

    def fit(train: list[Path], tmp: Path, exclude: Sequence[str] = ()) -> _Scored:
        from edge_monitor.model import load_model
        from edge_monitor.scoring import score_file
        from edge_monitor.training.unsupervised import train_unsupervised

        out = tmp / f"{method}.tflite"
        # the machine under test is never in its own outlier bank: the bank holds *other* machines only
        summary = train_unsupervised(train, out, method=base, channel=0, seed=0, progress=lambda _m: None,
                                     outlier_bank=base != method, outlier_exclude=exclude)
        runner = load_model(out)
        return _Scored(lambda p: np.asarray(score_file(runner, p, channel=0).windows), summary["threshold"])
    return fit


class LibrosaLedoitWolf:
    """The peer: librosa log-mel frames, scikit-learn Ledoit-Wolf, mean per-frame Mahalanobis over each window."""

    n_mels, n_fft, hop, window_frames = 128, 1024, 512, 32

    def features(self, audio: np.ndarray) -> np.ndarray:
        """``(frames, 128)`` dB log-mel, librosa defaults except ``center=False``."""
        import librosa

        mel = librosa.feature.melspectrogram(y=audio, sr=RATE_HZ, n_fft=self.n_fft, hop_length=self.hop,
                                             n_mels=self.n_mels, power=2.0, center=False)
        return librosa.power_to_db(mel, top_db=None).T.astype(np.float64)

    def fit(self, audios: Sequence[np.ndarray]) -> LibrosaLedoitWolf:
        """Fit mean and precision on the frames of normal audio."""
        from sklearn.covariance import LedoitWolf

        x = np.concatenate([self.features(a) for a in audios])
        est = LedoitWolf().fit(x)
        self._mean, self._precision = est.location_, est.precision_
        return self

    def window_scores(self, audio: np.ndarray, hop_frames: int = 16) -> np.ndarray:
        """Mean frame distance of each 32-frame window, ``hop_frames`` apart."""
        d = self.features(audio) - self._mean
        dist = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self._precision, d), 0.0))
        n = 1 + (dist.size - self.window_frames) // hop_frames
        if n < 1:
            return np.zeros(0)
        csum = np.concatenate([[0.0], np.cumsum(dist)])
        starts = np.arange(n) * hop_frames
        return (csum[starts + self.window_frames] - csum[starts]) / self.window_frames


def _fit_librosa_lw(train: list[Path], tmp: Path, exclude: Sequence[str] = ()) -> _Scored:
    from edge_monitor.training.calibrate import calibrate_threshold
    from edge_monitor.training.unsupervised import CALIBRATION_FOLDS, _Clip, calibration_folds

    clips = [_Clip(str(p), _mono(p)) for p in train]
    held: list[np.ndarray] = []
    for fold_train, fold_held in calibration_folds(clips, CALIBRATION_FOLDS):
        peer = LibrosaLedoitWolf().fit([c.audio for c in fold_train])
        held += [peer.window_scores(c.audio, 2) for c in fold_held]
    threshold, _ = calibrate_threshold(np.concatenate(held), target_alarms_per_hour=1 / 168,
                                       window_hop_seconds=WINDOW_HOP_SECONDS,
                                       window_seconds=(31 * 512 + 1024) / RATE_HZ, k=3, n=5,
                                       heldout_files=len(clips))
    peer = LibrosaLedoitWolf().fit([c.audio for c in clips])
    return _Scored(lambda p: peer.window_scores(_mono(p)), threshold)


def method_fitter(method: str) -> Fitter:
    """The fit function of a method name (a ``train`` method, or ``librosa_lw``)."""
    return _fit_librosa_lw if method == "librosa_lw" else _product_method(method)


# ---------------------------------------------------------------- running

def _auc(labels: list[int], scores: list[float]) -> tuple[Optional[float], Optional[float]]:
    try:
        return roc_auc(labels, scores), partial_auc(labels, scores, 0.1)
    except MetricsError:
        return None, None


def run_fold(fold: dict[str, Any], method: str, tmp: Path, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Train one method on one fold (without the machines in ``exclude`` in its bank) and score its test clips."""
    from edge_monitor.training.calibrate import count_alerts

    t0 = time.process_time()
    scored = method_fitter(method)(fold["train"], tmp, exclude)
    train_cpu_s = time.process_time() - t0
    per_file = [(lab, scored.window_scores(p)) for p, lab in fold["test"]]
    if fold["level"] == "file":
        labels = [lab for lab, _ in per_file]
        values = [float(np.mean(w)) for _, w in per_file]
    else:
        labels = [lab for lab, w in per_file for _ in w]
        values = [float(v) for _, w in per_file for v in w]
    auc, pauc = _auc(labels, values)
    alerted = [(lab, count_alerts(w, scored.threshold) > 0) for lab, w in per_file]
    return {"auc": auc, "pauc": pauc, "threshold": scored.threshold, "train_cpu_s": train_cpu_s,
            "anomalous_alerted": sum(a for lab, a in alerted if lab), "anomalous": sum(lab for lab, _ in alerted),
            "normal_alerted": sum(a for lab, a in alerted if not lab),
            "normal": sum(1 - lab for lab, _ in alerted)}


def run_group(group: dict[str, Any], methods: Sequence[str], tmp: Path, say: Callable[[str], None]) -> dict:
    """All folds of one group for every method; AUC/pAUC averaged over folds."""
    gtmp = Path(tempfile.mkdtemp(dir=tmp))
    fl = folds(group, gtmp)
    out: dict[str, Any] = {"name": group["name"], "set": group["set"], "type": group["type"],
                           "level": fl[0]["level"], "folds": len(fl), "normals": len(group["normals"]),
                           "anomalies": len(group["anomalies"]), "methods": {}}
    for method in methods:
        res = [run_fold(f, method, gtmp, (bank_key(group),)) for f in fl]
        aucs = [r["auc"] for r in res if r["auc"] is not None]
        paucs = [r["pauc"] for r in res if r["pauc"] is not None]
        out["methods"][method] = {
            "auc": float(np.mean(aucs)) if aucs else None, "pauc": float(np.mean(paucs)) if paucs else None,
            "train_cpu_s": float(np.mean([r["train_cpu_s"] for r in res])),
            **{k: int(sum(r[k] for r in res)) for k in ("anomalous_alerted", "anomalous", "normal_alerted",
                                                         "normal")}}
    say(f"{group['set']:14s} {group['name']:22s} " + " ".join(
        f"{m}={out['methods'][m]['auc']:.2f}" for m in methods if out["methods"][m]["auc"] is not None))
    return out


def false_alarm_check(data: Path, method: str, tmp: Path) -> Optional[dict[str, Any]]:
    """Train on the first 40 clips of id_00, score the other 35 (all normal)."""
    from edge_monitor.training.calibrate import count_alerts

    files = sorted((data / "dcase2020_unlabelled_machine" / "id_00" / "normal").glob("*.wav"))
    if len(files) < 45:
        return None
    train, test = files[:40], files[40:]
    scored = method_fitter(method)(train, Path(tempfile.mkdtemp(dir=tmp)), ())
    windows = [scored.window_scores(p) for p in test]
    alerts = [count_alerts(w, scored.threshold) for w in windows]
    return {"method": method, "train_files": len(train), "test_files": len(test), "threshold": scored.threshold,
            "files_over_threshold": int(sum(float(np.mean(w)) > scored.threshold for w in windows)),
            "files_with_alert": int(sum(a > 0 for a in alerts)), "alerts": int(sum(alerts))}


# ---------------------------------------------------------------- report

def _mean(values: list[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summarise(groups: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Means over IDs (all, file-level groups, window-level groups, per set) and over machine types."""
    out: dict[str, Any] = {}
    for m in methods:
        aucs = [(g, g["methods"][m]["auc"], g["methods"][m]["pauc"]) for g in groups]
        by_type: dict[str, list[float]] = {}
        for g, a, _ in aucs:
            if a is not None:
                by_type.setdefault(g["type"].lower(), []).append(a)
        out[m] = {
            "mean_auc_ids": _mean([a for _, a, _ in aucs]),
            "mean_pauc_ids": _mean([p for _, _, p in aucs]),
            "mean_auc_file_level": _mean([a for g, a, _ in aucs if g["level"] == "file"]),
            "mean_auc_window_level": _mean([a for g, a, _ in aucs if g["level"] == "window"]),
            "mean_auc_types": _mean([float(np.mean(v)) for v in by_type.values()]),
            "by_set": {s: _mean([a for g, a, _ in aucs if g["set"] == s]) for s in sorted({g["set"] for g in groups})},
            "by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
            "ids": sum(a is not None for _, a, _ in aucs),
            **{k: int(sum(g["methods"][m][k] for g in groups)) for k in ("anomalous_alerted", "anomalous",
                                                                          "normal_alerted", "normal")},
            "train_cpu_s_mean": float(np.mean([g["methods"][m]["train_cpu_s"] for g in groups])),
        }
    return out


def margins(groups: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Each non-peer method against the best peer in the run (highest mean AUC over IDs): the difference
    of mean AUC with a paired bootstrap 95 % interval over machine IDs (seed 0), and how many IDs
    it is better, worse or tied on. ``[]`` without a peer in ``methods``."""
    ids = [g for g in groups if all(g["methods"][m]["auc"] is not None for m in methods)]
    peers = [m for m in methods if m in PEERS]
    if not peers or not ids:
        return []
    best = max(peers, key=lambda m: float(np.mean([g["methods"][m]["auc"] for g in ids])))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(ids), size=(BOOTSTRAP_RESAMPLES, len(ids)))
    out = []
    for m in methods:
        if m in PEERS:
            continue
        diff = np.array([g["methods"][m]["auc"] - g["methods"][best]["auc"] for g in ids])
        lo, hi = np.percentile(diff[picks].mean(axis=1), [2.5, 97.5])
        out.append({"method": m, "peer": best, "ids": len(ids), "difference": float(diff.mean()),
                    "ci95": [float(lo), float(hi)], "better": int((diff > 0).sum()),
                    "worse": int((diff < 0).sum()), "tied": int((diff == 0).sum())})
    return out


def _margin_lines(groups: list[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    rows = margins(groups, methods)
    if not rows:
        return []
    lines = ["", f"### Margin over the best peer ({rows[0]['peer']}), mean AUC over {rows[0]['ids']} IDs", "",
             "| method | difference | paired bootstrap 95 % interval | IDs better / worse / tied |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['difference']:+.3f} | {r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f} | "
                     f"{r['better']} / {r['worse']} / {r['tied']} |")
    return lines


def render(groups: list[dict[str, Any]], methods: Sequence[str], fa: list[dict[str, Any]]) -> str:
    """Markdown tables: per ID, means, per type, operating point, false-alarm check."""
    summ = summarise(groups, methods)
    head = "| " + " | ".join(methods) + " |"
    sep = "|---" * len(methods) + "|"
    lines = ["### Per machine ID (AUC / pAUC)", "",
             "| set | machine ID | level | normal / anomalous clips (folds) " + head, "|---|---|---|---" + sep]
    for g in groups:
        cells = " | ".join(f"{_f(g['methods'][m]['auc'])} / {_f(g['methods'][m]['pauc'])}" for m in methods)
        lines.append(f"| {g['set']} | {g['name']} | {g['level']} | {g['normals']} / {g['anomalies']} "
                     f"({g['folds']}) | {cells} |")
    lines += ["", "### Means", "", "| mean | " + " | ".join(methods) + " |", "|---" + sep]
    rows = [("AUC over all IDs", "mean_auc_ids"), ("pAUC over all IDs", "mean_pauc_ids"),
            ("AUC, leave-one-out IDs (file level)", "mean_auc_file_level"),
            ("AUC, time-split IDs (window level)", "mean_auc_window_level"),
            ("AUC over machine types", "mean_auc_types")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_f(summ[m][key]) for m in methods) + " |")
    for s in summ[methods[0]]["by_set"]:
        n = sum(g["set"] == s for g in groups)
        lines.append(f"| AUC, {s} ({n} IDs) | " + " | ".join(_f(summ[m]["by_set"][s]) for m in methods) + " |")
    lines.append("| training CPU s per fold (mean) | " + " | ".join(
        f"{summ[m]['train_cpu_s_mean']:.1f}" for m in methods) + " |")
    lines += _margin_lines(groups, methods)
    lines += ["", "### Per machine type (mean AUC over its IDs)", "", "| type | IDs | " + " | ".join(methods) + " |",
              "|---|---" + sep]
    for t in summ[methods[0]]["by_type"]:
        n = sum(g["type"].lower() == t for g in groups)
        lines.append(f"| {t} | {n} | " + " | ".join(_f(summ[m]["by_type"].get(t)) for m in methods) + " |")
    lines += ["", "### At the calibrated default threshold (1 false alarm a week; 3 of 5 windows)", "",
              "| | " + " | ".join(methods) + " |", "|---" + sep,
              "| anomalous clips that alert | " + " | ".join(
                  f"{summ[m]['anomalous_alerted']}/{summ[m]['anomalous']}" for m in methods) + " |",
              "| held-out normal clips that alert | " + " | ".join(
                  f"{summ[m]['normal_alerted']}/{summ[m]['normal']}" for m in methods) + " |"]
    if fa:
        lines += ["", "### False-alarm check: dcase2020_unlabelled_machine/id_00 (train 40 clips, score 35)", "",
                  "| method | threshold | clips over threshold (mean score) | clips with a 3-of-5 alert | alerts |",
                  "|---|---|---|---|---|"]
        for r in fa:
            lines.append(f"| {r['method']} | {r['threshold']:.4g} | {r['files_over_threshold']}/{r['test_files']} | "
                         f"{r['files_with_alert']}/{r['test_files']} | {r['alerts']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m edge_monitor.training.per_machine``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="folder holding dcase2020_dev/, mimii/ ...")
    parser.add_argument("--out", required=True, type=Path, help="folder for per_machine.md and per_machine.json")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated (default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--sets", default="", help="only these sets, comma-separated (default: all)")
    parser.add_argument("--skip-false-alarms", action="store_true", help="skip the id_00 check")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    groups = find_groups(args.data)
    if args.sets:
        keep = {s.strip() for s in args.sets.split(",")}
        groups = [g for g in groups if g["set"] in keep]
    if not groups:
        print(f"per_machine: no machine ID with normal and anomalous clips under {args.data}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"{len(groups)} machine IDs; methods {', '.join(methods)}")
    with tempfile.TemporaryDirectory(prefix="edge-monitor-per-machine-") as tmpd:
        results = [run_group(g, methods, Path(tmpd), say) for g in groups]
        fa = [] if args.skip_false_alarms else [r for r in (false_alarm_check(args.data, m, Path(tmpd))
                                                            for m in methods) if r]
    text = render(results, methods, fa)
    (args.out / "per_machine.md").write_text(text)
    (args.out / "per_machine.json").write_text(json.dumps(
        {"groups": results, "summary": summarise(results, methods), "margins": margins(results, methods),
         "false_alarms": fa}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
