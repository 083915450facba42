"""Compare the unsupervised methods on the same splits of real and SYNTHETIC recordings.

Run::

    python -m edge_monitor.training.compare --data /work/shared/data/real --out reports/compare

and it prints Markdown tables (also written to ``<out>/compare.md``, raw numbers to
``<out>/compare.json``). Every model goes through the shipped path: trained by
:func:`edge_monitor.training.unsupervised.train_unsupervised`, converted to int8,
and scored through ``ModelRunner`` with ``score_file`` (file score = mean of the
window scores, one window every 0.5 s). Seeds are fixed, so a rerun gives the same
numbers up to TensorFlow's float non-associativity.

Protocol (all splits deterministic):

* **DCASE 2023** ``dcase2023/<type>``: train on ``train/*.wav``, test on
  ``test/*.wav`` (label from ``anomaly`` in the name). There are 1-2 test files per
  type, so the AUC is computed over **windows** (every window labelled with its
  file's label); the file-level result is given as "anomalous file ranked above
  the normal one" (yes/no).
* **MIMII valve**: train on ``valve/id_00/normal/*`` plus the first 6 s of
  ``valve/id_06/normal/*``; test on the last 4 s of that file (normal) against
  ``valve/id_06/abnormal/*`` (window-level, mean of 8 channels).
* **SYNTHETIC** (``edge_monitor.training.synthetic``, not recordings): per machine
  type, train on 6 normal clips of 10 s (instance 0), test on 6 other normal clips
  against each typical fault at severities 0.2, 0.5 and 0.8 (2 clips each);
  file-level AUC.
* **False alarms** ``dcase2020_unlabelled_machine/id_00/normal``: train on the first
  40 clips (sorted), score the other 35: files whose mean score exceeds the
  threshold, and alerts from the real k-of-n detector (3 of 5, 0.5 s hop).

pAUC is DCASE-style (area under the ROC for FPR in [0, 0.1], divided by 0.1;
random = 0.05, perfect = 1.0). There are very few real anomalies here (5 DCASE
files, 4 MIMII files): the real-data numbers show tendencies, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edge_monitor.training.metrics import MetricsError, partial_auc, roc_auc
from edge_monitor.training.unsupervised import METHODS

_LOGGER = logging.getLogger(__name__)
SYNTH_SEVERITIES = (0.2, 0.5, 0.8)


def _auc_pair(labels: Sequence[int], scores: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    try:
        return roc_auc(labels, scores), partial_auc(labels, scores, 0.1)
    except MetricsError:
        return None, None


def _train(paths: Sequence[Path], out: Path, method: str, seed: int, progress: Any) -> dict:
    from edge_monitor.training.unsupervised import train_unsupervised

    t0 = time.perf_counter()
    summary = train_unsupervised([str(p) for p in paths], out, method=method, seed=seed, progress=progress)
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def _score(model: Path, files: Sequence[Path]) -> list[Any]:
    from edge_monitor.model import load_model
    from edge_monitor.scoring import score_file

    runner = load_model(model)
    try:
        return [score_file(runner, f) for f in files]
    finally:
        runner.close()


def _cut(src: Path, dst: Path, start_s: float, end_s: Optional[float]) -> Path:
    from edge_monitor.wavio import read_wav, write_wav

    audio, rate = read_wav(src)
    a = int(start_s * rate)
    b = audio.shape[0] if end_s is None else int(end_s * rate)
    write_wav(dst, audio[a:b], rate)
    return dst


def _real_cases(data: Path, tmp: Path) -> list[dict]:
    """``[{name, train: [paths], test: [(path, label)], level}]`` for the real recordings present."""
    cases = []
    d23 = data / "dcase2023"
    if d23.is_dir():
        for mdir in sorted(p for p in d23.iterdir() if p.is_dir()):
            train = sorted((mdir / "train").glob("*.wav"))
            test = sorted((mdir / "test").glob("*.wav"))
            if train and test:
                cases.append({"name": f"DCASE23 {mdir.name}", "train": train,
                              "test": [(f, int("_anomaly_" in f.name)) for f in test]})
    valve = data / "mimii" / "valve"
    n06 = sorted((valve / "id_06" / "normal").glob("*.wav"))
    a06 = sorted((valve / "id_06" / "abnormal").glob("*.wav"))
    n00 = sorted((valve / "id_00" / "normal").glob("*.wav"))
    if n06 and a06:
        cut_dir = tmp / "mimii_valve"
        cut_dir.mkdir(parents=True, exist_ok=True)
        train = n00 + [_cut(f, cut_dir / f"train_{f.name}", 0.0, 6.0) for f in n06]
        held = [(_cut(f, cut_dir / f"test_{f.name}", 6.0, None), 0) for f in n06] + [(f, 1) for f in a06]
        cases.append({"name": "MIMII valve", "train": train, "test": held})
    return cases


def _synthetic_cases(tmp: Path, quick: bool) -> list[dict]:
    from edge_monitor.training import synthetic
    from edge_monitor.wavio import write_wav

    cases = []
    n_train, n_norm, per = (6, 4, 1) if quick else (6, 6, 2)
    for machine in synthetic.MACHINES:
        d = tmp / "synthetic" / machine
        (d / "train").mkdir(parents=True, exist_ok=True)
        (d / "test").mkdir(parents=True, exist_ok=True)
        train = []
        for i in range(n_train):
            p = d / "train" / f"normal_{i:02d}.wav"
            write_wav(p, synthetic.generate(machine, 10.0, 16000, seed=i), 16000)
            train.append(p)
        test = []
        for i in range(n_norm):
            p = d / "test" / f"normal_{i:02d}.wav"
            write_wav(p, synthetic.generate(machine, 10.0, 16000, seed=1000 + i), 16000)
            test.append((p, 0))
        for fault in synthetic.TYPICAL_ANOMALIES[machine]:
            for sev in SYNTH_SEVERITIES:
                for j in range(per):
                    p = d / "test" / f"{fault}_{sev:.1f}_{j}.wav"
                    write_wav(p, synthetic.generate(machine, 10.0, 16000, seed=2000 + j, anomaly=fault,
                                                    severity=sev), 16000)
                    test.append((p, 1))
        cases.append({"name": f"SYNTH {machine}", "train": train, "test": test, "synthetic": True})
    return cases


def _evaluate_case(case: dict, method: str, tmp: Path, seed: int, progress: Any) -> dict:
    from edge_monitor.training.calibrate import count_alerts

    model = tmp / f"{case['name'].replace(' ', '_')}_{method}.tflite"
    summary = _train(case["train"], model, method, seed, progress)
    scored = _score(model, [p for p, _ in case["test"]])
    labels = [lab for _, lab in case["test"]]
    file_scores = [s.score for s in scored]
    res: dict[str, Any] = {"case": case["name"], "method": method, "train_s": summary["wall_s"],
                           "threshold": summary["threshold"], "n_test_normal": labels.count(0),
                           "n_test_anomalous": labels.count(1), "labels": labels}
    res["file_auc"], res["file_pauc"] = _auc_pair(labels, file_scores)
    win_labels = [lab for s, lab in zip(scored, labels) for _ in s.windows]
    win_scores = [w for s in scored for w in s.windows]
    res["window_auc"], res["window_pauc"] = _auc_pair(win_labels, win_scores)
    res["file_flagged"] = [bool(s.anomalous) for s in scored]
    res["file_alerted"] = [count_alerts(s.windows, summary["threshold"]) > 0 for s in scored]
    if case.get("synthetic"):
        by_sev = {}
        for sev in SYNTH_SEVERITIES:
            keep = [i for i, (p, lab) in enumerate(case["test"]) if lab == 0 or f"_{sev:.1f}_" in p.name]
            by_sev[str(sev)] = _auc_pair([labels[i] for i in keep], [file_scores[i] for i in keep])[0]
        res["auc_by_severity"] = by_sev
    return res


def _false_alarm_case(data: Path, method: str, tmp: Path, seed: int, progress: Any) -> Optional[dict]:
    from edge_monitor.training.calibrate import count_alerts

    folder = data / "dcase2020_unlabelled_machine" / "id_00" / "normal"
    files = sorted(folder.glob("*.wav"))
    if len(files) < 45:
        return None
    train, test = files[:40], files[40:]
    model = tmp / f"id00_{method}.tflite"
    summary = _train(train, model, method, seed, progress)
    scored = _score(model, test)
    thr = summary["threshold"]
    alerts = [count_alerts(s.windows, thr) for s in scored]
    seconds = 10.0 * len(test)
    return {"method": method, "train_files": len(train), "train_audio_s": summary["seconds"],
            "train_s": summary["wall_s"], "test_files": len(test), "threshold": thr,
            "files_over_threshold": int(sum(s.anomalous for s in scored)),
            "files_with_alert": int(sum(a > 0 for a in alerts)), "alerts": int(sum(alerts)),
            "alerts_per_hour": sum(alerts) * 3600.0 / seconds,
            "windows_over_threshold": int(sum(np.sum(np.asarray(s.windows) > thr) for s in scored)),
            "windows": int(sum(len(s.windows) for s in scored)),
            "expected_false_alarms_per_hour": summary["threshold_basis"]["expected_false_alarms_per_hour"]}


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render(results: list[dict], false_alarms: list[dict], methods: Sequence[str]) -> str:
    """The Markdown tables."""
    cases = list(dict.fromkeys(r["case"] for r in results))
    idx = {(r["case"], r["method"]): r for r in results}
    lines = [] if not cases else ["### Detection (AUC / pAUC, pAUC DCASE-style at FPR <= 0.1)", "",
             "| case | test files (normal/anomalous) | level | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    means: dict[str, dict[str, list[float]]] = {m: {"real": [], "synth": []} for m in methods}
    for c in cases:
        first = next(idx[(c, m)] for m in methods if (c, m) in idx)
        synthetic = c.startswith("SYNTH")
        level = "file" if synthetic else "window"
        cells = []
        for m in methods:
            r = idx.get((c, m))
            if r is None:
                cells.append("-")
                continue
            a, p = (r["file_auc"], r["file_pauc"]) if synthetic else (r["window_auc"], r["window_pauc"])
            cell = f"{_fmt(a)} / {_fmt(p)}"
            if not synthetic and r["file_auc"] is not None:
                cell += " (file: " + ("yes" if r["file_auc"] > 0.5 else "no") + ")"
            cells.append(cell)
            if a is not None:
                means[m]["synth" if synthetic else "real"].append(a)
        lines.append(f"| {c} | {first['n_test_normal']}/{first['n_test_anomalous']} | {level} | "
                     + " | ".join(cells) + " |")
    for kind, label in (("real", "mean AUC, real (window level)"), ("synth", "mean AUC, SYNTHETIC (file level)")):
        if not any(means[m][kind] for m in methods):
            continue
        lines.append(f"| **{label}** | | | " + " | ".join(
            _fmt(float(np.mean(means[m][kind])) if means[m][kind] else None) for m in methods) + " |")
    train_s = {m: [r["train_s"] for r in results if r["method"] == m] for m in methods}
    if cases:
        lines.append("| mean training time per case (s, incl. int8 conversion and calibration) | | | " + " | ".join(
            f"{np.mean(train_s[m]):.1f}" if train_s[m] else "-" for m in methods) + " |")
    synth = [r for r in results if r.get("auc_by_severity")]
    if synth:
        lines += ["", "### SYNTHETIC: mean AUC over machine types by fault severity", "",
                  "| severity | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for sev in SYNTH_SEVERITIES:
            row = []
            for m in methods:
                vals = [r["auc_by_severity"][str(sev)] for r in synth if r["method"] == m
                        and r["auc_by_severity"][str(sev)] is not None]
                row.append(_fmt(float(np.mean(vals)) if vals else None))
            lines.append(f"| {sev} | " + " | ".join(row) + " |")
    lines += _threshold_table(results, methods)
    if false_alarms:
        lines += ["", "### False alarms on real normal audio (DCASE 2020 id_00: train 40 clips, test 35 = 350 s)", "",
                  "| method | threshold | files over threshold (mean score) | files with a 3-of-5 alert | alerts/hour "
                  "| windows over threshold | expected FA/hour (calibration) | training time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for fa in false_alarms:
            lines.append(f"| {fa['method']} | {fa['threshold']:.4g} | {fa['files_over_threshold']}/{fa['test_files']} "
                         f"| {fa['files_with_alert']}/{fa['test_files']} | {fa['alerts_per_hour']:.1f} "
                         f"| {fa['windows_over_threshold']}/{fa['windows']} "
                         f"| {fa['expected_false_alarms_per_hour']:.2g} | {fa['train_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _threshold_table(results: list[dict], methods: Sequence[str]) -> list[str]:
    """Files raising a 3-of-5 alert at each model's calibrated default threshold (1 false alarm a week)."""
    rows = [r for r in results if "file_alerted" in r]
    if not rows:
        return []
    lines = ["", "### At the calibrated default threshold (target 1 false alarm a week; 3 of 5 windows, 0.5 s hop)",
             "", "Each cell: anomalous files with an alert / anomalous files, then normal test files with an "
             "alert / normal test files.", "",
             "| case | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    totals = {m: {k: [0, 0] for k in ("real", "synth")} for m in methods}
    totals_normal = {m: {k: [0, 0] for k in ("real", "synth")} for m in methods}
    for case in dict.fromkeys(r["case"] for r in rows):
        kind = "synth" if case.startswith("SYNTH") else "real"
        cells = []
        for m in methods:
            r = next((r for r in rows if r["case"] == case and r["method"] == m), None)
            if r is None:
                cells.append("-")
                continue
            n_anom = r["n_test_anomalous"]
            hit = sum(a for a, lab in zip(r["file_alerted"], r["labels"]) if lab == 1)
            fa = sum(a for a, lab in zip(r["file_alerted"], r["labels"]) if lab == 0)
            totals[m][kind][0] += hit
            totals[m][kind][1] += n_anom
            totals_normal[m][kind][0] += fa
            totals_normal[m][kind][1] += r["n_test_normal"]
            cells.append(f"{hit}/{n_anom} · {fa}/{r['n_test_normal']}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    for kind, label in (("real", "total, real"), ("synth", "total, SYNTHETIC")):
        if any(totals[m][kind][1] or totals_normal[m][kind][1] for m in methods):
            lines.append(f"| **{label}** | " + " | ".join(
                f"{totals[m][kind][0]}/{totals[m][kind][1]} · {totals_normal[m][kind][0]}/{totals_normal[m][kind][1]}"
                for m in methods) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run the comparison, print Markdown, write compare.md and compare.json."""
    ap = argparse.ArgumentParser(prog="python -m edge_monitor.training.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/real"), help="real recordings folder")
    ap.add_argument("--out", type=Path, default=Path("reports/compare"), help="output folder")
    ap.add_argument("--methods", default=",".join(["dense_ae", "conv_ae", "oe_cnn", "stats"]),
                    help="comma-separated methods (first one is the baseline column)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-false-alarms", action="store_true")
    ap.add_argument("--only-false-alarms", action="store_true", help="only the id_00 false-alarm check")
    ap.add_argument("--quick", action="store_true", help="fewer synthetic test clips")
    ap.add_argument("--verbose", action="store_true", help="show training progress")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"compare: unknown method(s) {bad}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    results: list[dict[str, Any]] = []
    false_alarms: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edge-monitor-compare-") as tmpd:
        tmp = Path(tmpd)
        cases = []
        if not args.skip_real:
            if not args.data.is_dir():
                print(f"compare: {args.data} does not exist (use --skip-real)", file=sys.stderr)
                return 2
            cases += _real_cases(args.data, tmp)
        if not args.skip_synthetic:
            cases += _synthetic_cases(tmp, args.quick)
        if args.only_false_alarms:
            cases = []
        for case in cases:
            for m in methods:
                r = _evaluate_case(case, m, tmp, args.seed, progress)
                print(f"{case['name']:<22} {m:<9} window AUC {_fmt(r['window_auc'])} file AUC {_fmt(r['file_auc'])} "
                      f"({r['train_s']:.1f} s)", file=sys.stderr, flush=True)
                results.append(r)
                _save(args.out, results, false_alarms, methods)  # partial results survive an interrupted run
        if not args.skip_real and not args.skip_false_alarms:
            for m in methods:
                fa = _false_alarm_case(args.data, m, tmp, args.seed, progress)
                if fa:
                    print(f"id_00 false alarms {m}: {fa['alerts']} alerts, {fa['files_over_threshold']} files over "
                          f"threshold ({fa['train_s']:.1f} s)", file=sys.stderr, flush=True)
                    false_alarms.append(fa)
                    _save(args.out, results, false_alarms, methods)
    print(_save(args.out, results, false_alarms, methods))
    return 0


def _save(out: Path, results: list[dict], false_alarms: list[dict], methods: Sequence[str]) -> str:
    table = render(results, false_alarms, methods) if results or false_alarms else ""
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps({"results": results, "false_alarms": false_alarms}, indent=1))
    return table


if __name__ == "__main__":
    sys.exit(main())
