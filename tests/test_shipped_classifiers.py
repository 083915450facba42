"""Each shipped classifier bundle runs end to end: ``replay`` and the daemon, on SYNTHETIC recordings.

The recordings come from ``edge_monitor.training.synthetic`` (not real machines):
10 s normal, 10 s of a clear fault (severity 0.9), 10 s normal. The score of a
classifier window is the summed probability of its alert labels; the detector's
k-of-n trigger and hysteresis are the same as for any model.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import pytest

from edge_monitor.config import load_config
from edge_monitor.model import load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sources.wavfile import WavFileSource
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until  # noqa: F401
from tests.helpers.classifier_audio import (
    FAULT_END_SECONDS,
    FAULT_ONSET_SECONDS,
    MODELS_DIR,
    events_of,
    json_lines,
    run_cli,
    write_classifier_config,
    write_fault_sequence,
    write_machine_clip,
)
from tests.helpers.daemon import DaemonProcess

FAULT_TYPE_DETECTION = {"threshold": 0.98, "clear_threshold": 0.9}
"""fault-type's bundled 0.5 flags normal synthetic sound too (see models/README.md); as an alerting model it needs this."""


def _seconds(iso: str) -> float:
    return _dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SYNTHETIC WAVs shared by the tests of this module."""
    d = tmp_path_factory.mktemp("synthetic")
    return {
        "fan_bearing": write_fault_sequence(d / "fan-bearing.wav", "fan", "bearing", seed=1),
        "pump_leak": write_fault_sequence(d / "pump-leak.wav", "pump", "leak", seed=2),
        "pump": write_machine_clip(d / "pump.wav", "pump", 12.0, seed=5),
    }


def _replay(config: Path, wav: Path, *extra: str) -> list[dict]:
    result = run_cli("replay", "--config", str(config), str(wav), "--start", "0", *extra)
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def _one_episode(alerts: list[dict]) -> tuple[dict, dict]:
    assert [a["type"] for a in alerts] == ["start", "end"], alerts
    start, end = alerts
    assert start["episode"] == end["episode"]
    return start, end


@pytest.mark.timeout(120)
def test_normal_vs_abnormal_replay_alerts_once_over_the_fault(tmp_path: Path, recordings: dict[str, Path]) -> None:
    config = write_classifier_config(tmp_path, "normal-vs-abnormal", recordings["fan_bearing"])
    lines = _replay(config, recordings["fan_bearing"])
    start, end = _one_episode(events_of(lines, "alert"))
    started_s, ended_s = _seconds(start["started_at"]), _seconds(end["ended_at"])
    print(f"\nnormal-vs-abnormal: fault {FAULT_ONSET_SECONDS:g}-{FAULT_END_SECONDS:g} s, "
          f"alert {started_s:.2f}-{ended_s:.2f} s, score {start['score']:.3f}")
    # a window ending up to 1.05 s into the fault already hears it; the end needs 4 calm windows after it
    assert FAULT_ONSET_SECONDS - 0.5 <= started_s <= FAULT_ONSET_SECONDS + 2.0
    assert FAULT_END_SECONDS <= ended_s <= FAULT_END_SECONDS + 5.0
    assert start["threshold"] == pytest.approx(load_model(MODELS_DIR / "normal-vs-abnormal.tflite").bundle.threshold)
    assert start["label"] == end["label"] == "abnormal"
    assert [s["state"] for s in events_of(lines, "state")] == ["anomaly", "normal"]


@pytest.mark.timeout(120)
def test_fault_type_replay_names_the_fault(tmp_path: Path, recordings: dict[str, Path]) -> None:
    for key, fault in (("fan_bearing", "bearing"), ("pump_leak", "leak")):
        config = write_classifier_config(tmp_path / key, "fault-type", recordings[key], detection=FAULT_TYPE_DETECTION)
        start, end = _one_episode(events_of(_replay(config, recordings[key]), "alert"))
        started_s = _seconds(start["started_at"])
        print(f"\nfault-type on {key}: alert {started_s:.2f}-{_seconds(end['ended_at']):.2f} s, label {start['label']}")
        assert start["label"] == end["label"] == fault
        assert FAULT_ONSET_SECONDS - 1.0 <= started_s <= FAULT_ONSET_SECONDS + 2.0


@pytest.mark.timeout(120)
def test_fault_type_at_its_bundled_threshold_stays_quiet_on_the_normal_lead_in(tmp_path: Path,
                                                                              recordings: dict[str, Path]) -> None:
    """The bundled threshold is tuned on fresh normal clips (0.5 alerted on healthy machines)."""
    assert load_model(MODELS_DIR / "fault-type.tflite").bundle.threshold > 0.9
    config = write_classifier_config(tmp_path, "fault-type", recordings["fan_bearing"])
    starts = [a for a in events_of(_replay(config, recordings["fan_bearing"]), "alert") if a["type"] == "start"]
    print(f"\nfault-type at its bundled threshold: alerts at {[_seconds(a['started_at']) for a in starts]} s")
    assert starts and all(_seconds(a["started_at"]) >= FAULT_ONSET_SECONDS - 1.0 for a in starts)
    assert starts[0]["label"] == "bearing"


@pytest.mark.timeout(120)
def test_machine_type_replay_gives_per_window_probabilities_and_never_alerts(tmp_path: Path,
                                                                            recordings: dict[str, Path]) -> None:
    config = write_classifier_config(tmp_path, "machine-type", recordings["pump"], machine_type="pump")
    lines = _replay(config, recordings["pump"], "--scores")
    assert not events_of(lines, "alert")
    scores = events_of(lines, "score")
    assert len(scores) >= 20  # 12 s at 0.5 s per window
    for s in scores:
        assert set(s["probabilities"]) == {"fan", "pump", "slider", "valve"}
        assert sum(s["probabilities"].values()) == pytest.approx(1.0, abs=0.03)
        assert s["score"] < 2.0  # identify-only: the threshold sits above any probability
    pump_share = sum(s["label"] == "pump" for s in scores) / len(scores)
    print(f"\nmachine-type on SYNTHETIC pump: {pump_share:.0%} of {len(scores)} windows say pump")
    assert pump_share >= 0.8


def test_pipeline_labels_alerts_with_the_strongest_alert_label(recordings: dict[str, Path], tmp_path: Path) -> None:
    """In-process: the same labelled alert as replay, and a classifier score equals the summed alert probabilities."""
    config = load_config(write_classifier_config(tmp_path, "fault-type", recordings["pump_leak"],
                                                 detection=FAULT_TYPE_DETECTION))
    runner = load_model(MODELS_DIR / "fault-type.tflite")
    pipeline = Pipeline.from_config(config, runner)
    source = WavFileSource(recordings["pump_leak"], start_time_s=0.0)
    source.open()
    events = []
    while True:
        try:
            events += pipeline.process(source.read())
        except EOFError:
            break
    scored = [e for e in events if type(e).__name__ == "ScoreEvent"]
    alerts = [e for e in events if type(e).__name__ == "AlertEvent"]
    assert [a.label for a in alerts] == ["leak", "leak"]
    for e in scored[:10]:
        probs = dict(e.probabilities)
        assert e.score == pytest.approx(sum(p for label, p in probs.items() if label != "normal"), abs=1e-6)
    pipeline.close()


@pytest.mark.timeout(120)
def test_daemon_prints_classifier_alerts_from_a_file(tmp_path: Path, recordings: dict[str, Path]) -> None:
    config = write_classifier_config(tmp_path, "normal-vs-abnormal", recordings["fan_bearing"])
    daemon = DaemonProcess(config, tmp_path / "daemon.log", extra_args=("--print-events",))
    assert daemon.wait(90) == 0, daemon.log_text()
    daemon.stop()
    lines = json_lines(daemon.log_text())
    start, end = _one_episode(events_of(lines, "alert"))
    assert start["label"] == "abnormal"
    assert start["model"].startswith("normal-vs-abnormal@")
    assert "anomaly" in [s["state"] for s in events_of(lines, "state")]


@pytest.mark.timeout(150)
def test_daemon_publishes_fault_label_and_identify_telemetry_over_mqtt(tmp_path: Path, mosquitto: Mosquitto,
                                                                       recordings: dict[str, Path]) -> None:
    """Two machines on one gateway share one real-time file: fault-type alerts with a label, machine-type scores."""
    wav = write_fault_sequence(tmp_path / "fan-bearing-short.wav", "fan", "bearing", seed=1, seconds=(4.0, 6.0, 10.0))
    broker = {"host": mosquitto.host, "port": mosquitto.port}
    realtime = {"realtime": True}  # so telemetry flows while the file plays
    fault_cfg = write_classifier_config(tmp_path, "fault-type", wav, machine_id="ft", detection=FAULT_TYPE_DETECTION,
                                        mqtt=broker, source=realtime, name="ft.yaml")
    ident_cfg = write_classifier_config(tmp_path, "machine-type", wav, machine_id="mt", mqtt=broker, source=realtime,
                                        name="mt.yaml")
    collector = Collector(mosquitto, ["test/#"])
    daemon = DaemonProcess(fault_cfg, tmp_path / "daemon.log", extra_args=("--config", str(ident_cfg)))
    try:
        alerts = wait_until(lambda: [json.loads(m.payload) for m in collector.on("test/ft/alert")][1:] and
                            [json.loads(m.payload) for m in collector.on("test/ft/alert")], 90,
                            what="fault-type alert start and end")
        assert daemon.wait(60) == 0, daemon.log_text()
    finally:
        daemon.stop()
        collector.close()
    assert [a["type"] for a in alerts] == ["start", "end"]
    assert {a["label"] for a in alerts} == {"bearing"}
    telemetry = [json.loads(m.payload) for m in collector.on("test/mt/telemetry")]
    scored = [t for t in telemetry if t.get("windows")]
    assert scored, telemetry
    assert all(t["score_max"] <= 1.01 and t["threshold"] == pytest.approx(2.0) for t in scored)
    assert not collector.on("test/mt/alert")
