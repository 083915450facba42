"""``edge-monitor bench``: measure the pipeline on this machine and compare it with the DESIGN.md targets.

What is measured (all on one thread, medians of repeats because shared machines are noisy):

* ``hop_us_median``: one 512-sample hop through ``StreamingExtractor.process``, timed call by call;
  ``hop_us_median_block4`` is the per-hop cost when four hops arrive in one call.
* ``realtime_factor``: seconds of audio per wall-clock second for ``Pipeline.process`` (features,
  int8 inference, detector) over a SYNTHETIC recording of ``--seconds`` fed in 32 ms blocks.
* ``librosa_ratio``: that throughput divided by the throughput of a reference built the way prior
  work runs live: the stream arrives hop by hop, and whenever a window is due the reference
  recomputes the latest window's log-mel with librosa and runs the same TFLite model on it.
  Both sides are warmed up, then timed in interleaved pairs on the same audio; the median ratio
  is reported with its range (``librosa_ratio_spread``), and again for the live 32 ms blocks
  (``librosa_ratio_live_blocks``). ``cpu_percent_8_machines`` is a projection (8 x one machine).
* ``rss_mb`` and ``startup_s``: measured in fresh subprocesses running the daemon's import path
  (never TensorFlow or librosa).

The audio is SYNTHETIC (``edge_monitor.training.synthetic``): throughput does not depend on what the
machine sounds like, but say so when quoting the numbers. librosa is imported only inside the
reference function (the ``[dev]`` extra), and TensorFlow never: ``bench`` runs from a plain
``pip install``, with the demo model from the package data as its default.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edge_monitor.bundle import BundleError
from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import ScoreEvent
from edge_monitor.features import FeatureSpec, StreamingExtractor
from edge_monitor.levels import rms_dbfs
from edge_monitor.model import ModelRunner, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sources.base import Block
from edge_monitor.wavio import write_wav

_LOGGER = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the edge_monitor package
DEMO_MODEL = Path(__file__).resolve().parent / "demo" / "demo-fan.tflite"  # package data: works when installed
BLOCK_SECONDS = 0.032           # the live sources' block (512 samples at 16 kHz)
WINDOW_HOP_SECONDS = 0.5        # the config default
SYNTHETIC_CLIP_SECONDS = 20.0   # generated once, then repeated to the requested length
REFERENCE_SECONDS = 60.0        # audio length for the librosa reference
HOP_CALLS = 4000                # single-hop calls per repeat
REPEATS = 3
MAX_PASSES = 50                 # passes of ours timed against one reference run (see measure_librosa_ratio)
RATIO_PAIRS = 5                 # interleaved (ours, reference, ours live) timings for librosa_ratio
SUBPROCESS_REPEATS = 3
SUBPROCESS_TIMEOUT_S = 120.0

TARGETS = (  # key, comparison, limit, text
    ("hop_us_median", "<=", 20.0, "streaming log-mel hop <= 20 us"),
    ("realtime_factor", ">=", 1000.0, "whole pipeline >= 1000x real time"),
    ("librosa_ratio", ">=", 5.0, ">= 5x the librosa + TFLite reference"),
    ("rss_mb", "<=", 80.0, "live pipeline RSS <= 80 MB"),
    ("startup_s", "<=", 1.0, "start to first score <= 1 s"),
    ("cpu_percent_live_16k", "<=", 1.0, "one live machine <= 1% of a core"),
    ("cpu_percent_8_machines", "<=", 5.0, "eight machines <= 5% of a core"),
)


class BenchError(RuntimeError):
    """The benchmark can't run (no model, a probe that failed). One sentence."""


# ---------------------------------------------------------------- model

def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def resolve_model(requested: Optional[str]) -> tuple[Path, str]:
    """The model to benchmark, as an absolute path, and where it came from: ``--model`` or the bundled demo.

    A relative ``--model`` is resolved against the current directory here, before the start-up probe
    writes a config into a temporary directory (where a relative path would point elsewhere).
    """
    if requested:
        return Path(requested).expanduser().resolve(), "--model"
    if not DEMO_MODEL.is_file():
        raise BenchError(f"the bundled demo model {DEMO_MODEL} is missing (a broken install?); "
                         "pass --model M.tflite")
    return DEMO_MODEL, "bundled demo"


# ---------------------------------------------------------------- audio

def synthetic_recording(spec: FeatureSpec, seconds: float) -> np.ndarray:
    """A SYNTHETIC fan recording ``(n,)`` float32 of ``seconds``: a generated clip repeated."""
    from edge_monitor.training.synthetic import generate

    clip = generate("fan", min(seconds, SYNTHETIC_CLIP_SECONDS), spec.sample_rate, seed=7)
    n = int(round(seconds * spec.sample_rate))
    return np.resize(clip, n).astype(np.float32)


# ---------------------------------------------------------------- measurements

def _median_of(repeats: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(repeats)]
    return statistics.median(values), values


def measure_hop_us(spec: FeatureSpec, audio: np.ndarray, hops_per_call: int = 1) -> float:
    """Median cost (microseconds) per hop of ``StreamingExtractor.process`` fed ``hops_per_call`` hops per call."""
    ex = StreamingExtractor(spec)
    hop = spec.hop_length
    ex.process(audio[:spec.n_fft - hop])  # primed: every call now completes frames
    pos = spec.n_fft - hop
    step = hop * hops_per_call
    calls = max(200, HOP_CALLS // hops_per_call)
    chunks = [audio[(pos + i * step) % (audio.size - step):][:step] for i in range(calls)]
    chunks = [np.ascontiguousarray(c) for c in chunks]
    times_ns = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i, c in enumerate(chunks):
        t0 = clock()
        ex.process(c)
        times_ns[i] = clock() - t0
    return float(np.median(times_ns)) / 1e3 / hops_per_call


def measure_hop_parts_us(spec: FeatureSpec, audio: np.ndarray, calls: int = 2000) -> dict[str, float]:
    """Median numpy cost (microseconds) of each step of one frame: window+rfft, power, mel sum, log."""
    from edge_monitor.features import _Kernel

    k = _Kernel(spec)
    frame = np.ascontiguousarray(audio[:spec.n_fft].reshape(1, -1))
    parts: dict[str, list[int]] = {"rfft_us": [], "power_us": [], "mel_us": [], "log_us": []}
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        spectrum = np.fft.rfft(frame * k.window, axis=1)
        t1 = clock()
        power = spectrum.real ** 2 + spectrum.imag ** 2
        t2 = clock()
        mel = np.add.reduceat(np.take(power, k.bins, axis=1) * k.weights, k.band_starts, axis=1)
        t3 = clock()
        np.float32(10.0) * np.log10(np.maximum(mel, k.amin))
        t4 = clock()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(dt)
    return {key: round(float(np.median(v)) / 1e3, 3) for key, v in parts.items()}


def _make_pipeline(runner: ModelRunner) -> Pipeline:
    det = Detector(DetectorSettings(threshold=runner.bundle.threshold), "bench", runner.bundle.ident)
    return Pipeline(runner, det, window_hop_seconds=WINDOW_HOP_SECONDS)


def expected_windows(spec: FeatureSpec, hop_frames: int, n_samples: int) -> int:
    """Windows a pipeline must score over ``n_samples`` of sound (no silence)."""
    frames = 0 if n_samples < spec.n_fft else 1 + (n_samples - spec.n_fft) // spec.hop_length
    return 0 if frames < spec.frames_per_window else 1 + (frames - spec.frames_per_window) // hop_frames


def run_pipeline_once(runner: ModelRunner, audio: np.ndarray, block_samples: int) -> dict[str, Any]:
    """One pass of the whole pipeline over ``audio`` in blocks: wall and CPU seconds, windows, latencies."""
    spec = runner.bundle.spec
    pipe = _make_pipeline(runner)
    n = block_samples
    blocks = [audio[i:i + n, None] for i in range(0, audio.size, n)]
    latencies_ms = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    t_s = 0.0
    for b in blocks:
        for e in pipe.process(Block(b, t_s, spec.sample_rate)):
            if isinstance(e, ScoreEvent):
                latencies_ms.append(e.latency_ms)
        t_s += b.shape[0] / spec.sample_rate
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "windows": pipe.windows_scored, "latencies_ms": latencies_ms}


def librosa_reference_once(runner: ModelRunner, audio: np.ndarray, librosa: Any) -> float:
    """Wall seconds for the prior-work style live loop over ``audio`` (see the module docstring)."""
    return librosa_reference_timed(runner, audio, librosa)[0]


def librosa_reference_timed(runner: ModelRunner, audio: np.ndarray, librosa: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for the prior-work style live loop over ``audio``."""
    spec = runner.bundle.spec
    pipe = _make_pipeline(runner)  # same window cadence and detector as ours
    hop, hop_frames = spec.hop_length, pipe.hop_frames
    window_samples = (spec.frames_per_window - 1) * hop + spec.n_fft
    det = pipe.detector
    norm = None if spec.mel_norm == "none" else "slaney"
    t0, cpu0 = time.perf_counter(), time.process_time()
    hops = 0
    for end in range(hop, audio.size + 1, hop):  # the stream arrives one hop at a time
        hops += 1
        if end < window_samples or (end - window_samples) % (hop * hop_frames):
            continue
        latest = audio[end - window_samples:end]
        mel = librosa.feature.melspectrogram(
            y=latest, sr=spec.sample_rate, n_fft=spec.n_fft, hop_length=hop, window="hann", center=False,
            power=2.0, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax_hz, htk=spec.mel_scale == "htk",
            norm=norm)
        feats = librosa.power_to_db(mel, ref=1.0, amin=spec.amin, top_db=None).T.astype(np.float32)
        if spec.n_mfcc:
            feats = librosa.feature.mfcc(S=feats.T, n_mfcc=spec.n_mfcc, norm="ortho").T.astype(np.float32)
        level = rms_dbfs(float(np.mean(latest.astype(np.float64) ** 2)))
        score = runner.process(feats)  # normalises, quantises and scores, as in our pipeline
        det.process(score, end / spec.sample_rate, level, 0.0)
    return time.perf_counter() - t0, time.process_time() - cpu0


_CHILD_RSS = r"""
import json, resource, sys, time
from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.model import load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sources.wavfile import WavFileSource
runner = load_model(sys.argv[1])
pipe = Pipeline(runner, Detector(DetectorSettings(threshold=runner.bundle.threshold), "bench", runner.bundle.ident))
src = WavFileSource(sys.argv[2], block_seconds=0.032)
src.open()
while True:
    try:
        block = src.read()
    except EOFError:
        break
    pipe.process(block)
heavy = sorted(m for m in ("tensorflow", "librosa", "matplotlib", "keras") if m in sys.modules)
# VmHWM belongs to this process image; ru_maxrss is inherited from the parent across fork and exec
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    peak_kb, how = int(hwm[0].split()[1]), "VmHWM"
except (OSError, IndexError, ValueError):
    peak_kb, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
print(json.dumps({"maxrss_kb": peak_kb, "how": how, "heavy_modules": heavy, "windows": pipe.windows_scored}))
"""


def measure_rss(model: Path, wav: Path) -> dict[str, Any]:
    """Peak RSS (MB) of a fresh process running the live pipeline over ``wav``; median of repeats."""
    results = []
    for _ in range(SUBPROCESS_REPEATS):
        done = subprocess.run([sys.executable, "-c", _CHILD_RSS, str(model), str(wav)], capture_output=True,
                              text=True, env=_subprocess_env(), timeout=SUBPROCESS_TIMEOUT_S)
        if done.returncode != 0:
            raise BenchError(f"the RSS probe failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    rss = [r["maxrss_kb"] / 1024.0 for r in results]
    return {"rss_mb": statistics.median(rss), "rss_mb_runs": [round(v, 1) for v in rss],
            "rss_heavy_modules": results[0]["heavy_modules"], "rss_windows": results[0]["windows"],
            "rss_method": results[0]["how"]}


def measure_startup(model: Path, wav: Path, workdir: Path) -> dict[str, Any]:
    """Seconds from launching ``edge-monitor replay --scores`` to its first score line; median of repeats."""
    cfg = workdir / "bench.yaml"
    cfg.write_text(f"machine:\n  id: bench\nmodel:\n  path: {json.dumps(str(model))}\nsource:\n  type: file\n"
                   f"  path: {json.dumps(str(wav))}\nstate_dir: {json.dumps(str(workdir / 'state'))}\n")
    cmd = [sys.executable, "-m", "edge_monitor", "replay", "--config", str(cfg), "--scores", str(wav)]
    times = []
    for _ in range(SUBPROCESS_REPEATS):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_subprocess_env())
        first: Optional[float] = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if '"event": "score"' in line:
                    first = time.perf_counter() - t0
                    break
        finally:
            proc.kill()
            _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        if first is None:
            raise BenchError(f"replay printed no score: {(err.strip().splitlines() or ['?'])[-1]}")
        times.append(first)
    return {"startup_s": statistics.median(times), "startup_s_runs": [round(t, 3) for t in times]}


def machine_info(runner: ModelRunner) -> dict[str, Any]:
    """CPU model, cores, load, Python, numpy and TFLite backend versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
            "tensorflow": "tensorflow-cpu"}[runner.backend]
    try:
        backend_version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        backend_version = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "numpy": np.__version__,
            "backend": runner.backend, "backend_version": backend_version}


# ---------------------------------------------------------------- orchestration

def _spread(values: list[float]) -> dict[str, Any]:
    """Median, minimum, maximum and every value, rounded for the report."""
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": [round(v, 2) for v in values]}


def measure_librosa_ratio(runner: ModelRunner, audio: np.ndarray, progress: Callable[[str], None],
                          pairs: int = RATIO_PAIRS) -> dict[str, Any]:
    """Our throughput over the librosa reference's, on the same audio, as a median of interleaved pairs.

    Both sides are warmed up first (numba's compilation, FFT plans, the interpreter's first calls),
    then each pair times ours in file blocks, the reference, and ours in the live 32 ms blocks,
    back to back: a machine that slows down or speeds up between phases (other jobs, frequency
    scaling) moves both sides of a pair alike, instead of one whole side. One pass of ours over a
    minute of audio takes only tens of milliseconds, so short that a single preemption or cache
    upset changes it by 2-3x (measured: 18 to 58 ms for the same pass while the reference stayed
    within 25%); each pair therefore times ``passes`` passes of ours, about as long as one
    reference run, and divides.
    """
    try:
        import librosa  # dev dependency only; never on the daemon's import path
    except ImportError:
        return {"librosa_ratio": None, "librosa_ratio_live_blocks": None}
    spec = runner.bundle.spec
    seconds = audio.size / spec.sample_rate
    file_block = _make_pipeline(runner).hop_frames * spec.hop_length
    live_block = int(round(BLOCK_SECONDS * spec.sample_rate))
    warm = audio[:spec.sample_rate * 2]
    progress(f"librosa reference: warm-up, then {pairs} interleaved pairs over {seconds:g} s")
    librosa_reference_once(runner, warm, librosa)
    run_pipeline_once(runner, warm, file_block)
    run_pipeline_once(runner, warm, live_block)
    reference_s = librosa_reference_once(runner, audio, librosa)
    passes = max(1, min(MAX_PASSES, round(reference_s / max(run_pipeline_once(runner, audio, file_block)["wall_s"],
                                                            1e-6))))
    live_passes = max(1, min(MAX_PASSES, round(reference_s / max(run_pipeline_once(runner, audio,
                                                                                   live_block)["wall_s"], 1e-6))))

    def ours(block: int, n: int) -> tuple[float, float]:
        runs = [run_pipeline_once(runner, audio, block) for _ in range(n)]
        return sum(r["wall_s"] for r in runs) / n, sum(r["cpu_s"] for r in runs) / n

    ratios, live_ratios, cpu_ratios, reference_rates = [], [], [], []
    for _ in range(pairs):
        ours_wall, ours_cpu = ours(file_block, passes)
        reference, reference_cpu = librosa_reference_timed(runner, audio, librosa)
        ours_live, _ = ours(live_block, live_passes)
        ratios.append(reference / ours_wall)
        cpu_ratios.append(reference_cpu / max(ours_cpu, 1e-9))
        live_ratios.append(reference / ours_live)
        reference_rates.append(seconds / reference)
    return {"librosa_seconds": seconds, "librosa_pairs": pairs, "librosa_our_passes": [passes, live_passes],
            "librosa_version": getattr(librosa, "__version__", "?"),
            "librosa_ratio": statistics.median(ratios), "librosa_ratio_spread": _spread(ratios),
            "librosa_ratio_live_blocks": statistics.median(live_ratios),
            "librosa_ratio_live_blocks_spread": _spread(live_ratios),
            "librosa_ratio_cpu": statistics.median(cpu_ratios), "librosa_ratio_cpu_spread": _spread(cpu_ratios),
            "librosa_realtime_factor": statistics.median(reference_rates)}


def _measure_pipeline(result: dict[str, Any], runner: ModelRunner, audio: np.ndarray,
                      progress: Callable[[str], None]) -> None:
    """The whole pipeline over ``audio`` in file and in live blocks: throughput, latency, CPU (into ``result``)."""
    spec = runner.bundle.spec
    seconds = audio.size / spec.sample_rate
    hop_frames = _make_pipeline(runner).hop_frames
    want = expected_windows(spec, hop_frames, audio.size)
    modes = (("file", hop_frames * spec.hop_length), ("live", int(round(BLOCK_SECONDS * spec.sample_rate))))
    for mode, block in modes:
        progress(f"whole pipeline over {seconds:g} s in {block}-sample blocks ({mode}), {REPEATS} runs")
        runs_info = [run_pipeline_once(runner, audio, block) for _ in range(REPEATS)]
        rates = [seconds / r["wall_s"] for r in runs_info]
        suffix = "" if mode == "file" else "_live_blocks"
        result["realtime_factor" + suffix] = statistics.median(rates)
        result["realtime_factor" + suffix + "_runs"] = [round(r, 1) for r in rates]
        result["realtime_factor_cpu" + suffix] = statistics.median(seconds / max(r["cpu_s"], 1e-9)
                                                                  for r in runs_info)
        result["block_samples" + suffix] = block
        if runs_info[0]["windows"] != want:
            result["notes"].append(f"{mode} mode scored {runs_info[0]['windows']} windows, expected {want}")
        if mode == "live":
            latencies = [x for r in runs_info for x in r["latencies_ms"]]
            result["inference_us_median"] = float(np.median(latencies)) * 1e3 if latencies else None
            cpu_per_audio_s = statistics.median(r["cpu_s"] / seconds for r in runs_info)
    result["windows_per_run"] = want
    result["cpu_percent_live_16k"] = 100.0 * cpu_per_audio_s
    result["cpu_percent_live_16k_from_wall"] = 100.0 / result["realtime_factor_live_blocks"]
    result["cpu_percent_8_machines"] = 8 * result["cpu_percent_live_16k"]
    result["cpu_percent_8_machines_method"] = "projection: 8 x one machine's CPU, not measured with 8 machines"


def collect(model_arg: Optional[str], seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run every measurement and return the JSON-ready result."""
    model, origin = resolve_model(model_arg)
    runner = load_model(model, threads=1)
    spec = runner.bundle.spec
    result: dict[str, Any] = {"model": str(model), "model_origin": origin, "model_ident": runner.bundle.ident,
                              "audio": "SYNTHETIC fan (edge_monitor.training.synthetic), repeated",
                              "audio_seconds": seconds, "hop_length": spec.hop_length,
                              "sample_rate_hz": spec.sample_rate, "notes": []}
    progress(f"model {model} ({origin}); generating {seconds:g} s of SYNTHETIC audio")
    audio = synthetic_recording(spec, seconds)

    progress("features: single-hop timing")
    result["hop_us_median"], runs = _median_of(REPEATS, lambda: measure_hop_us(spec, audio, 1))
    result["hop_us_runs"] = [round(v, 2) for v in runs]
    result["hop_us_median_block4"], _ = _median_of(REPEATS, lambda: measure_hop_us(spec, audio, 4))
    result["hop_numpy_parts_us"] = measure_hop_parts_us(spec, audio)

    _measure_pipeline(result, runner, audio, progress)

    result.update(measure_librosa_ratio(runner, audio[:int(min(seconds, REFERENCE_SECONDS) * spec.sample_rate)],
                                        progress))
    if result["librosa_ratio"] is None:
        result["notes"].append("librosa is not installed (pip install librosa): librosa_ratio not measured")

    with tempfile.TemporaryDirectory(prefix="edge-monitor-bench-") as tmp:
        workdir = Path(tmp)
        wav = workdir / "synthetic-fan.wav"
        write_wav(wav, audio[:int(min(seconds, 30.0) * spec.sample_rate)], spec.sample_rate)
        progress("RSS of a fresh live-pipeline process")
        result.update(measure_rss(model, wav))
        progress("start-up: launch to first score")
        short = workdir / "short.wav"
        write_wav(short, audio[:int(min(seconds, 3.0) * spec.sample_rate)], spec.sample_rate)
        result.update(measure_startup(model, short, workdir))
    if result["rss_heavy_modules"]:
        result["notes"].append(f"the live path imported {', '.join(result['rss_heavy_modules'])}")
    result["machine"] = machine_info(runner)
    load, cores = result["machine"]["load_average"][0], result["machine"]["cores"] or 1
    if load > cores:
        result["notes"].append(f"the machine is loaded (load {load} on {cores} cores): wall-clock figures are "
                               "inflated; the *_cpu figures use this process's CPU time")
    result["targets"] = evaluate_targets(result)
    runner.close()
    return result


def evaluate_targets(result: dict[str, Any]) -> dict[str, Optional[bool]]:
    """PASS (True), MISS (False) or not measured (None) for each DESIGN.md target."""
    out: dict[str, Optional[bool]] = {}
    for key, op, limit, _ in TARGETS:
        value = result.get(key)
        out[key] = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return out


def format_text(r: dict[str, Any]) -> str:
    """Human-readable report with a PASS/MISS line per target."""
    m = r["machine"]
    p = r["hop_numpy_parts_us"]
    lines = [
        f"edge-monitor bench on {m['cpu']} ({m['cores']} cores, load {m['load_average']}), Python {m['python']}, "
        f"numpy {m['numpy']}, {m['backend']} {m['backend_version']}",
        f"model: {r['model']} ({r['model_origin']}, {r['model_ident']})",
        f"audio: {r['audio_seconds']:g} s of {r['audio']}",
        "",
        f"streaming log-mel per {r['hop_length']}-sample hop: {r['hop_us_median']:.1f} us median "
        f"(runs {r['hop_us_runs']}); {r['hop_us_median_block4']:.1f} us/hop in blocks of 4 hops",
        f"  numpy steps for one frame: rfft {p['rfft_us']} us, power {p['power_us']} us, mel {p['mel_us']} us, "
        f"log {p['log_us']} us",
        f"inference per window: {r['inference_us_median']:.0f} us median" if r["inference_us_median"] else
        "inference per window: no window was scored",
        f"whole pipeline over a file ({r['block_samples']}-sample blocks): {r['realtime_factor']:.0f}x real time "
        f"(runs {r['realtime_factor_runs']}; {r['realtime_factor_cpu']:.0f}x per CPU second), "
        f"{r['windows_per_run']} windows per run",
        f"whole pipeline in live {r['block_samples_live_blocks']}-sample blocks: "
        f"{r['realtime_factor_live_blocks']:.0f}x real time "
        f"({r['realtime_factor_cpu_live_blocks']:.0f}x per CPU second)",
        f"live CPU at {r['sample_rate_hz']} Hz: {r['cpu_percent_live_16k']:.3f}% of a core "
        f"(eight machines, projected as 8 x one: {r['cpu_percent_8_machines']:.2f}%)",
    ]
    if r["librosa_ratio"] is None:
        lines.append("librosa reference: not measured (" + "; ".join(r["notes"]) + ")")
    else:
        lines.append(f"librosa reference (librosa {r['librosa_version']}, {r['librosa_seconds']:g} s): "
                     f"{r['librosa_realtime_factor']:.0f}x real time; ours is {r['librosa_ratio']:.1f}x faster "
                     f"(median of interleaved pairs, range {r['librosa_ratio_spread']['min']:.1f}-"
                     f"{r['librosa_ratio_spread']['max']:.1f}); in live {r['block_samples_live_blocks']}-sample "
                     f"blocks {r['librosa_ratio_live_blocks']:.1f}x (range "
                     f"{r['librosa_ratio_live_blocks_spread']['min']:.1f}-"
                     f"{r['librosa_ratio_live_blocks_spread']['max']:.1f})")
    lines += [
        f"peak RSS of the live pipeline: {r['rss_mb']:.1f} MB (runs {r['rss_mb_runs']})",
        f"start-up to first score: {r['startup_s']:.2f} s (runs {r['startup_s_runs']})",
    ]
    lines += [f"note: {n}" for n in r["notes"]]
    lines += ["", "targets (DESIGN.md):"]
    for key, _, _, text in TARGETS:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[r["targets"][key]]
        value = r.get(key)
        shown = "null" if value is None else f"{value:.3g}"
        lines.append(f"  {verdict}  {text:40s} measured {shown}")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """The ``bench`` verb: 0 ok, 1 the benchmark failed, 2 bad model or arguments."""
    seconds = float(getattr(args, "seconds", 600.0))
    if not seconds >= 5.0:
        print(f"edge-monitor: --seconds must be at least 5, got {seconds:g}", file=sys.stderr)
        return 2
    quiet = bool(getattr(args, "json", False))

    def progress(msg: str) -> None:
        if not quiet:
            print(f"... {msg}", file=sys.stderr, flush=True)

    try:
        result = collect(getattr(args, "model", None), seconds, progress)
    except BundleError as exc:  # ModelError and the bundle reader's errors
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 2
    except (BenchError, subprocess.TimeoutExpired) as exc:
        print(f"edge-monitor: bench failed: {exc}", file=sys.stderr)
        return 1
    if quiet:
        print(json.dumps(result))
    else:
        print(format_text(result))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _LOGGER.debug("bench process peak RSS %.0f MB", peak_kb / 1024)
    return 0
