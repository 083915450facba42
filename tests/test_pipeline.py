"""The whole pipeline over real WAV files: chunk-invariant, timed by the blocks, and the CLI output contracts."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import AlertEvent, Event, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.features import FeatureError
from edge_monitor.model import ModelRunner, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.scoring import score_file, window_scores
from edge_monitor.sources.base import Block
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.training.synthetic import generate_sequence
from edge_monitor.wavio import read_wav, write_wav
from tests.helpers.tiny_models import tiny_autoencoder  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]
T0_S = 1_700_000_000.0
SR = 16000


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC fan: 6 s normal, 4 s with a severe bearing fault, 4 s normal, 2 s of silence."""
    audio = generate_sequence("fan", [("normal", 6.0), ("bearing", 4.0, 1.0), ("normal", 4.0)], SR, seed=21)
    audio = np.concatenate((audio, np.zeros(2 * SR, np.float32)))
    path = tmp_path_factory.mktemp("wav") / "fan-sequence.wav"
    write_wav(path, audio, SR)
    return path


@pytest.fixture(scope="module")
def runner(tiny_autoencoder: Path) -> ModelRunner:  # noqa: F811
    return load_model(tiny_autoencoder)


@pytest.fixture(scope="module")
def threshold(runner: ModelRunner, recording: Path) -> float:
    """The median score of the sounding part, so the run has alerts (the tiny model is untrained)."""
    audio, _ = read_wav(recording)
    return float(np.median(window_scores(runner, audio[:14 * SR, 0], 16)))


def _pipeline(runner: ModelRunner, threshold: float, **kw: object) -> Pipeline:
    counter = itertools.count()
    settings = DetectorSettings(threshold=threshold, clear_threshold=threshold, trigger_k=2, trigger_n=3,
                                clear_windows=2, cooldown_seconds=0.5)
    det = Detector(settings, "fan-1", runner.bundle.ident, id_factory=lambda: f"id-{next(counter)}")
    return Pipeline(runner, det, **kw)  # type: ignore[arg-type]


def _run(pipe: Pipeline, audio: np.ndarray, sizes: Callable[[int], int], t0_s: float = T0_S) -> list[Event]:
    """Feed ``audio`` (frames, channels) in blocks whose sizes come from ``sizes(i)``."""
    events: list[Event] = []
    pos, i = 0, 0
    while pos < audio.shape[0]:
        n = sizes(i)
        events += pipe.process(Block(audio[pos:pos + n], t0_s + pos / SR, SR))
        pos += n
        i += 1
    return events


def _comparable(events: Sequence[Event]) -> list[Event]:
    """Events without the wall-clock latency, which differs from run to run."""
    return [dataclasses.replace(e, latency_ms=0.0) if isinstance(e, ScoreEvent) else e for e in events]


# ---------------------------------------------------------------- chunk invariance

def _reference(runner: ModelRunner, threshold: float, audio: np.ndarray) -> list[Event]:
    return _comparable(_run(_pipeline(runner, threshold), audio, lambda i: 512))


def test_block_size_does_not_change_scores_or_events(runner: ModelRunner, threshold: float,
                                                     recording: Path) -> None:
    audio, _ = read_wav(recording)
    reference = _reference(runner, threshold, audio)
    alerts = [e for e in reference if isinstance(e, AlertEvent)]
    assert alerts and {a.type for a in alerts} == {"start", "end"}, "the fixture should produce alerts"
    assert any(isinstance(e, HealthEvent) and e.kind == "silence" for e in reference)
    rng = np.random.default_rng(0)
    random_sizes = rng.integers(1, 9000, size=100_000)
    for sizes in (lambda i: 333, lambda i: 1, lambda i: 7919, lambda i: int(random_sizes[i]),
                  lambda i: 1 if i % 50 else 4000):
        assert _comparable(_run(_pipeline(runner, threshold), audio, sizes)) == reference


def test_one_block_equals_small_blocks(runner: ModelRunner, threshold: float, recording: Path) -> None:
    audio, _ = read_wav(recording)
    reference = _reference(runner, threshold, audio)
    assert _comparable(_run(_pipeline(runner, threshold), audio, lambda i: audio.shape[0])) == reference


def test_pipeline_scores_equal_batch_scoring(runner: ModelRunner, recording: Path) -> None:
    audio, _ = read_wav(recording)
    pipe = _pipeline(runner, threshold=1e9, window_hop_seconds=0.5)
    scores = [e.score for e in _run(pipe, audio, lambda i: 1000) if isinstance(e, ScoreEvent)]
    batch = score_file(runner, recording, window_hop_seconds=0.5).windows
    silent_tail = 2 * SR // (pipe.hop_frames * pipe.spec.hop_length)  # the silent windows are not scored
    assert len(scores) >= len(batch) - silent_tail - 1
    assert np.allclose(scores, batch[:len(scores)], rtol=0, atol=0)


# ---------------------------------------------------------------- timing

def test_window_times_come_from_block_timestamps(runner: ModelRunner, recording: Path) -> None:
    audio, _ = read_wav(recording)
    audio = audio[:5 * SR]
    spec = runner.bundle.spec
    pipe = _pipeline(runner, threshold=1e9)
    times = [e.at_s for e in _run(pipe, audio, lambda i: 700) if isinstance(e, ScoreEvent)]
    first_end_s = ((spec.frames_per_window - 1) * spec.hop_length + spec.n_fft) / SR  # 0.544 s
    step_s = pipe.hop_frames * spec.hop_length / SR                                # 0.512 s
    expected = T0_S + first_end_s + step_s * np.arange(len(times))
    assert len(times) == 1 + int((5.0 - first_end_s) // step_s)
    assert np.allclose(times, expected, atol=1e-6, rtol=0)
    shifted = [e.at_s for e in _run(_pipeline(runner, 1e9), audio, lambda i: 700, t0_s=T0_S + 3600.0)
               if isinstance(e, ScoreEvent)]
    assert np.allclose(np.array(shifted) - 3600.0, times, atol=1e-6, rtol=0)


def test_alert_times_are_window_times(runner: ModelRunner, threshold: float, recording: Path) -> None:
    audio, _ = read_wav(recording)
    events = _run(_pipeline(runner, threshold), audio, lambda i: 512)
    score_times = {round(e.at_s, 6) for e in events if isinstance(e, ScoreEvent)}
    for a in (e for e in events if isinstance(e, AlertEvent)):
        assert round(a.started_at_s, 6) in score_times
        if a.ended_at_s is not None:
            assert a.ended_at_s > a.started_at_s
            assert T0_S < a.ended_at_s <= T0_S + audio.shape[0] / SR


def test_wav_file_source_blocks_carry_the_start_time(runner: ModelRunner, threshold: float,
                                                     recording: Path) -> None:
    src = WavFileSource(recording, block_seconds=0.05, start_time_s=T0_S)
    src.open()
    pipe = _pipeline(runner, threshold)
    events: list[Event] = []
    while True:
        try:
            block = src.read()
        except EOFError:
            break
        assert block is not None
        events += pipe.process(block)
    audio, _ = read_wav(recording)
    assert _comparable(events) == _comparable(_run(_pipeline(runner, threshold), audio, lambda i: 800))


# ---------------------------------------------------------------- silence and channels

def test_silence_gives_a_health_event_and_no_alert(runner: ModelRunner) -> None:
    pipe = _pipeline(runner, threshold=1e-9)  # any scored window would be hot
    events = _run(pipe, np.zeros((10 * SR, 1), np.float32), lambda i: 512)
    assert [e.kind for e in events if isinstance(e, HealthEvent)] == ["silence"]
    assert not any(isinstance(e, (AlertEvent, ScoreEvent, StateEvent)) for e in events)
    assert pipe.windows_scored == 0 and pipe.last_rms_dbfs == -160.0


def test_clipping_gives_a_health_event(runner: ModelRunner) -> None:
    square = np.sign(np.sin(np.arange(4 * SR) * 0.05)).astype(np.float32)[:, None]
    events = _run(_pipeline(runner, threshold=1e9), square, lambda i: 512)
    assert [e.kind for e in events if isinstance(e, HealthEvent)] == ["clipping"]


def test_channel_selection_and_mean(runner: ModelRunner, recording: Path) -> None:
    mono, _ = read_wav(recording)
    mono = mono[:4 * SR, 0]
    noise = (0.05 * np.random.default_rng(1).standard_normal(mono.size)).astype(np.float32)
    stereo = np.stack([noise, mono], axis=1)

    def scores(pipe: Pipeline, audio: np.ndarray) -> list[float]:
        return [e.score for e in _run(pipe, audio, lambda i: 1024) if isinstance(e, ScoreEvent)]

    reference = scores(_pipeline(runner, 1e9), mono[:, None])
    assert scores(_pipeline(runner, 1e9, channels=(1,)), stereo) == reference
    assert scores(_pipeline(runner, 1e9, channels=(0,)), stereo) != reference
    mean = stereo.mean(axis=1, dtype=np.float32)[:, None]
    assert scores(_pipeline(runner, 1e9, channels=(0, 1)), stereo) == scores(_pipeline(runner, 1e9), mean)
    assert scores(_pipeline(runner, 1e9, channels=(1, 0), mix="first"), stereo) == reference


def test_wrong_block_rate_is_refused(runner: ModelRunner) -> None:
    pipe = _pipeline(runner, 1.0)
    with pytest.raises(FeatureError, match="the source delivers 8000 Hz but the model expects 16000 Hz"):
        pipe.process(Block(np.zeros((800, 1), np.float32), T0_S, 8000))


# ---------------------------------------------------------------- CLI contracts

def _replay_config(tmp_path: Path, model: Path, threshold: float) -> Path:
    cfg = tmp_path / "fan.yaml"
    cfg.write_text(f"""\
machine:
  id: fan-1
model:
  path: {model}
source:
  type: file
  path: unused.wav
detection:
  threshold: {threshold!r}
  clear_threshold: {threshold!r}
  trigger_k: 2
  trigger_n: 3
  clear_windows: 2
  cooldown_seconds: 0.5
state_dir: {tmp_path / 'state'}
""")
    return cfg


@pytest.mark.timeout(120)
def test_replay_prints_the_pipeline_events_as_json_lines(tiny_autoencoder: Path, runner: ModelRunner,  # noqa: F811
                                                         threshold: float, recording: Path, tmp_path: Path) -> None:
    cfg = _replay_config(tmp_path, tiny_autoencoder, threshold)
    result = _cli("replay", "--config", str(cfg), "--scores", "--start", str(T0_S), str(recording))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(set(obj) >= {"event", "machine"} for obj in lines)
    assert {obj["event"] for obj in lines} == {"alert", "state", "health", "score"}
    alerts = [obj for obj in lines if obj["event"] == "alert"]
    for obj in alerts:
        required = {"event", "id", "type", "machine", "score", "threshold", "started_at", "model", "episode",
                    "recording_s"}  # a file source: where in the recording the alert falls
        assert set(obj) == required | ({"ended_at", "reason"} if obj["type"] == "end" else set())
        at = obj["ended_at"] if obj["type"] == "end" else obj["started_at"]
        at_s = _dt.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        assert obj["recording_s"] == pytest.approx(at_s - T0_S, abs=0.001)
        assert obj["started_at"].endswith("Z") and obj["model"] == runner.bundle.ident
    # the same events as the pipeline run in-process with the config's settings and the same block size
    audio, _ = read_wav(recording)
    events = _run(_pipeline(runner, threshold), audio, lambda i: 512)
    expected_scores = [round(e.score, 6) for e in events if isinstance(e, ScoreEvent)]
    assert [obj["score"] for obj in lines if obj["event"] == "score"] == expected_scores
    assert [round(obj["t"], 3) for obj in lines if obj["event"] == "score"] == \
        [round(e.at_s, 3) for e in events if isinstance(e, ScoreEvent)]
    expected_alerts = [(e.type, e.to_payload()["started_at"]) for e in events if isinstance(e, AlertEvent)]
    assert [(a["type"], a["started_at"]) for a in alerts] == expected_alerts
    assert [(o["kind"], o["at"]) for o in lines if o["event"] == "health"] == \
        [(e.kind, e.to_payload()["at"]) for e in events if isinstance(e, HealthEvent)]


@pytest.mark.timeout(120)
def test_score_json_output_contract(tiny_autoencoder: Path, runner: ModelRunner, recording: Path,  # noqa: F811
                                    tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    audio, _ = read_wav(recording)
    write_wav(short, audio[:3 * SR], SR)
    result = _cli("score", "--json", "--model", str(tiny_autoencoder), str(recording), str(short))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, path, seconds in zip(lines, (recording, short), (16.0, 3.0)):
        obj = json.loads(line)
        assert list(obj) == ["file", "score", "threshold", "anomalous", "windows"]
        assert obj["file"] == str(path)
        assert isinstance(obj["score"], float) and isinstance(obj["anomalous"], bool)
        assert obj["threshold"] == runner.bundle.threshold
        assert obj["score"] == pytest.approx(float(np.mean(obj["windows"])), rel=1e-12)
        assert obj["anomalous"] == (obj["score"] > obj["threshold"])
        frames = 1 + (int(seconds * SR) - 1024) // 512
        assert len(obj["windows"]) == 1 + (frames - 16) // 16
        expected = score_file(runner, path)
        assert obj["windows"] == pytest.approx(list(expected.windows), rel=1e-9)


@pytest.mark.timeout(120)
def test_score_text_output_and_threshold_override(tiny_autoencoder: Path, recording: Path) -> None:  # noqa: F811
    result = _cli("score", "--model", str(tiny_autoencoder), "--threshold", "0", str(recording))
    assert result.returncode == 0, result.stderr
    assert "ANOMALOUS" in result.stdout and str(recording) in result.stdout
