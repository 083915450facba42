"""Render an evaluation report: PNG plots (matplotlib, Agg, imported lazily) and a self-contained index.html.

The plots are meant for a maintenance engineer, not only a data scientist:
every axis says what it counts and in which unit, the threshold is a labelled
line, and each figure's title says which model and dataset it shows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

MAX_LONG_FILE_PLOTS = 6
MAX_FILES_PER_TIMELINE = 20
MAX_FILE_ROWS = 300
_NORMAL_COLOUR = "#2b7bba"
_ANOMALY_COLOUR = "#d7301f"
_THRESHOLD_COLOUR = "#333333"

SCORE_UNITS = {
    "mse": "reconstruction error (mean squared error of normalised log-mel)",
    "mahalanobis": "distance from normal (Mahalanobis)",
    "alert_probability": "alert probability (0 to 1)",
}


SCORE_UNITS_SHORT = {"mse": "reconstruction MSE", "mahalanobis": "Mahalanobis distance",
                     "alert_probability": "alert probability"}


def window_axis_label(report: dict[str, Any]) -> str:
    """Short y-axis label for window-score plots."""
    return f"Window score\n({SCORE_UNITS_SHORT.get(report['model'].get('score') or '', 'higher = more anomalous')})"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_axis_label(report: dict[str, Any], what: str = "File score") -> str:
    """Axis label naming the score and its unit for this bundle."""
    unit = SCORE_UNITS.get(report["model"].get("score") or "", "model score, higher = more anomalous")
    return f"{what}: {unit}"


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else "..." + text[-(n - 3):]


def _title(report: dict[str, Any], what: str) -> str:
    m = report["model"]
    return f"{what}\nmodel {m['name']} v{m['version']} on {_short(Path(report['dataset']['path']).name or report['dataset']['path'], 40)}"


def _groups(report: dict[str, Any], results: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
    """(name, colour, results) per normal/anomalous truth, or per label when there is no truth."""
    if any(r.anomalous_truth is not None for r in results):
        normal = [r for r in results if r.anomalous_truth is False]
        anomalous = [r for r in results if r.anomalous_truth is True]
        out = []
        if normal:
            out.append(("normal", _NORMAL_COLOUR, normal))
        if anomalous:
            out.append(("anomalous", _ANOMALY_COLOUR, anomalous))
        return out
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    labels = sorted({r.label for r in results})
    return [(lb, cmap(i % 10), [r for r in results if r.label == lb]) for i, lb in enumerate(labels)]


def _threshold_in_view(ax: Any, threshold: float, orientation: str = "v") -> None:
    label = f"threshold = {threshold:.4g}"
    if orientation == "v":
        ax.axvline(threshold, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.5, label=label)
    else:
        ax.axhline(threshold, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.5, label=label)


def plot_roc(path: Path, report: dict[str, Any]) -> None:
    """ROC curve with AUC in the legend, the pAUC region shaded and the threshold's operating point."""
    plt = _plt()
    b = report["binary"]
    fpr, tpr = np.asarray(b["roc"]["fpr"]), np.asarray(b["roc"]["tpr"])
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    p = b["pauc_max_fpr"]
    ax.axvspan(0, p, color="#fdd49e", alpha=0.5,
               label=f"pAUC region (false-alarm rate <= {p:g}): pAUC = {b['pauc']:.3f}")
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="chance (AUC = 0.5)")
    ax.plot(fpr, tpr, color=_ANOMALY_COLOUR, linewidth=2, drawstyle="default",
            label=f"this model (AUC = {b['auc']:.3f})")
    st = b["at_threshold"]
    ax.plot([st["false_positive_rate"]], [st["recall"]], "o", color=_THRESHOLD_COLOUR, markersize=8,
            label=f"at threshold {st['threshold']:.4g}: {st['false_positive_rate']:.0%} false alarms, "
                  f"{st['recall']:.0%} detected")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False-alarm rate (fraction of normal files flagged)")
    ax.set_ylabel("Detection rate (fraction of anomalous files flagged)")
    ax.set_title(_title(report, f"ROC curve ({b['normal']} normal, {b['anomalous']} anomalous files)"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_histogram(path: Path, report: dict[str, Any], results: Sequence[Any]) -> None:
    """File-score histograms per class with the threshold line."""
    plt = _plt()
    thr = float(report["model"]["threshold"])
    groups = _groups(report, results)
    scores = np.array([r.score for r in results])
    lo, hi = float(scores.min()), float(scores.max())
    in_range = lo <= thr <= hi * 1.5 or not math.isfinite(thr)
    if in_range:
        lo, hi = min(lo, thr), max(hi, thr)
    log_x = lo > 0 and hi / lo > 100
    if log_x:
        bins = np.geomspace(lo * 0.95, hi * 1.05, 31)
    else:
        pad = (hi - lo) * 0.05 or 0.05
        bins = np.linspace(lo - pad, hi + pad, 31)
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=100)
    for name, colour, rows in groups:
        ax.hist([r.score for r in rows], bins=bins, color=colour, alpha=0.55, edgecolor=colour,
                label=f"{name} ({len(rows)} files)")
    if in_range:
        _threshold_in_view(ax, thr)
    else:
        ax.plot([], [], " ", label=f"threshold = {thr:.4g} (outside the scores' range)")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(score_axis_label(report) + (" [log scale]" if log_x else ""))
    ax.set_ylabel("Number of files")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(_title(report, "Score distribution: files right of the threshold are flagged"), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _window_times(n: int, spec: Any, window_hop_seconds: float) -> np.ndarray:
    """Centre of each window (seconds from the file's start)."""
    hop_frames = max(1, int(round(window_hop_seconds / spec.hop_seconds)))
    return np.arange(n) * hop_frames * spec.hop_seconds + spec.window_seconds / 2


def plot_file_timeline(path: Path, report: dict[str, Any], result: Any, spec: Any, window_hop_seconds: float) -> None:
    """Window scores of one long recording over time, with the threshold."""
    plt = _plt()
    thr = float(report["model"]["threshold"])
    t = _window_times(result.window_scores.size, spec, window_hop_seconds)
    fig, ax = plt.subplots(figsize=(9.6, 3.8), dpi=100)
    colour = _ANOMALY_COLOUR if result.anomalous_truth else _NORMAL_COLOUR
    ax.plot(t, result.window_scores, color=colour, linewidth=1.2, label=f"window score (label: {result.label})")
    ax.fill_between(t, thr, result.window_scores, where=result.window_scores > thr, color=_ANOMALY_COLOUR,
                    alpha=0.3, label="above threshold")
    _threshold_in_view(ax, thr, "h")
    ax.set_xlabel("Time in the recording (seconds)")
    ax.set_ylabel(window_axis_label(report), fontsize=9)
    ax.set_title(_title(report, f"Score over time: {_short(Path(result.file).name, 50)}"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_concatenated_timeline(path: Path, report: dict[str, Any], results: Sequence[Any], spec: Any,
                               window_hop_seconds: float) -> None:
    """Window scores of short files placed end to end, one panel per class, with the threshold."""
    plt = _plt()
    thr = float(report["model"]["threshold"])
    groups = _groups(report, results)
    fig, axes = plt.subplots(len(groups), 1, figsize=(9.6, 2.6 * len(groups) + 0.8), dpi=100, sharey=True,
                             squeeze=False)
    all_scores = np.concatenate([r.window_scores for r in results])
    for ax, (name, colour, rows) in zip(axes[:, 0], groups):
        offset = 0.0
        shown = rows[:MAX_FILES_PER_TIMELINE]
        for k, r in enumerate(shown):
            t = offset + _window_times(r.window_scores.size, spec, window_hop_seconds)
            ax.plot(t, r.window_scores, color=colour, linewidth=1.0,
                    label=f"{name} window scores" if k == 0 else None)
            offset += r.seconds
            ax.axvline(offset, color="#bbbbbb", linewidth=0.6)
        _threshold_in_view(ax, thr, "h")
        more = f", first {len(shown)} of {len(rows)}" if len(rows) > len(shown) else ""
        ax.set_title(f"{name} files ({len(shown)} files{more}, end to end; grey lines separate files)", fontsize=9)
        ax.set_xlabel("Time (seconds, files placed end to end)")
        ax.set_ylabel(window_axis_label(report), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
    lo, hi = float(all_scores.min()), float(all_scores.max())
    if lo <= thr <= hi * 1.5:
        axes[0, 0].set_ylim(min(lo, thr) - 0.05 * (hi - lo + 1e-9), max(hi, thr) + 0.1 * (hi - lo + 1e-9))
    fig.suptitle(_title(report, "Score over time. y axis: " + score_axis_label(report, "window score")), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: Path, report: dict[str, Any], labels: Sequence[str], matrix: Sequence[Sequence[int]],
                   title: str, predicted_axis: str) -> None:
    """Confusion matrix image: counts in each cell, rows = true label."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    size = max(4.2, 1.0 + 0.75 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=100)
    row_sums = np.maximum(m.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(m / row_sums, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            frac = m[i, j] / row_sums[i, 0]
            ax.text(j, i, f"{m[i, j]}\n({frac:.0%})", ha="center", va="center", fontsize=9,
                    color="white" if frac > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel(predicted_axis)
    ax.set_ylabel("True label (from the dataset)")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Fraction of the true label's files")
    ax.set_title(_title(report, title), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(out: Path, report: dict[str, Any], results: Sequence[Any], spec: Any, window_hop_seconds: float,
                *, long_file_seconds: float = 30.0) -> dict[str, dict[str, str]]:
    """Write every applicable PNG into ``out``; return {key: {"file", "caption"}}."""
    plots: dict[str, dict[str, str]] = {}
    b = report["binary"]
    thr = float(report["model"]["threshold"])
    if "roc" in b:
        plot_roc(out / "roc.png", report)
        plots["roc"] = {"file": "roc.png", "caption": (
            "ROC curve: each point is one possible threshold. Up and to the left is better. "
            f"The dot is the model's threshold ({thr:.4g}). pAUC measures the low-false-alarm region (shaded).")}
    plot_histogram(out / "histogram.png", report, results)
    plots["histogram"] = {"file": "histogram.png", "caption": (
        "How file scores are distributed. Files whose score is right of the dashed threshold line are flagged "
        "as anomalous. Good separation: normal files left of the line, anomalous files right of it.")}
    if b.get("confusion"):
        c = b["confusion"]
        plot_confusion(out / "confusion.png", report, c["labels"], c["matrix"],
                       f"Flagged vs true (threshold {thr:.4g})", "Model decision (score > threshold)")
        plots["confusion"] = {"file": "confusion.png", "caption": (
            "Files by true class (rows) and the model's decision at the threshold (columns). "
            "Top right: false alarms. Bottom left: missed anomalies.")}
    lc = report.get("label_confusion")
    if lc:
        plot_confusion(out / "confusion_labels.png", report, lc["labels"], lc["matrix"],
                       f"Predicted label vs true label (accuracy {lc['accuracy']:.0%})",
                       "Predicted label (highest mean probability)")
        plots["confusion_labels"] = {"file": "confusion_labels.png", "caption": (
            "Classifier labels: rows are the true labels, columns the label the model chose for each file.")}
    long_files = [r for r in results if r.seconds >= long_file_seconds]
    for k, r in enumerate(long_files[:MAX_LONG_FILE_PLOTS]):
        name = f"timeline_{k + 1}.png"
        plot_file_timeline(out / name, report, r, spec, window_hop_seconds)
        plots[f"timeline_{k + 1}"] = {"file": name, "caption": (
            f"Score over time in {Path(r.file).name} ({r.seconds:.0f} s). Shaded: windows above the threshold.")}
    short = [r for r in results if r.seconds < long_file_seconds]
    if short:
        plot_concatenated_timeline(out / "timeline.png", report, short, spec, window_hop_seconds)
        plots["timeline"] = {"file": "timeline.png", "caption": (
            "Window scores over time, short files placed end to end per class (grey lines separate files). "
            "The daemon alerts on windows above the dashed threshold, subject to its k-of-n trigger.")}
    return plots


# ---------------------------------------------------------------- HTML

def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _matrix_table(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    header = ["true \\ predicted", *labels]
    return _table([[lb, *row] for lb, row in zip(labels, matrix)], header)


_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}figure{margin:1em 0 2em}img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:0.9em}.note{background:#fff8e1;padding:0.5em 1em;border-left:4px solid #f0c36d}
code{background:#f3f3f3;padding:0 3px}"""


def write_index(out: Path, report: dict[str, Any]) -> None:
    """Write ``index.html``: model, dataset, metrics tables and the plots (relative image paths)."""
    parts = _model_and_dataset_html(report) + _metrics_html(report) + _plots_and_files_html(report)
    (out / "index.html").write_text("\n".join(parts), encoding="utf-8")


def _model_and_dataset_html(report: dict[str, Any]) -> list[str]:
    m, d = report["model"], report["dataset"]
    e = html.escape
    basis = m.get("threshold_basis") or {}
    return [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation: {e(m['name'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {e(m['name'])} v{e(str(m['version']))}</h1>",
             "<h2>Model</h2>",
             _table([["file", m["path"]], ["identity", m["ident"]], ["kind", m["kind"]],
                     ["score", SCORE_UNITS.get(m.get("score") or "", m.get("score"))],
                     ["labels", ", ".join(m["labels"]) if m.get("labels") else None],
                     ["alert labels", ", ".join(m["alert_labels"]) if m.get("alert_labels") else None],
                     ["threshold", f"{m['threshold']:.6g} (from the {m['threshold_from']})"],
                     ["threshold basis", ", ".join(f"{k}: {_fmt(v)}" for k, v in basis.items()
                                                   if not isinstance(v, (dict, list)))]]),
             "<h2>Dataset</h2>",
             _table([["folder", d["path"]], ["files", d["files"]], ["audio", f"{d['seconds']:.0f} s"],
                     ["labels", ", ".join(f"{k}: {v}" for k, v in d["labels"].items())],
                     ["machine types", ", ".join(f"{k}: {v}" for k, v in d["machines"].items()) or None],
                     ["ground truth", d["truth_rule"]],
                     ["file score", f"{report['scoring']['file_score']}, windows "
                                    f"{report['scoring']['window_hop_seconds']} s apart; flagged when "
                                    f"{report['scoring']['flagged_when']}"]])]


def _metrics_html(report: dict[str, Any]) -> list[str]:
    b = report["binary"]
    e = html.escape
    parts = ["<h2>Detection metrics</h2>"]
    if "auc" in b:
        st = b["at_threshold"]
        parts.append(_table([
            ["AUC", b["auc"], "probability that an anomalous file scores above a normal one (0.5 = chance)"],
            [f"pAUC (false-alarm rate <= {b['pauc_max_fpr']:g})", b["pauc"],
             "DCASE-style: area over the low-false-alarm region divided by its width"],
            ["pAUC, McClish-standardised", b["pauc_mcclish"], "as sklearn roc_auc_score(max_fpr=0.1)"],
            ["precision at threshold", st["precision"], "of the flagged files, the fraction truly anomalous"],
            ["recall at threshold", st["recall"], "of the anomalous files, the fraction flagged"],
            ["false-alarm rate at threshold", st["false_positive_rate"], "of the normal files, the fraction flagged"],
        ], ["metric", "value", "meaning"]))
    if b.get("note"):
        parts.append(f"<p class='note'>{e(b['note'])}</p>")
    if b.get("confusion"):
        parts.append("<h3>Flagged vs true (files)</h3>")
        parts.append(_matrix_table(["normal", "anomalous"], b["confusion"]["matrix"]))
    lc = report.get("label_confusion")
    if lc:
        parts.append(f"<h3>Predicted label vs true label (accuracy {lc['accuracy']:.1%}, {lc['files']} files)</h3>")
        parts.append(_matrix_table(lc["labels"], lc["matrix"]))
    pm = report.get("per_machine") or {}
    if pm:
        parts.append("<h3>Per machine type</h3>")
        parts.append(_table([[k, v["files"], v["normal"], v["anomalous"], v.get("auc"), v.get("pauc")]
                             for k, v in pm.items()],
                            ["machine", "files", "normal", "anomalous", "AUC", "pAUC"]))
    return parts


def _plots_and_files_html(report: dict[str, Any]) -> list[str]:
    e = html.escape
    parts: list[str] = []
    if report.get("plots"):
        parts.append("<h2>Plots</h2>")
        for p in report["plots"].values():
            parts.append(f"<figure><img src='{e(p['file'])}' alt='{e(p['caption'])}'>"
                         f"<figcaption>{e(p['caption'])}</figcaption></figure>")
    rows = sorted(report["files"], key=lambda r: -r["score"])
    parts.append("<h2>Files, highest score first</h2>")
    if len(rows) > MAX_FILE_ROWS:
        parts.append(f"<p>Showing {MAX_FILE_ROWS} of {len(rows)}; all are in <code>report.json</code>.</p>")
    cols = ["file", "label", "score", "flagged", "max window score", "seconds"]
    if any("predicted_label" in r for r in rows):
        cols.insert(2, "predicted label")
    table_rows = []
    for r in rows[:MAX_FILE_ROWS]:
        row = [Path(r["file"]).name, r["label"], r["score"], "yes" if r["flagged"] else "no",
               r["window_score_max"], r["seconds"]]
        if "predicted label" in cols:
            row.insert(2, r.get("predicted_label"))
        table_rows.append(row)
    parts.append(_table(table_rows, cols))
    parts.append("<p>Machine-readable results: <a href='report.json'>report.json</a>.</p></body></html>")
    return parts
