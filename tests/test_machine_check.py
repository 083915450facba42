"""The install-time machine-type check, on SYNTHETIC machine sounds (edge_monitor.training.synthetic, not recordings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.config import ConfigError, load_config, parse_config
from edge_monitor.events import HealthEvent
from edge_monitor.machine_check import MachineTypeCheck, make_type_check
from edge_monitor.model import ModelError, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.training.synthetic import generate
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until  # noqa: F401
from tests.helpers.classifier_audio import (
    MACHINE_TYPE_MODEL,
    SAMPLE_RATE_HZ,
    events_of,
    json_lines,
    run_cli,
    write_classifier_config,
    write_machine_clip,
)
from tests.helpers.daemon import DEMO_MODEL, DaemonProcess

CHECK_SECONDS = 6.0
BLOCK = 512


def _feed(check: MachineTypeCheck, audio: np.ndarray, t0_s: float = 1000.0) -> list:
    events = []
    for i in range(0, audio.size, BLOCK):
        events += check.process(audio[i:i + BLOCK], t0_s + i / SAMPLE_RATE_HZ)
    return events


def _check(configured: str, seconds: float = CHECK_SECONDS) -> MachineTypeCheck:
    return MachineTypeCheck(load_model(MACHINE_TYPE_MODEL), configured, "m-1", seconds=seconds, min_confidence=0.6)


def test_pump_audio_configured_as_fan_gives_one_wrong_machine_event() -> None:
    check = _check("fan")
    events = _feed(check, generate("pump", 10.0, SAMPLE_RATE_HZ, seed=5))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, HealthEvent) and event.kind == "wrong_machine" and event.machine == "m-1"
    assert "configured fan" in event.detail and "sounds like pump" in event.detail
    assert event.at_s == pytest.approx(1000.0 + CHECK_SECONDS, abs=0.05)
    result = check.result
    assert result is not None and result.verdict == "mismatch" and result.detected == "pump"
    print(f"\npump configured as fan: pump confidence {result.confidence:.3f} over {result.windows} windows")
    assert result.confidence >= 0.6 and f"{result.confidence:.2f}" in event.detail
    assert check.runner is None  # the interpreter is dropped once the check has decided
    assert _feed(check, generate("pump", 2.0, SAMPLE_RATE_HZ, seed=6)) == []  # never twice


def test_fan_audio_configured_as_fan_gives_no_event() -> None:
    check = _check("fan")
    assert _feed(check, generate("fan", 10.0, SAMPLE_RATE_HZ, seed=5)) == []
    assert check.result is not None and check.result.verdict == "match" and check.result.detected == "fan"
    print(f"\nfan configured as fan: fan confidence {check.result.confidence:.3f}")
    assert sum(check.result.probabilities.values()) == pytest.approx(1.0, abs=0.03)


def test_silence_does_not_count_towards_the_listening_time() -> None:
    check = _check("fan")
    silence = np.zeros(5 * SAMPLE_RATE_HZ, dtype=np.float32)
    events = _feed(check, np.concatenate((silence, generate("pump", 8.0, SAMPLE_RATE_HZ, seed=5))))
    assert [e.kind for e in events] == ["wrong_machine"]
    assert events[0].at_s == pytest.approx(1000.0 + 5.0 + CHECK_SECONDS, abs=0.05)


def test_low_confidence_is_uncertain_not_wrong_machine() -> None:
    check = MachineTypeCheck(load_model(MACHINE_TYPE_MODEL), "fan", "m-1", seconds=CHECK_SECONDS, min_confidence=1.0)
    assert _feed(check, generate("pump", 8.0, SAMPLE_RATE_HZ, seed=5)) == []
    assert check.result is not None and check.result.verdict == "uncertain"


def _config(tmp_path: Path, machine_type: str, model: Path = MACHINE_TYPE_MODEL):
    return load_config(write_classifier_config(tmp_path, "normal-vs-abnormal", tmp_path / "unused.wav",
                                               machine_type=machine_type,
                                               machine={"type_check_model": str(model),
                                                        "type_check_seconds": CHECK_SECONDS}))


def test_unknown_type_skips_the_check_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_monitor.machine_check"):
        assert make_type_check(_config(tmp_path, "unknown"), SAMPLE_RATE_HZ, -70.0) is None
    assert "machine.type is unknown" in caplog.text and "skipped" in caplog.text


def test_type_the_model_does_not_know_skips_the_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="edge_monitor.machine_check"):
        assert make_type_check(_config(tmp_path, "pipe"), SAMPLE_RATE_HZ, -70.0) is None
    assert "not 'pipe'" in caplog.text


def test_check_needs_a_classifier_bundle(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="machine-type classifier is needed"):
        make_type_check(_config(tmp_path, "fan", DEMO_MODEL), SAMPLE_RATE_HZ, -70.0)


def test_off_by_default_and_relative_path_resolved_beside_the_config(tmp_path: Path) -> None:
    base = "machine: {id: m, type: fan%s}\nmodel: {path: x.tflite}\n"
    assert parse_config(base % "", "c.yaml", tmp_path).machine.type_check_model is None
    cfg = parse_config(base % ", type_check_model: ../models/machine-type.tflite", "c.yaml", tmp_path / "config")
    assert cfg.machine.type_check_model == str(tmp_path / "config" / "../models/machine-type.tflite")
    with pytest.raises(ConfigError, match="machine.type_check_min_confidence"):
        parse_config(base % ", type_check_min_confidence: 1.5", "c.yaml", tmp_path)


def test_pipeline_runs_the_check_then_drops_it(tmp_path: Path) -> None:
    wav = write_machine_clip(tmp_path / "pump.wav", "pump", 10.0)
    cfg = load_config(write_classifier_config(tmp_path, "normal-vs-abnormal", wav, machine_type="fan",
                                              machine={"type_check_model": str(MACHINE_TYPE_MODEL),
                                                       "type_check_seconds": CHECK_SECONDS}))
    pipeline = Pipeline.from_config(cfg, load_model(cfg.model.path))
    assert pipeline.type_check is not None
    source = WavFileSource(wav, start_time_s=0.0)
    source.open()
    kinds = []
    while True:
        try:
            kinds += [e.kind for e in pipeline.process(source.read()) if isinstance(e, HealthEvent)]
        except EOFError:
            break
    assert kinds == ["wrong_machine"]
    assert pipeline.type_check is None and pipeline.type_check_result.detected == "pump"
    pipeline.close()


@pytest.mark.timeout(120)
def test_replay_reports_wrong_machine(tmp_path: Path) -> None:
    wav = write_machine_clip(tmp_path / "pump.wav", "pump", 10.0)
    config = write_classifier_config(tmp_path, "normal-vs-abnormal", wav, machine_type="fan",
                                     machine={"type_check_model": str(MACHINE_TYPE_MODEL),
                                              "type_check_seconds": CHECK_SECONDS})
    result = run_cli("replay", "--config", str(config), str(wav), "--start", "0")
    assert result.returncode == 0, result.stderr
    health = events_of(json_lines(result.stdout), "health")
    assert [h["kind"] for h in health] == ["wrong_machine"]
    assert "sounds like pump" in health[0]["detail"]
    assert "wrong machine?" in result.stderr  # the warning in the log


@pytest.mark.timeout(120)
def test_identify_prints_a_verdict_for_the_configured_source(tmp_path: Path) -> None:
    pump = write_machine_clip(tmp_path / "pump.wav", "pump", 10.0, lead_silence_seconds=2.0)
    config = write_classifier_config(tmp_path / "a", "normal-vs-abnormal", pump, machine_type="fan")
    result = run_cli("identify", "--config", str(config), "--seconds", str(CHECK_SECONDS))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    print(f"\n{line}")
    assert line.startswith("sounds like: pump (") and "configured: fan" in line
    assert "check the microphone placement" in line

    fan = write_machine_clip(tmp_path / "fan.wav", "fan", 10.0)
    config = write_classifier_config(tmp_path / "b", "normal-vs-abnormal", fan, machine_type="unknown")
    result = run_cli("identify", "--config", str(config), "--seconds", str(CHECK_SECONDS), "--json",
                     "--model", str(MACHINE_TYPE_MODEL))
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["detected"] == "fan" and verdict["verdict"] == "unchecked"
    assert verdict["seconds"] >= CHECK_SECONDS


@pytest.mark.timeout(60)
def test_identify_on_silence_fails_clearly(tmp_path: Path) -> None:
    from edge_monitor.wavio import write_wav
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, np.zeros(3 * SAMPLE_RATE_HZ, dtype=np.float32), SAMPLE_RATE_HZ)
    config = write_classifier_config(tmp_path, "normal-vs-abnormal", quiet, machine_type="fan")
    result = run_cli("identify", "--config", str(config), "--seconds", "5")
    assert result.returncode == 1
    assert "is the machine running" in result.stderr


@pytest.mark.timeout(150)
def test_daemon_publishes_wrong_machine_in_telemetry(tmp_path: Path, mosquitto: Mosquitto) -> None:
    wav = write_machine_clip(tmp_path / "pump.wav", "pump", 10.0)
    config = write_classifier_config(tmp_path, "normal-vs-abnormal", wav, machine_type="fan", machine_id="mc",
                                     machine={"type_check_model": str(MACHINE_TYPE_MODEL), "type_check_seconds": 4.0},
                                     source={"realtime": True}, detection={"threshold": 0.99, "trigger_k": 5},
                                     mqtt={"host": mosquitto.host, "port": mosquitto.port})
    collector = Collector(mosquitto, ["test/mc/telemetry"])
    daemon = DaemonProcess(config, tmp_path / "daemon.log", extra_args=("--print-events",))

    def with_check() -> list[dict]:
        return [t for t in (json.loads(m.payload) for m in collector.on("test/mc/telemetry")) if "type_check" in t]

    try:
        wait_until(with_check, 60, what="telemetry carrying the type check")
        assert daemon.wait(60) == 0, daemon.log_text()
        every = [json.loads(m.payload) for m in collector.on("test/mc/telemetry")]
    finally:
        daemon.stop()
        collector.close()
    telemetry = with_check()[-1]
    assert telemetry["type_check"]["verdict"] == "mismatch" and telemetry["type_check"]["detected"] == "pump"
    # the counts are totals since start; under load the verdict can reach telemetry a period before its count
    assert max(t.get("health", {}).get("counts", {}).get("wrong_machine", 0) for t in every) == 1
    printed = [h for h in events_of(json_lines(daemon.log_text()), "health") if h["kind"] == "wrong_machine"]
    assert len(printed) == 1 and "configured fan" in printed[0]["detail"]
