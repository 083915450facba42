"""Alerts from a file source say where they fall in the recording (``recording_s``; "at 15.9 s of the recording").

Runs the bundled demo exactly as ``scripts/demo.sh`` does (``edge-monitor run`` without a config) and
``replay`` over the same SYNTHETIC recording (fault from 15 s to 25 s).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_monitor" / "demo"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "edge_monitor", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _alerts(stdout: str) -> list[dict]:
    return [obj for obj in map(json.loads, (ln for ln in stdout.splitlines() if ln.startswith("{")))
            if obj.get("event") == "alert"]


def _unix(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_the_demo_says_where_in_the_recording_each_alert_falls(tmp_path: Path) -> None:
    done = _cli("run", cwd=tmp_path)
    alerts = _alerts(done.stdout)
    assert [a["type"] for a in alerts] == ["start", "end"]
    start, end = alerts
    assert 14.0 <= start["recording_s"] <= 18.0 and 25.0 <= end["recording_s"] <= 30.0, alerts
    assert end["recording_s"] - start["recording_s"] == pytest.approx(
        _unix(end["ended_at"]) - _unix(start["started_at"]), abs=0.002)
    said = re.findall(r"alert (start|end) \(.*\) at ([0-9.]+) s of the recording", done.stderr)
    assert said == [(a["type"], f"{a['recording_s']:.1f}") for a in alerts], done.stderr


def test_replay_offsets_are_seconds_from_the_first_sample(tmp_path: Path) -> None:
    done = _cli("replay", "--config", str(DEMO / "demo.yaml"), str(DEMO / "demo-fan.wav"), "--start", "1000",
                cwd=tmp_path)
    alerts = _alerts(done.stdout)
    assert alerts, done.stdout
    for a in alerts:
        at = _unix(a["ended_at"] if a["type"] == "end" else a["started_at"])
        assert a["recording_s"] == pytest.approx(at - 1000.0, abs=0.001), a


def test_a_recording_that_ends_during_an_alert_closes_it_in_run_and_replay_alike(tmp_path: Path) -> None:
    from edge_monitor.wavio import read_wav, write_wav

    audio, rate = read_wav(DEMO / "demo-fan.wav")
    cut = tmp_path / "cut.wav"
    write_wav(cut, audio[:20 * rate], rate)       # the fault starts at 15 s: the file ends inside the alert
    config = tmp_path / "cut.yaml"
    config.write_text((DEMO / "demo.yaml").read_text()
                      .replace("path: demo-fan.wav", f"path: {cut}")
                      .replace("path: demo-fan.tflite", f"path: {DEMO / 'demo-fan.tflite'}")
                      .replace("state_dir: /tmp/edge-monitor-demo", f"state_dir: {tmp_path / 'state'}"))
    ran = _alerts(_cli("run", "--config", str(config), "--print-events", cwd=tmp_path).stdout)
    replayed = _alerts(_cli("replay", "--config", str(config), str(cut), cwd=tmp_path).stdout)
    for alerts in (ran, replayed):
        assert [(a["type"], a.get("reason")) for a in alerts] == [("start", None), ("end", "shutdown")], alerts
        assert alerts[1]["recording_s"] == pytest.approx(20.0, abs=0.1)
    assert [a["recording_s"] for a in ran] == pytest.approx([a["recording_s"] for a in replayed], abs=0.1)
