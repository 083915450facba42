"""``edge-monitor bench --json`` runs end to end and reports every key as a positive number (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

POSITIVE_KEYS = ("hop_us_median", "hop_us_median_block4", "realtime_factor", "realtime_factor_live_blocks",
                 "realtime_factor_cpu", "rss_mb", "startup_s", "inference_us_median", "cpu_percent_live_16k",
                 "cpu_percent_8_machines")


@pytest.fixture(scope="module")
def bench_result() -> dict:
    pytest.importorskip("librosa")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "edge_monitor", "bench", "--json", "--seconds", "20"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


@pytest.mark.timeout(600)
def test_bench_reports_every_key_as_a_positive_number(bench_result: dict) -> None:
    for key in POSITIVE_KEYS + ("librosa_ratio",):
        value = bench_result[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert value > 0, (key, value)
    assert bench_result["cpu_percent_8_machines"] == pytest.approx(8 * bench_result["cpu_percent_live_16k"])
    assert bench_result["audio_seconds"] == 20
    assert bench_result["windows_per_run"] > 0


@pytest.mark.timeout(600)
def test_bench_describes_the_machine_and_the_targets(bench_result: dict) -> None:
    m = bench_result["machine"]
    assert m["cores"] >= 1 and m["python"] and m["numpy"] and m["backend"] in ("ai_edge_litert", "tflite_runtime",
                                                                                "tensorflow")
    assert set(bench_result["targets"]) == {"hop_us_median", "realtime_factor", "librosa_ratio", "rss_mb",
                                            "startup_s", "cpu_percent_live_16k", "cpu_percent_8_machines"}
    assert all(isinstance(v, bool) for v in bench_result["targets"].values())
    assert "SYNTHETIC" in bench_result["audio"]



@pytest.mark.timeout(600)
def test_librosa_ratio_is_a_median_of_interleaved_pairs_with_its_spread(bench_result: dict) -> None:
    pairs = bench_result["librosa_pairs"]
    for key in ("librosa_ratio", "librosa_ratio_live_blocks", "librosa_ratio_cpu"):
        spread = bench_result[key + "_spread"]
        assert len(spread["runs"]) == pairs >= 3, spread
        assert spread["min"] <= spread["median"] <= spread["max"], spread
        assert spread["median"] == pytest.approx(bench_result[key], abs=0.01)
    assert all(n >= 1 for n in bench_result["librosa_our_passes"])
    assert "projection" in bench_result["cpu_percent_8_machines_method"]

@pytest.mark.timeout(600)
def test_live_path_imports_no_heavy_modules(bench_result: dict) -> None:
    assert bench_result["rss_heavy_modules"] == []
    assert bench_result["rss_windows"] > 0


def test_bench_refuses_a_missing_model(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "edge_monitor", "bench", "--json", "--seconds", "20", "--model",
                           str(tmp_path / "absent.tflite")], capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and "absent.tflite: file not found" in done.stderr
