"""Does retraining ``normal-vs-abnormal`` with real labelled clips help on machine types it never heard?

Run::

    python -m benchmarks.classifier_transfer --real /work/shared/data/real --out /tmp/cls

Leave one machine type out: for each held-out type (or group of types) a
dataset is laid out as ``normal/`` and ``abnormal/`` holding the same SYNTHETIC
part as the shipped model (:func:`edge_monitor.training.build_shipped.build_normal_vs_abnormal`
without real clips) plus symlinks to every labelled real clip of the *other*
types (dcase2020_dev, mimii_0db_ch0, mimii, dcase2023; channel 0 of
multi-channel files). :func:`train_classifier` trains on it, and every real clip
of the held-out types is scored with :func:`classify_file` (file score = mean
window probability of ``abnormal``). The shipped ``models/normal-vs-abnormal.tflite``
scores the same clips for comparison; note that it was trained on the dcase2023
and mimii clips, so on those it is not a held-out measurement (the
"never trained on by shipped" totals use only dcase2020_dev and mimii_0db_ch0).

``--task machine-type`` asks the same of the ``machine-type`` classifier
(fan/pump/slider/valve): leave one UNIT out. A unit is (type, id) across
dcase2020_dev, mimii_0db_ch0 and mimii (the same physical machines); each
dcase2023 section is a unit of its own, and ``mimii_fan_rerecorded/original_8ch.wav``
(a MIMII fan of unknown id) is one too. For each unit the dataset holds the
SYNTHETIC part of :func:`edge_monitor.training.build_shipped.build_machine_type`
plus every real fan/pump/slider/valve clip (normal and anomalous) of the other
units; every clip of the held-out unit is classified (label with the highest
mean window probability) and compared with the shipped ``models/machine-type.tflite``::

    python -m benchmarks.classifier_transfer --task machine-type --real /work/shared/data/real --out /tmp/cls_mt

``--group-by id`` holds out all units of one id together (fewer folds).

Writes ``result.md`` and ``result.json`` to ``--out``; each fold's scores are
cached in ``--out/folds/`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_monitor.training.build_shipped import MACHINE_TYPES, _link_real, build_machine_type, build_normal_vs_abnormal
from edge_monitor.training.classifier import SYNTHETIC_MARKER, classify_file, train_classifier
from edge_monitor.training.metrics import roc_auc

SOURCES = ("dcase2020_dev", "mimii_0db_ch0", "mimii", "dcase2023")
"""Folders of labelled real clips (the shared real-data layout)."""
NEVER_IN_SHIPPED = ("dcase2020_dev", "mimii_0db_ch0")
"""Sources the shipped model never trained on."""
MAIN_TYPES = ("fan", "pump", "slider", "valve")
THRESHOLDS = (0.8, 0.5)
"""0.8 is the shipped model's tuned alert threshold; 0.5 the trained default."""
CHANNEL = 0
SEED = 0
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "normal-vs-abnormal.tflite"
ABNORMAL = "abnormal"
SHIPPED_MT_MODEL = SHIPPED_MODEL.parent / "machine-type.tflite"
ORIGINAL_8CH = Path("mimii_fan_rerecorded") / "original_8ch.wav"
"""The unlabelled-condition MIMII fan clip build_machine_type also trains on (its id is not known)."""
IN_SHIPPED_MT = ("dcase2023", "mimii", "mimii_fan_rerecorded")
"""Sources whose clips the shipped machine-type model trained on (build_shipped._real_clips)."""
UNITS_IN_SHIPPED_MT = ("pump_id_00", "valve_id_00", "valve_id_06", "dcase2023_fan_section_00",
                       "dcase2023_slider_section_00", "dcase2023_valve_section_00", "fan_original_8ch")
"""Units with at least one clip in the shipped machine-type model's training set."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- clips and folds

def _clip(path: Path, source: str, machine: str, anomaly: bool) -> dict[str, Any]:
    """A clip record in the form ``build_shipped._link_real`` expects."""
    return {"path": path, "machine": machine.lower(), "anomaly": anomaly, "source": source}


def collect_clips(real: Path) -> list[dict[str, Any]]:
    """Every labelled real clip: ``{"path", "machine" (lower case), "anomaly", "source"}``, sorted by path."""
    clips = []
    for p in sorted((real / "dcase2020_dev").glob("*/*.wav")):
        clips.append(_clip(p, "dcase2020_dev", p.parent.name, p.name.startswith("anomaly")))
    for source in ("mimii_0db_ch0", "mimii"):
        for p in sorted((real / source).glob("*/id_*/*/*.wav")):
            if p.parent.name in ("normal", "abnormal"):
                clips.append(_clip(p, source, p.parents[2].name, p.parent.name == "abnormal"))
    for p in sorted((real / "dcase2023").glob("*/*/*.wav")):
        if re.search(r"_(normal|anomaly)_", p.name):
            clips.append(_clip(p, "dcase2023", p.parents[1].name, "_anomaly_" in p.name))
    return sorted(clips, key=lambda c: str(c["path"]))


def plan_folds(types: Sequence[str], grouped: bool) -> list[tuple[str, list[str]]]:
    """``(fold name, held-out types)``: one fold per type, or the main four plus one fold of all the rest."""
    main = [t for t in MAIN_TYPES if t in types]
    rest = sorted(t for t in types if t not in MAIN_TYPES)
    folds = [(t, [t]) for t in main]
    if grouped and rest:
        return folds + [("other", rest)]
    return folds + [(t, [t]) for t in rest]


# ---------------------------------------------------------------- datasets

def synthetic_part(work: Path) -> Path:
    """The shipped model's SYNTHETIC clips (``build_normal_vs_abnormal`` without real clips), built once."""
    done = work / "synthetic.done"
    ds = work / "synthetic" / "normal-vs-abnormal"
    if not done.is_file():
        _say("building the SYNTHETIC part of the dataset")
        build_normal_vs_abnormal(work / "synthetic", None, SEED)
        done.write_text("ok\n")
    return ds


def link_synthetic(base: Path, dest: Path, labels: Sequence[str]) -> None:
    """A fresh ``dest`` holding ``<label>/synthetic/`` symlinks to the synthetic clips (and marker) of ``base``."""
    if dest.exists():
        shutil.rmtree(dest)
    for label in labels:
        folder = dest / label / "synthetic"
        folder.mkdir(parents=True)
        for f in sorted((base / label / "synthetic").iterdir()):
            if f.suffix.lower() == ".wav" or f.name == SYNTHETIC_MARKER:
                (folder / f.name).symlink_to(f.resolve())


def fold_dataset(base: Path, clips: Sequence[dict[str, Any]], held: Sequence[str], real: Path,
                 dest: Path) -> Path:
    """``dest/{normal,abnormal}/``: symlinks to the synthetic part plus the real clips whose type is not held out."""
    link_synthetic(base, dest, ("normal", ABNORMAL))
    for clip in clips:
        if clip["machine"] not in held:
            _link_real(clip, dest / (ABNORMAL if clip["anomaly"] else "normal") / "real", real)
    return dest


# ---------------------------------------------------------------- scoring

def score_clips(model: Path, clips: Sequence[dict[str, Any]]) -> list[float]:
    """File-level ``abnormal`` probability (mean over windows) of each clip, channel 0."""
    from edge_monitor.model import load_model

    runner = load_model(model)
    try:
        return [classify_file(runner, c["path"], channel=CHANNEL)[1][ABNORMAL] for c in clips]
    finally:
        runner.close()


def run_fold(name: str, held: Sequence[str], clips: Sequence[dict[str, Any]], real: Path, out: Path,
             epochs: int, hop: float, seed: int = SEED) -> dict[str, Any]:
    """Train without ``held`` types, score the held-out clips; cached in ``out/folds/<name>.json``."""
    cache = out / "folds" / f"{name}.json"
    config = {"held_out": list(held), "epochs": epochs, "train_hop_seconds": hop, "seed": seed}
    if cache.is_file():
        cached: dict[str, Any] = json.loads(cache.read_text())
        if cached.get("config") == config:
            _say(f"== fold {name}: reusing {cache}")
            return cached
    work = out / "work"
    ds = fold_dataset(synthetic_part(work), clips, held, real, work / f"fold_{name}")
    model = out / "models" / f"normal-vs-abnormal-without-{name}.tflite"
    _say(f"== fold {name}: training without {', '.join(held)}")
    wall, cpu = time.monotonic(), time.process_time()
    result = train_classifier(ds, model, channel=CHANNEL, seed=seed, epochs=epochs, train_hop_seconds=hop,
                              name=f"normal-vs-abnormal-without-{name}", progress=_say)
    timing = {"train_wall_s": round(time.monotonic() - wall, 1), "train_cpu_s": round(time.process_time() - cpu, 1)}
    test = [c for c in clips if c["machine"] in held]
    record = {"config": config, "timing": timing, "training_files": result.meta["training"].get("files"),
              "clips": [{"path": str(c["path"]), "machine": c["machine"], "source": c["source"],
                         "anomaly": c["anomaly"]} for c in test],
              "retrained": score_clips(model, test)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=1))
    _say(f"   fold {name}: {timing}")
    return record


def cached_per_clip(clips: Sequence[dict[str, Any]], cache: Path, what: str,
                    compute: Callable[[Sequence[dict[str, Any]]], list[Any]]) -> dict[str, Any]:
    """``compute(clips)`` by clip path, kept in the JSON file ``cache`` and reused while the clips are the same."""
    paths = [str(c["path"]) for c in clips]
    if cache.is_file():
        cached: dict[str, Any] = json.loads(cache.read_text())
        if sorted(cached) == sorted(paths):
            return cached
    _say(f"{what} {len(clips)} clips")
    values = dict(zip(paths, compute(clips)))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(values, indent=1))
    return values


def shipped_scores(clips: Sequence[dict[str, Any]], out: Path) -> dict[str, float]:
    """Shipped-model score of every clip by path; cached in ``out/folds/shipped.json``."""
    return cached_per_clip(clips, out / "folds" / "shipped.json", f"scoring with {SHIPPED_MODEL}:",
                           lambda cs: list(score_clips(SHIPPED_MODEL, cs)))


# ---------------------------------------------------------------- statistics and report

def stats(anomaly: Sequence[bool], scores: Sequence[float]) -> dict[str, Any]:
    """Clip counts, anomalies/normals flagged (score > threshold) at each threshold, and AUC (None if one class)."""
    y = np.asarray(anomaly, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    row: dict[str, Any] = {"normal": int((~y).sum()), "anomalous": int(y.sum())}
    for thr in THRESHOLDS:
        row[f"anomalies_flagged_{thr}"] = int((s[y] > thr).sum())
        row[f"normals_flagged_{thr}"] = int((s[~y] > thr).sum())
    row["auc"] = round(roc_auc(y, s), 3) if 0 < y.sum() < y.size else None
    return row


def summarise(folds: Sequence[dict[str, Any]], shipped: dict[str, float]) -> dict[str, Any]:
    """Per held-out type and totals, retrained vs shipped, from the fold records."""
    items = [(c, r, shipped[c["path"]], f["config"]["held_out"]) for f in folds
             for c, r in zip(f["clips"], f["retrained"])]
    groups: dict[str, list[Any]] = {}
    for it in items:
        groups.setdefault(it[0]["machine"], []).append(it)
    groups["TOTAL"] = items
    groups["TOTAL never trained on by shipped"] = [it for it in items if it[0]["source"] in NEVER_IN_SHIPPED]
    rows = {}
    for key, its in groups.items():
        y = [it[0]["anomaly"] for it in its]
        rows[key] = {"held_out_with": None if key.startswith("TOTAL") else its[0][3],
                     "retrained": stats(y, [it[1] for it in its]), "shipped": stats(y, [it[2] for it in its])}
    return rows


def mean_type_auc(rows: dict[str, Any], model: str) -> Optional[float]:
    """Mean of the per-type AUCs (each from one model), unlike the pooled totals that mix the folds' models."""
    aucs = [r[model]["auc"] for k, r in rows.items() if not k.startswith("TOTAL") and r[model]["auc"] is not None]
    return round(float(np.mean(aucs)), 3) if aucs else None


def _cells(s: dict[str, Any]) -> list[str]:
    auc = "n/a" if s["auc"] is None else f"{s['auc']:.3f}"
    return [f"{s[f'anomalies_flagged_{t}']}/{s['anomalous']}" for t in THRESHOLDS] + \
           [f"{s[f'normals_flagged_{t}']}/{s['normal']}" for t in THRESHOLDS] + [auc]


def format_markdown(rows: dict[str, Any], folds: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """The result table, the per-fold timings and the command, as Markdown."""
    head = ["held-out type", "model", "normal", "anomalous"] + \
           [f"anomalies > {t}" for t in THRESHOLDS] + [f"normals > {t}" for t in THRESHOLDS] + ["AUC"]
    lines = ["# normal-vs-abnormal: retrained with real clips, leave one machine type out", "",
             f"Command: `python -m benchmarks.classifier_transfer --real {args.real} --out {args.out}"
             f"{' --grouped' if args.grouped else ''} --epochs {args.epochs} --seed {args.seed}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in rows.items():
        for model in ("retrained", "shipped"):
            s = row[model]
            lines.append("| " + " | ".join([f"**{key}**" if key.startswith("TOTAL") else key, model,
                                             str(s["normal"]), str(s["anomalous"])] + _cells(s)) + " |")
    lines += ["", "Mean of the per-type AUCs (pooled totals mix the folds' models): retrained "
              f"{mean_type_auc(rows, 'retrained')}, shipped {mean_type_auc(rows, 'shipped')}."]
    lines += ["", "| fold (held out) | training files | train wall s | train CPU s |", "|---|---|---|---|"]
    for f in folds:
        lines.append(f"| {', '.join(f['config']['held_out'])} | {f.get('training_files')} | "
                     f"{f['timing']['train_wall_s']} | {f['timing']['train_cpu_s']} |")
    lines += ["", "Shipped: models/normal-vs-abnormal.tflite; it trained on the dcase2023 and mimii clips, so only "
              "the 'never trained on by shipped' total is a held-out measurement for it. Retrained: epochs "
              f"{args.epochs}, train hop {args.train_hop_seconds} s, seed {args.seed}, channel {CHANNEL}, no threshold "
              "re-tuning. Flagged = file score (mean window probability of abnormal) > threshold."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- machine-type: clips and folds

def _unit(clip: dict[str, Any]) -> str:
    """The clip's unit: ``<type>_id_XX`` (shared by dcase2020_dev / mimii_0db_ch0 / mimii), a dcase2023 section,
    or ``fan_original_8ch``."""
    path: Path = clip["path"]
    if clip["source"] == "dcase2023":
        found = re.search(r"section_\d+", path.name)
        return f"dcase2023_{clip['machine']}_{found.group(0) if found else 'section_unknown'}"
    if clip["source"] == "mimii_fan_rerecorded":
        return "fan_original_8ch"
    found = re.search(r"id_\d+", path.name if clip["source"] == "dcase2020_dev" else str(path.parents[1].name))
    if found is None:
        raise ValueError(f"{path}: no machine id")
    return f"{clip['machine']}_{found.group(0)}"


def collect_type_clips(real: Path) -> list[dict[str, Any]]:
    """Every real fan/pump/slider/valve clip (normal and anomalous) plus ``original_8ch.wav``, each with its unit."""
    clips = [c for c in collect_clips(real) if c["machine"] in MACHINE_TYPES]
    if (real / ORIGINAL_8CH).is_file():
        clips.append(_clip(real / ORIGINAL_8CH, "mimii_fan_rerecorded", "fan", False))
    for c in clips:
        c["unit"] = _unit(c)
    return clips


def _id_group(unit: str) -> str:
    """Fold name when units are grouped by id: ``id_XX`` (across types) or the unit itself."""
    found = re.search(r"_(id_\d+)$", unit)
    return found.group(1) if found else unit


def plan_unit_folds(clips: Sequence[dict[str, Any]], group_by: str) -> list[tuple[str, list[str]]]:
    """``(fold name, held-out units)``: one fold per unit, or (``group_by="id"``) per id across types."""
    units = sorted({c["unit"] for c in clips})
    if group_by == "unit":
        return [(u, [u]) for u in units]
    groups: dict[str, list[str]] = {}
    for u in units:
        groups.setdefault(_id_group(u), []).append(u)
    return sorted(groups.items())


# ---------------------------------------------------------------- machine-type: datasets and folds

def machine_synthetic_part(work: Path) -> Path:
    """The shipped machine-type model's SYNTHETIC clips (``build_machine_type`` without real clips), built once."""
    done = work / "synthetic_machine_type.done"
    root = work / "synthetic_machine_type"
    if not done.is_file():
        _say("building the SYNTHETIC part of the machine-type dataset")
        build_machine_type(root, None, SEED)
        done.write_text("ok\n")
    return root / "machine-type"


def machine_fold_dataset(base: Path, clips: Sequence[dict[str, Any]], held: Sequence[str], real: Path,
                         dest: Path) -> Path:
    """``dest/<type>/``: symlinks to the synthetic part plus the real clips whose unit is not held out."""
    link_synthetic(base, dest, MACHINE_TYPES)
    for clip in clips:
        if clip["unit"] not in held:
            _link_real(clip, dest / clip["machine"] / "real", real)
    return dest


def classify_clips(model: Path, clips: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"predicted", "probabilities"}`` of each clip (highest mean window probability, channel 0)."""
    from edge_monitor.model import load_model

    runner = load_model(model)
    try:
        out = []
        for c in clips:
            label, probs = classify_file(runner, c["path"], channel=CHANNEL)
            out.append({"predicted": label, "probabilities": {k: round(v, 4) for k, v in probs.items()}})
        return out
    finally:
        runner.close()


def _clip_record(c: dict[str, Any]) -> dict[str, Any]:
    return {"path": str(c["path"]), "machine": c["machine"], "unit": c["unit"], "source": c["source"],
            "anomaly": c["anomaly"]}


def run_unit_fold(name: str, held: Sequence[str], clips: Sequence[dict[str, Any]], args: argparse.Namespace
                  ) -> dict[str, Any]:
    """Train machine-type without the ``held`` units, classify their clips; cached in ``out/folds/mt_<name>.json``."""
    cache = args.out / "folds" / f"mt_{name}.json"
    config = {"task": "machine-type", "held_out_units": list(held), "epochs": args.epochs,
              "train_hop_seconds": args.train_hop_seconds, "seed": args.seed}
    if cache.is_file():
        cached: dict[str, Any] = json.loads(cache.read_text())
        if cached.get("config") == config:
            _say(f"== fold {name}: reusing {cache}")
            return cached
    work = args.out / "work"
    ds = machine_fold_dataset(machine_synthetic_part(work), clips, held, args.real, work / f"mt_fold_{name}")
    model = args.out / "models" / f"machine-type-without-{name}.tflite"
    _say(f"== fold {name}: training without {', '.join(held)}")
    wall, cpu = time.monotonic(), time.process_time()
    result = train_classifier(ds, model, alert_labels="none", channel=CHANNEL, seed=args.seed, epochs=args.epochs,
                              train_hop_seconds=args.train_hop_seconds, name=f"machine-type-without-{name}",
                              progress=_say)
    timing = {"train_wall_s": round(time.monotonic() - wall, 1), "train_cpu_s": round(time.process_time() - cpu, 1)}
    test = [c for c in clips if c["unit"] in held]
    record = {"config": config, "timing": timing, "training_files": result.meta["training"].get("files"),
              "training_real_files": result.meta["training"].get("real_files"),
              "clips": [_clip_record(c) for c in test], "retrained": classify_clips(model, test)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(record, indent=1))
    _say(f"   fold {name}: {timing}; " + ", ".join(f"{c['unit']} {c['machine']}->{r['predicted']}"
                                                  for c, r in zip(test, record["retrained"])))
    return record


def shipped_types(clips: Sequence[dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """Shipped machine-type prediction of every clip by path; cached in ``out/folds/shipped_machine_type.json``."""
    return cached_per_clip(clips, out / "folds" / "shipped_machine_type.json",
                           f"classifying with {SHIPPED_MT_MODEL}:", lambda cs: list(classify_clips(SHIPPED_MT_MODEL, cs)))


# ---------------------------------------------------------------- machine-type: statistics and report

def type_stats(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Clips, correct, and the confusion matrix ``{true: {predicted: n}}`` (rows of the true types present)."""
    conf = {t: {p: 0 for p in MACHINE_TYPES} for t in MACHINE_TYPES if t in truth}
    for t, p in zip(truth, predicted):
        conf[t][p] += 1
    return {"clips": len(truth), "correct": int(sum(t == p for t, p in zip(truth, predicted))), "confusion": conf}


def mt_summarise(folds: Sequence[dict[str, Any]], shipped: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows per type, per unit and totals (all clips; clips the shipped model never trained on; unheard units)."""
    items = [(c, r["predicted"], shipped[c["path"]]["predicted"]) for f in folds
             for c, r in zip(f["clips"], f["retrained"])]
    groups: dict[str, list[Any]] = {}
    for it in items:
        groups.setdefault(f"type {it[0]['machine']}", []).append(it)
    for it in sorted(items, key=lambda x: x[0]["unit"]):
        groups.setdefault(f"unit {it[0]['unit']}", []).append(it)
    groups["TOTAL"] = items
    groups["TOTAL clips never trained on by shipped"] = [it for it in items if it[0]["source"] not in IN_SHIPPED_MT]
    groups["TOTAL units never heard by shipped"] = [it for it in items if it[0]["unit"] not in UNITS_IN_SHIPPED_MT]
    rows = {}
    for key, its in groups.items():
        truth = [it[0]["machine"] for it in its]
        rows[key] = {"retrained": type_stats(truth, [it[1] for it in its]),
                     "shipped": type_stats(truth, [it[2] for it in its]),
                     "shipped_trained_on": sum(it[0]["source"] in IN_SHIPPED_MT for it in its)}
    return rows


def _conf_cell(conf: dict[str, dict[str, int]]) -> str:
    """A confusion matrix in one cell: ``true->fan/pump/slider/valve counts; ...``."""
    return "; ".join(f"{t}: " + " ".join(str(row[p]) for p in MACHINE_TYPES) for t, row in conf.items())


def _mt_table(rows: dict[str, Any]) -> list[str]:
    head = ["group", "clips", "shipped trained on", "correct retrained", "correct shipped",
            "retrained confusion (true: pred " + "/".join(MACHINE_TYPES) + ")", "shipped confusion"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in rows.items():
        re_, sh = r["retrained"], r["shipped"]
        name = f"**{key}**" if key.startswith("TOTAL") else key
        lines.append(f"| {name} | {re_['clips']} | {r['shipped_trained_on']} | {re_['correct']}/{re_['clips']} | "
                     f"{sh['correct']}/{sh['clips']} | {_conf_cell(re_['confusion'])} | "
                     f"{_conf_cell(sh['confusion'])} |")
    return lines


def _full_confusion(title: str, conf: dict[str, dict[str, int]]) -> list[str]:
    lines = [f"{title} (rows true, columns predicted):", "",
             "| true \\ predicted | " + " | ".join(MACHINE_TYPES) + " |", "|" + "---|" * (len(MACHINE_TYPES) + 1)]
    return lines + [f"| {t} | " + " | ".join(str(row[p]) for p in MACHINE_TYPES) + " |" for t, row in conf.items()]


def mt_markdown(rows: dict[str, Any], folds: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    """The machine-type result tables, the per-fold timings and the command, as Markdown."""
    lines = ["# machine-type: retrained with the real clips of more units, leave one unit out", "",
             f"Command: `python -m benchmarks.classifier_transfer --task machine-type --real {args.real} "
             f"--out {args.out} --group-by {args.group_by} --epochs {args.epochs} --seed {args.seed}`", ""]
    lines += _mt_table(rows) + [""]
    for key in ("TOTAL", "TOTAL clips never trained on by shipped"):
        for model in ("retrained", "shipped"):
            lines += _full_confusion(f"{key}, {model}", rows[key][model]["confusion"]) + [""]
    lines += ["| fold | held-out units | training files (real) | train wall s | train CPU s |",
              "|---|---|---|---|---|"]
    for f in folds:
        units = f["config"]["held_out_units"]
        lines.append(f"| {_id_group(units[0]) if len(units) > 1 else units[0]} | {', '.join(units)} | "
                     f"{f.get('training_files')} ({f.get('training_real_files')}) | "
                     f"{f['timing']['train_wall_s']} | {f['timing']['train_cpu_s']} |")
    lines += ["", "Shipped: models/machine-type.tflite. It trained on the dcase2023 fan/slider/valve clips, MIMII "
              "pump id_00 and valve id_00/id_06 (folder mimii) and original_8ch.wav, so on those clips ('shipped "
              "trained on') it is not a held-out measurement; 'clips never trained on by shipped' drops them, and "
              "'units never heard by shipped' also drops the other clips of those units (dcase2020_dev / 0 dB pump "
              "id_00, valve id_00, id_06). original_8ch.wav is a MIMII fan of unknown id, treated as its own unit: "
              "if it is fan id_04 or id_06 those folds are not fully held out. Retrained: epochs "
              f"{args.epochs}, train hop {args.train_hop_seconds} s, seed {args.seed}, channel {CHANNEL}; no cross-"
              "validation. Prediction = label with the highest mean window probability (0.5 s hop)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def _run_normal_vs_abnormal(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The normal-vs-abnormal leave-one-type-out benchmark: (Markdown, JSON summary)."""
    clips = collect_clips(args.real)
    _say(f"{len(clips)} labelled real clips ({sum(c['anomaly'] for c in clips)} anomalous)")
    plan = plan_folds(sorted({c["machine"] for c in clips}), args.grouped)
    folds = [run_fold(name, held, clips, args.real, args.out, args.epochs, args.train_hop_seconds, args.seed)
             for name, held in plan if not args.only or name in args.only]
    rows = summarise(folds, shipped_scores(clips, args.out))
    summary = {"rows": rows, "mean_type_auc": {m: mean_type_auc(rows, m) for m in ("retrained", "shipped")},
               "folds": folds}
    return format_markdown(rows, folds, args), summary


def _run_machine_type(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The machine-type leave-one-unit-out benchmark: (Markdown, JSON summary)."""
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(var, "1")
    clips = collect_type_clips(args.real)
    plan = plan_unit_folds(clips, args.group_by)
    _say(f"{len(clips)} real fan/pump/slider/valve clips in {len({c['unit'] for c in clips})} units; "
         f"{len(plan)} folds")
    folds = [run_unit_fold(name, held, clips, args) for name, held in plan if not args.only or name in args.only]
    rows = mt_summarise(folds, shipped_types(clips, args.out))
    return mt_markdown(rows, folds, args), {"task": "machine-type", "rows": rows, "folds": folds}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("normal-vs-abnormal", "machine-type"), default="normal-vs-abnormal",
                    help="which shipped classifier to retrain (default normal-vs-abnormal: leave one type out; "
                         "machine-type: leave one unit out)")
    ap.add_argument("--real", type=Path, required=True, help="folder of real clips (shared/data/real layout)")
    ap.add_argument("--out", type=Path, required=True, help="where to write result.md, result.json and caches")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (default 30, as build_shipped)")
    ap.add_argument("--train-hop-seconds", type=float, default=0.5, help="training window hop (as build_shipped)")
    ap.add_argument("--grouped", action="store_true",
                    help="fan, pump, slider, valve each held out alone, all other types held out together")
    ap.add_argument("--group-by", choices=("unit", "id"), default="unit",
                    help="machine-type: hold out one unit per fold (default) or every unit of one id together")
    ap.add_argument("--seed", type=int, default=SEED, help="training seed (default 0; the SYNTHETIC clips stay those of the shipped build)")
    ap.add_argument("--only", action="append", help="run only this fold (repeatable; report covers these)")
    args = ap.parse_args(argv)
    run = _run_machine_type if args.task == "machine-type" else _run_normal_vs_abnormal
    text, summary = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.md").write_text(text)
    (args.out / "result.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
