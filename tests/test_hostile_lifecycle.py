"""The daemon's life against a hostile environment: stops and kill -9 during an alert, broker restarts,
a careless umask, and configs that would make machines share files.

Real ``edge-monitor run`` processes, a real mosquitto, real WAVs cut from the
bundled demo recording (SYNTHETIC fan audio: normal, then a bearing fault).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_monitor.wavio import read_wav, write_wav
from tests.helpers.broker import Collector, Mosquitto, mosquitto, read_retained, wait_until  # noqa: F401
from tests.helpers.daemon import DEMO_WAV, REPO_ROOT, DaemonProcess, write_config


def _alerts(collector: Collector, prefix: str) -> list[dict]:
    return [m.json() for m in collector.on(f"{prefix}/alert")]


def fault_soon(path: Path, lead_seconds: float = 3.0) -> Path:
    """The demo recording cut so that its fault starts ``lead_seconds`` in (it lasts 10 s)."""
    audio, rate = read_wav(DEMO_WAV)
    write_wav(path, audio[int((15.0 - lead_seconds) * rate):], rate)
    return path


def quiet(path: Path, seconds: float = 4.0) -> Path:
    """Low-level noise (above the silence floor, far below the fault)."""
    rng = np.random.default_rng(0)
    write_wav(path, (0.01 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    return path


def _mqtt(broker: Mosquitto) -> dict:
    return {"host": broker.host, "port": broker.port}


# ---------------------------------------------------------------- alert life

@pytest.mark.timeout(120)
def test_clean_stop_during_an_alert_ends_it_and_says_state_unknown(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = "e2e/life-fan"
    wav = fault_soon(tmp_path / "fault.wav")
    config = write_config(tmp_path, machine_id="life-fan", mqtt=_mqtt(mosquitto),
                          source={"type": "file", "path": str(wav), "realtime": True})
    collector = Collector(mosquitto, [f"{prefix}/alert", f"{prefix}/state"])
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: _alerts(collector, prefix), 60, what=f"the alert start ({daemon.log_text()[-800:]})")
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    wait_until(lambda: len(_alerts(collector, prefix)) >= 2, 20, what="the end published by the stop")
    start, end = _alerts(collector, prefix)
    assert (start["type"], end["type"]) == ("start", "end") and end["episode"] == start["episode"]
    assert end["reason"] == "shutdown" and "ended_at" in end
    assert read_retained(mosquitto, f"{prefix}/state") == b"unknown"
    assert read_retained(mosquitto, f"{prefix}/status") == b"offline"
    assert not list((tmp_path / "state").glob("episode-*.json")), "the open-episode record outlived the episode"
    collector.close()


@pytest.mark.timeout(180)
def test_kill9_during_an_alert_is_closed_by_the_next_start(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = "e2e/life-fan"
    wav = fault_soon(tmp_path / "fault.wav")
    config = write_config(tmp_path, machine_id="life-fan", mqtt=_mqtt(mosquitto),
                          source={"type": "file", "path": str(wav), "realtime": True})
    collector = Collector(mosquitto, [f"{prefix}/alert"], client_id="life-sub", persistent=True)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: _alerts(collector, prefix), 60, what=f"the alert start ({daemon.log_text()[-800:]})")
    finally:
        daemon.kill9()
    assert list((tmp_path / "state").glob("episode-*.json")), "no open-episode record on disk"
    data = yaml.safe_load(config.read_text())
    data["source"] = {"type": "file", "path": str(quiet(tmp_path / "quiet.wav")), "realtime": True, "loop": True}
    config.write_text(yaml.safe_dump(data))
    second = DaemonProcess(config, tmp_path / "daemon2.log")
    try:
        wait_until(lambda: len(_alerts(collector, prefix)) >= 2, 60,
                   what=f"the end of the dangling episode ({second.log_text()[-800:]})")
        time.sleep(1.0)  # a duplicate, if any, would arrive now
    finally:
        second.stop()
    alerts = _alerts(collector, prefix)
    assert [a["type"] for a in alerts] == ["start", "end"], alerts
    assert alerts[1]["episode"] == alerts[0]["episode"] and alerts[1]["reason"] == "restart"
    assert alerts[1]["started_at"] == alerts[0]["started_at"]
    assert "previous run stopped during alert episode" in second.log_text()
    collector.close()


# ---------------------------------------------------------------- chaos: broker restarts

def chaos_recording(path: Path, cycles: int) -> Path:
    """``cycles`` x (4 s normal, 3 s fault) then 4 s normal, cut from the demo recording."""
    audio, rate = read_wav(DEMO_WAV)
    normal, fault = audio[:15 * rate], audio[15 * rate:25 * rate]
    parts = []
    for k in range(cycles):
        n0, f0 = (k * 4 * rate) % (11 * rate), (k * 3 * rate) % (7 * rate)
        parts += [normal[n0:n0 + 4 * rate], fault[f0:f0 + 3 * rate]]
    parts.append(normal[:4 * rate])
    write_wav(path, np.concatenate(parts), rate)
    return path


@pytest.mark.timeout(300)
def test_chaos_broker_restarts_lose_and_duplicate_no_alert(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = "e2e/chaos-fan"
    wav = chaos_recording(tmp_path / "chaos.wav", cycles=6)
    detection = {"trigger_k": 2, "trigger_n": 3, "clear_windows": 2, "cooldown_seconds": 1}
    config = write_config(tmp_path, machine_id="chaos-fan", mqtt=_mqtt(mosquitto), detection=detection,
                          source={"type": "file", "path": str(wav), "realtime": True})
    replayed = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", "--config", str(config), str(wav)],
                              capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    expected = [json.loads(line) for line in replayed.stdout.splitlines() if '"event": "alert"' in line]
    assert len(expected) >= 8, replayed.stdout  # at least four episodes to count

    collector = Collector(mosquitto, [f"{prefix}/alert"], client_id="chaos-sub", persistent=True)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    restarts = 0
    try:
        wait_until(lambda: "monitoring chaos-fan" in daemon.log_text(), 60, what="the daemon to start")
        for _ in range(4):  # outages of ~1.5 s, every ~6 s, all well before the recording ends (46 s)
            time.sleep(4.5)
            mosquitto.stop()
            time.sleep(1.5)
            mosquitto.start()
            restarts += 1
        assert daemon.wait(120) == 0, daemon.log_text()[-2000:]
        wait_until(lambda: len(_alerts(collector, prefix)) >= len(expected), 60,
                   what=f"{len(expected)} alerts (got {len(_alerts(collector, prefix))})")
        time.sleep(1.0)  # a late duplicate would arrive now
    finally:
        daemon.stop()
    got = _alerts(collector, prefix)
    ids = [a["id"] for a in got]
    print(f"\nchaos: {restarts} broker restarts, {len(expected)} alerts expected, {len(got)} received, "
          f"{len(ids) - len(set(ids))} duplicate(s)")
    assert len(set(ids)) == len(ids), "an alert arrived twice"
    assert len(got) == len(expected), "an alert was lost"
    assert [a["type"] for a in got] == [a["type"] for a in expected], "reordered"
    assert [_recording_s(a, got[0], expected[0]) for a in got] == \
        pytest.approx([a["recording_s"] for a in expected], abs=0.01)
    collector.close()


def _recording_s(alert: dict, first: dict, first_expected: dict) -> float:
    """Where an MQTT alert falls in the recording, from its time stamps and the first alert's position."""
    def seconds(a: dict) -> float:
        from datetime import datetime
        return datetime.fromisoformat((a.get("ended_at") or a["started_at"]).replace("Z", "+00:00")).timestamp()
    return first_expected["recording_s"] + seconds(alert) - seconds(first)


# ---------------------------------------------------------------- files and permissions

@pytest.mark.timeout(120)
def test_files_are_private_whatever_the_umask(tmp_path: Path, mosquitto: Mosquitto) -> None:
    prefix = "e2e/perm-fan"
    wav = fault_soon(tmp_path / "fault.wav")
    config = write_config(tmp_path, machine_id="perm-fan", mqtt=_mqtt(mosquitto),
                          source={"type": "file", "path": str(wav), "realtime": True})
    collector = Collector(mosquitto, [f"{prefix}/#"])
    old = os.umask(0)  # the child inherits a umask that would make everything world-writable
    try:
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
    finally:
        os.umask(old)
    try:
        wait_until(lambda: _alerts(collector, prefix), 60, what="the alert start")
        collector.client.publish(f"{prefix}/threshold/set", b"40.0", qos=1)
        wait_until(lambda: list((tmp_path / "state").glob("threshold-*.json")), 30, what="the saved threshold")
        wait_until(lambda: list((tmp_path / "clips").glob("*.wav")), 30, what="the clip")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir() if p.is_file()}
    finally:
        daemon.stop()
    assert any(n.startswith("outbox-") and n.endswith(".sqlite") for n in modes), modes
    assert any(n.startswith("episode-") for n in modes), modes
    for name, mode in modes.items():
        assert mode & 0o077 == 0, f"{name} is {mode:04o}"
    for clip in (tmp_path / "clips").glob("*.wav"):
        assert stat.S_IMODE(clip.stat().st_mode) == 0o640, clip
    assert stat.S_IMODE((tmp_path / "clips").stat().st_mode) == 0o750
    collector.close()


def test_two_machines_sharing_one_outbox_are_refused(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared-outbox.sqlite")
    configs = [write_config(tmp_path / name, machine_id=name, name=f"{name}.yaml",
                            mqtt={"host": "127.0.0.1", "port": 1, "outbox_path": shared}) for name in ("fan-a", "fan-b")]
    result = subprocess.run([sys.executable, "-m", "edge_monitor", "run", "--config", str(configs[0]), "--config",
                             str(configs[1]), "--max-seconds", "5"], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "would share the outbox" in result.stderr and "fan-a" in result.stderr and "fan-b" in result.stderr
    assert not Path(shared).exists()


def test_relative_outbox_path_follows_the_config_not_the_working_directory(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    config = write_config(folder, mqtt={"host": "127.0.0.1", "port": 1, "outbox_path": "queue/outbox.sqlite"})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "edge_monitor", "run", "--config", str(config), "--max-seconds",
                             "3"], capture_output=True, text=True, timeout=120, cwd=elsewhere,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr
    assert (folder / "queue" / "outbox.sqlite").is_file()
    assert not (elsewhere / "queue").exists()
