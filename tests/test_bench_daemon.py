"""The live daemon benchmark runs end to end in ``--quick`` mode and reports sane numbers.

It never asserts a timing threshold: the benchmark prints PASS/MISS, the test only checks
that every figure was measured (real daemon, real PulseAudio null sink, real mosquitto).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.mqtt_rig import mosquitto_available
from benchmarks.pulse_rig import pulse_available

REPO_ROOT = Path(__file__).resolve().parents[1]
POSITIVE_KEYS = ("cpu_percent", "reference_cpu_percent", "cpu_ratio", "rss_mb", "hwm_mb", "start_to_ready_s",
                 "start_to_capture_s", "start_to_first_score_s", "start_to_all_scored_s")


@pytest.mark.timeout(400)
def test_quick_live_benchmark_reports_every_figure() -> None:
    """``--quick --json``: 1 and 8 machines scored, CPU/RSS/start-up present and positive, targets judged."""
    if not pulse_available() or not mosquitto_available() or not shutil.which("paplay"):
        pytest.skip("needs pulseaudio, pulseaudio-utils and mosquitto")
    done = subprocess.run([sys.executable, "-m", "benchmarks.daemon_live", "--quick", "--json"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [(s["machines"], s["mqtt"]) for s in result["scenarios"]] == [(1, True), (8, True)]
    for scenario in result["scenarios"]:
        assert len(scenario["runs"]) == 1
        for run in scenario["runs"] + [scenario["median"]]:
            for key in POSITIVE_KEYS:
                assert run[key] is not None and run[key] > 0, (scenario["machines"], key, run)
            assert run["hwm_mb"] >= run["rss_mb"]
            assert run["start_to_capture_s"] < run["start_to_first_score_s"] <= run["start_to_all_scored_s"]
        run = scenario["runs"][0]
        assert run["exit_code"] == 0, run
        assert run["mqtt_connections"] >= scenario["machines"], run
    assert {t["key"] for t in result["targets"]} == {"cpu_percent", "hwm_mb", "start_to_first_score_s"}
    assert len(result["targets"]) == 4 and all(isinstance(t["pass"], bool) for t in result["targets"])
    assert result["settings"]["window_s"] > 0 and result["machine"]["cores"] >= 1
