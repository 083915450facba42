"""Evaluate a model bundle on a labelled dataset: ``edge-monitor evaluate --model M.tflite --data DIR --report OUT/``.

Works for every bundle kind (autoencoder, embedding, classifier). Labels come
from the dataset layout (:mod:`edge_monitor.training.datasets`): MIMII
``normal/abnormal`` folders, DCASE ``normal/anomaly`` file names, or one
sub-folder per label. A clip is *anomalous* when its label is not ``normal``;
for a classifier evaluated on its own labels, when its label is one of the
bundle's alert labels.

Each file is scored like ``edge-monitor score`` does: the file score is the
**mean** of its window scores (windows 0.5 s apart), and a file is flagged when
its score is above the threshold. The report holds:

* ``report.json``: model identity, dataset summary, AUC, pAUC (FPR <= 0.1,
  DCASE-style and McClish), precision/recall at the threshold, confusion
  matrices, per-machine AUC, and every file's score;
* ``index.html`` with PNG plots: ROC curve, score histograms with the
  threshold, score over time, confusion matrices (rendered by
  :mod:`edge_monitor.training.report_html`, which imports matplotlib lazily).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from edge_monitor.bundle import BundleError
from edge_monitor.features import extract, windows
from edge_monitor.scoring import DEFAULT_WINDOW_HOP_SECONDS, ScoringError, hop_frames_for, load_mono
from edge_monitor.training import metrics
from edge_monitor.training.datasets import NORMAL, UNKNOWN, DatasetError, channel_arg, load_dataset

_LOGGER = logging.getLogger(__name__)

PAUC_MAX_FPR = 0.1
PROGRESS_EVERY_FILES = 20
"""One progress line on stderr per this many scored files."""
LONG_FILE_SECONDS = 30.0
"""Files at least this long get their own score-over-time plot."""


class EvaluationError(ValueError):
    """The model, dataset or options can't be evaluated. One sentence naming the problem."""


@dataclasses.dataclass
class FileResult:
    """One scored file."""

    file: str
    label: str
    machine: str
    anomalous_truth: Optional[bool]        # None when the label can't be mapped to normal/anomalous
    score: float                           # mean of window scores
    window_scores: np.ndarray              # (n_windows,) float64
    seconds: float
    predicted_label: Optional[str] = None  # classifier: arg-max of mean probabilities
    probabilities: Optional[dict[str, float]] = None

    def to_json(self, threshold: float) -> dict[str, Any]:
        """The row stored in report.json (window scores are summarised, not listed)."""
        row: dict[str, Any] = {"file": self.file, "label": self.label, "machine": self.machine,
                               "anomalous_truth": self.anomalous_truth, "score": self.score,
                               "flagged": bool(self.score > threshold), "seconds": round(self.seconds, 3),
                               "windows": int(self.window_scores.size),
                               "window_score_max": float(self.window_scores.max())}
        if self.predicted_label is not None:
            row["predicted_label"] = self.predicted_label
            row["probabilities"] = self.probabilities
        return row


def _truth_rule(bundle: Any, labels: list[str]) -> tuple[Callable[[str], Optional[bool]], str]:
    """How a dataset label maps to anomalous/normal, and a sentence saying so."""
    if bundle.kind == "classifier" and set(labels) <= set(bundle.labels):
        if bundle.meta.get("purpose") == "identify":
            return (lambda _lb: None), ("identify-only classifier: no normal/anomalous ground truth; "
                                        "see the label confusion matrix")
        alerts = set(bundle.alert_labels)
        return (lambda lb: lb in alerts), f"anomalous = label in the bundle's alert labels ({', '.join(sorted(alerts))})"
    if NORMAL not in labels and len(labels) > 1:
        return (lambda _lb: None), (f"no '{NORMAL}' label in the dataset ({', '.join(labels)}), "
                                    "so there is no normal/anomalous ground truth")
    return (lambda lb: lb != NORMAL), f"anomalous = every label except '{NORMAL}'"


def score_dataset(runner: Any, clips: list[Any], *, channel: Any = "mean",
                  window_hop_seconds: float = DEFAULT_WINDOW_HOP_SECONDS,
                  truth: Callable[[str], Optional[bool]] = lambda lb: lb != NORMAL,
                  progress: Optional[Callable[[str], None]] = None,
                  progress_every: int = PROGRESS_EVERY_FILES) -> list[FileResult]:
    """Score every clip; EvaluationError names the first file that can't be read or is too short."""
    bundle = runner.bundle
    spec = bundle.spec
    hop = hop_frames_for(runner, window_hop_seconds)
    is_classifier = bundle.kind == "classifier"
    alert_idx = [bundle.labels.index(a) for a in bundle.alert_labels] if is_classifier else []
    results = []
    started = time.monotonic()
    for i, clip in enumerate(clips):
        try:
            audio = load_mono(clip.path, spec.sample_rate, channel)
        except ScoringError as exc:
            raise EvaluationError(str(exc)) from None
        ws = windows(spec, extract(spec, audio), hop)
        if len(ws) == 0:
            raise EvaluationError(f"{clip.path}: too short to score ({audio.size / spec.sample_rate:.2f} s; "
                                  f"a window needs {spec.window_seconds:.2f} s)")
        predicted, probs_mean = None, None
        if is_classifier:
            probs = np.array([runner.probabilities(w) for w in ws])
            scores = probs[:, alert_idx].sum(axis=1)
            mean = probs.mean(axis=0)
            predicted = bundle.labels[int(np.argmax(mean))]
            probs_mean = {lb: round(float(p), 4) for lb, p in zip(bundle.labels, mean)}
        else:
            scores = runner.process_many(ws)
        results.append(FileResult(file=str(clip.path), label=clip.label, machine=clip.machine,
                                  anomalous_truth=truth(clip.label), score=float(np.mean(scores)),
                                  window_scores=np.asarray(scores, dtype=np.float64),
                                  seconds=audio.size / spec.sample_rate, predicted_label=predicted,
                                  probabilities=probs_mean))
        if progress and ((i + 1) % progress_every == 0 or i + 1 == len(clips)):
            progress(f"scored {i + 1}/{len(clips)} files ({time.monotonic() - started:.0f} s)")
    return results


def _binary_metrics(results: list[FileResult], threshold: float) -> dict[str, Any]:
    """AUC, pAUC and threshold statistics over files with a ground truth; notes instead when undefined."""
    rows = [r for r in results if r.anomalous_truth is not None]
    out: dict[str, Any] = {"files": len(rows), "normal": sum(1 for r in rows if not r.anomalous_truth),
                           "anomalous": sum(1 for r in rows if r.anomalous_truth)}
    if not rows:
        out["note"] = "no files with a normal/anomalous ground truth"
        return out
    y = np.array([r.anomalous_truth for r in rows])
    s = np.array([r.score for r in rows])
    st = metrics.at_threshold(y, s, threshold)
    out["at_threshold"] = st.to_dict()
    out["confusion"] = {"labels": ["normal", "anomalous"], "matrix": [[st.tn, st.fp], [st.fn, st.tp]]}
    if 0 < y.sum() < y.size:
        out["auc"] = metrics.roc_auc(y, s)
        out["pauc"] = metrics.partial_auc(y, s, PAUC_MAX_FPR)
        out["pauc_mcclish"] = metrics.partial_auc(y, s, PAUC_MAX_FPR, standardized=True)
        out["pauc_max_fpr"] = PAUC_MAX_FPR
        fpr, tpr, thr = metrics.roc_curve(y, s)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                      "thresholds": [None if not np.isfinite(t) else float(t) for t in thr]}
    else:
        out["note"] = ("AUC and pAUC need both normal and anomalous files; this dataset has "
                       f"{out['normal']} normal and {out['anomalous']} anomalous")
    return out


def _per_machine(results: list[FileResult]) -> dict[str, dict[str, Any]]:
    """AUC and pAUC per machine type (where a machine type is known and both classes are present)."""
    out: dict[str, dict[str, Any]] = {}
    for machine in sorted({r.machine for r in results if r.machine}):
        rows = [r for r in results if r.machine == machine and r.anomalous_truth is not None]
        y = np.array([r.anomalous_truth for r in rows], dtype=bool)
        entry: dict[str, Any] = {"files": len(rows), "normal": int((~y).sum()), "anomalous": int(y.sum())}
        if rows and 0 < y.sum() < y.size:
            s = np.array([r.score for r in rows])
            entry["auc"] = metrics.roc_auc(y, s)
            entry["pauc"] = metrics.partial_auc(y, s, PAUC_MAX_FPR)
        out[machine] = entry
    return out


def _label_confusion(results: list[FileResult], bundle_labels: list[str]) -> Optional[dict[str, Any]]:
    """Classifier on a dataset with its own labels: true label vs predicted label (files)."""
    rows = [r for r in results if r.predicted_label is not None and r.label in bundle_labels]
    if not rows:
        return None
    m, order = metrics.confusion_matrix([r.label for r in rows], [r.predicted_label for r in rows],
                                        labels=bundle_labels)
    return {"labels": order, "matrix": m.tolist(),
            "accuracy": float(np.mean([r.label == r.predicted_label for r in rows])), "files": len(rows)}


def evaluate(model_path: Union[str, Path], data_dir: Union[str, Path], report_dir: Union[str, Path], *,
             channel: Any = "mean", threshold: Optional[float] = None, layout: Optional[str] = None,
             window_hop_seconds: float = DEFAULT_WINDOW_HOP_SECONDS, plots: bool = True,
             progress: Optional[Callable[[str], None]] = None,
             progress_every: int = PROGRESS_EVERY_FILES) -> dict[str, Any]:
    """Score a dataset with a bundle, write ``report.json``, PNG plots and ``index.html``; return the report dict.

    Raises EvaluationError (one sentence) for an unusable model, dataset or file.
    """
    from edge_monitor.model import load_model

    say = progress or _LOGGER.info
    try:
        runner = load_model(model_path)
    except BundleError as exc:  # ModelError is a BundleError
        raise EvaluationError(str(exc)) from None
    bundle = runner.bundle
    clips, unlabelled = _labelled_clips(data_dir, layout, say)
    labels = sorted({c.label for c in clips})
    truth, truth_rule = _truth_rule(bundle, labels)
    thr = bundle.threshold if threshold is None else float(threshold)
    say(f"evaluating {bundle.ident} ({bundle.kind}) on {len(clips)} files from {data_dir}")
    results = score_dataset(runner, clips, channel=channel, window_hop_seconds=window_hop_seconds, truth=truth,
                            progress=say, progress_every=progress_every)

    per_label = {lb: sum(1 for r in results if r.label == lb) for lb in labels}
    report: dict[str, Any] = {
        "model": {"path": str(model_path), "name": bundle.name, "version": bundle.version, "kind": bundle.kind,
                  "ident": bundle.ident, "sha256": bundle.sha256, "threshold": thr,
                  "threshold_from": "command line" if threshold is not None else "bundle",
                  "threshold_basis": bundle.meta.get("threshold_basis"), "labels": bundle.labels or None,
                  "alert_labels": bundle.alert_labels or None, "purpose": bundle.meta.get("purpose"),
                  "score": (bundle.meta.get("score") or {}).get("type"),
                  "feature_spec": bundle.meta.get("feature_spec"), "training": bundle.meta.get("training")},
        "dataset": {"path": str(data_dir), "files": len(results), "labels": per_label,
                    "machines": {m: sum(1 for r in results if r.machine == m)
                                 for m in sorted({r.machine for r in results if r.machine})},
                    "seconds": round(sum(r.seconds for r in results), 1), "skipped_unlabelled": len(unlabelled),
                    "truth_rule": truth_rule},
        "scoring": {"file_score": "mean of window scores", "window_hop_seconds": window_hop_seconds,
                    "flagged_when": "file score > threshold", "channel": channel},
        "binary": _binary_metrics(results, thr),
        "per_machine": _per_machine(results),
        "label_confusion": (_label_confusion(results, bundle.labels)
                            if bundle.kind == "classifier" and set(labels) <= set(bundle.labels) else None),
        "files": [r.to_json(thr) for r in results],
        "plots": {},
    }
    _write_report(Path(report_dir), report, results, runner.bundle.spec, window_hop_seconds, plots)
    _summarise(report, say)
    return report


def _labelled_clips(data_dir: Union[str, Path], layout: Optional[str],
                    say: Callable[[str], None]) -> tuple[list, list]:
    """``(labelled clips, unlabelled clips)`` of a dataset; EvaluationError when nothing is labelled."""
    try:
        clips = load_dataset(data_dir, layout)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    unlabelled = [c for c in clips if c.label == UNKNOWN]
    clips = [c for c in clips if c.label != UNKNOWN]
    if unlabelled:
        say(f"skipping {len(unlabelled)} unlabelled files (e.g. {unlabelled[0].path})")
    if not clips:
        raise EvaluationError(f"{data_dir}: no labelled WAV files (labels come from normal/abnormal folders, "
                              "DCASE normal/anomaly file names, or one sub-folder per label)")
    return clips, unlabelled


def _write_report(out: Path, report: dict[str, Any], results: list, spec: Any, window_hop_seconds: float,
                  plots: bool) -> None:
    """``report.json``, the PNG plots and ``index.html`` into ``out``."""
    from edge_monitor.training.report_html import write_index, write_plots

    try:
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            report["plots"] = write_plots(out, report, results, spec, window_hop_seconds,
                                          long_file_seconds=LONG_FILE_SECONDS)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default))
        write_index(out, report)
    except OSError as exc:
        raise OSError(f"cannot write the report to {out}: {exc.strerror or exc}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _summarise(report: dict[str, Any], say: Callable[[str], None]) -> None:
    b = report["binary"]
    if "auc" in b:
        st = b["at_threshold"]
        say(f"AUC {b['auc']:.3f}  pAUC(FPR<={b['pauc_max_fpr']}) {b['pauc']:.3f}  at threshold "
            f"{st['threshold']:.4g}: precision {st['precision']:.3f} recall {st['recall']:.3f} "
            f"(tp {st['tp']} fp {st['fp']} tn {st['tn']} fn {st['fn']})")
    elif b.get("note"):
        say(b["note"])
    lc = report.get("label_confusion")
    if lc:
        say(f"label accuracy {lc['accuracy']:.3f} on {lc['files']} files")
    for m, e in report["per_machine"].items():
        if "auc" in e:
            say(f"  {m}: AUC {e['auc']:.3f} pAUC {e['pauc']:.3f} ({e['normal']} normal, {e['anomalous']} anomalous)")


# ---------------------------------------------------------------- CLI



def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``edge-monitor evaluate``."""
    parser.add_argument("--model", "-m", required=True, metavar="M.tflite", help="model bundle to evaluate")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="labelled dataset: MIMII normal/abnormal folders, DCASE file names, "
                             "or one sub-folder per label")
    parser.add_argument("--report", required=True, metavar="OUT", help="folder for index.html, report.json and PNGs")
    parser.add_argument("--channel", type=channel_arg, default="mean",
                        help="channel of multi-channel WAVs: an index, or 'mean' (default) to average them")
    parser.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    parser.add_argument("--window-hop", type=float, default=DEFAULT_WINDOW_HOP_SECONDS,
                        help=f"seconds between scored windows (default {DEFAULT_WINDOW_HOP_SECONDS})")
    parser.add_argument("--layout", default=None,
                        choices=("mimii", "dcase2020", "dcase2021", "folders"),
                        help="dataset layout (default: detected)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: 0 ok, 2 bad model/data/options (one sentence on stderr), 1 failure."""
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.window_hop <= 0:
        say(f"error: --window-hop must be positive, got {args.window_hop}")
        return 2
    try:
        evaluate(args.model, args.data, args.report, channel=args.channel, threshold=args.threshold,
                 layout=args.layout, window_hop_seconds=args.window_hop, progress=say)
    except EvaluationError as exc:
        say(f"error: {exc}")
        return 2
    except ImportError as exc:
        say(f"error: the report's plots need matplotlib: pip install 'edge-monitor[train]' ({exc})")
        return 1
    except OSError as exc:
        say(f"error: {exc}")
        return 1
    say(f"report: {Path(args.report) / 'index.html'}")
    return 0


__all__ = ["evaluate", "score_dataset", "add_evaluate_arguments", "run_evaluate", "EvaluationError", "FileResult"]
