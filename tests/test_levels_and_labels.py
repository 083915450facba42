"""The Pipeline's two helpers on their own: the level under each window, and a classifier alert's label."""

import numpy as np
import pytest

from edge_monitor.alert_labels import AlertLabeler
from edge_monitor.events import AlertEvent
from edge_monitor.features import FeatureSpec
from edge_monitor.levels import SILENT_DBFS, LevelMeter, rms_dbfs

SPEC = FeatureSpec(n_mels=64, frames_per_window=32)


def test_rms_dbfs():
    assert rms_dbfs(1.0) == 0.0 and rms_dbfs(0.5) == pytest.approx(-3.0103, abs=1e-4)
    assert rms_dbfs(0.0) == SILENT_DBFS


def test_level_meter_reads_a_sine_a_clipped_square_and_silence_in_any_block_size():
    t = np.arange(SPEC.sample_rate * 4) / SPEC.sample_rate
    sine = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)          # -9.03 dBFS
    square = np.sign(np.sin(2 * np.pi * 50 * t)).astype(np.float32)         # every sample at full scale
    for audio, want_db, want_clip in ((sine, -9.03, 0.0), (square, 0.0, 1.0), (np.zeros_like(sine), SILENT_DBFS, 0.0)):
        for block in (160, 512, 4000):
            meter = LevelMeter(SPEC, hop_frames=16)
            for i in range(0, audio.size, block):
                meter.add(audio[i:i + block])
            db, clip = meter.window(end_frame=audio.size // SPEC.hop_length - SPEC.n_fft // SPEC.hop_length)
            assert db == pytest.approx(want_db, abs=0.05) and clip == pytest.approx(want_clip)


def test_level_meter_keeps_only_what_windows_still_need():
    meter = LevelMeter(SPEC, hop_frames=16)
    for _ in range(200):
        meter.add(np.full(SPEC.sample_rate // 10, 0.1, dtype=np.float32))
        meter.trim()
    assert meter._sumsq.size <= SPEC.frames_per_window + 2 + 16 + 4
    assert meter.window(end_frame=0) == (SILENT_DBFS, 0.0)      # long gone: reads as no audio, not garbage


def _alert(kind, episode="e1"):
    return AlertEvent(id=f"{kind}-1", type=kind, machine="m", score=0.9, threshold=0.5, started_at_s=1.0,
                      ended_at_s=2.0 if kind == "end" else None, episode=episode)


def test_alert_labeler_names_the_start_by_its_trigger_windows_and_the_end_by_the_episode():
    lab = AlertLabeler(["normal", "bearing", "leak"], ["bearing", "leak"])
    p = lambda n, b, k: np.array([n, b, k])  # noqa: E731
    assert lab.label([], p(0.9, 0.05, 0.05), trigger_n=3) == []
    lab.label([], p(0.1, 0.8, 0.1), trigger_n=3)
    start = lab.label([_alert("start")], p(0.1, 0.7, 0.2), trigger_n=3)
    assert start[0].label == "bearing"
    for _ in range(6):                                         # the episode turns into a leak
        lab.label([], p(0.1, 0.1, 0.8), trigger_n=3)
    end = lab.label([_alert("end")], p(0.1, 0.1, 0.8), trigger_n=3)
    assert end[0].label == "leak"
    again = lab.label([_alert("end", "e2")], None, trigger_n=3)   # an end with no open episode: unlabelled
    assert again[0].label is None
