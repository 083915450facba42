"""End to end: firmware in simavr → pty → SerialSource → features → model → detector → alarm pin.

The simulated microphone hears 2 s of silence, then a SYNTHETIC fan. The tiny
test model is untrained, so the threshold is set near zero: every scored
window is anomalous, and silent windows are health events, not scores. So the
alarm must stay off through the silence and come on once the fan sound has
reached the model; the harness records, in simulated ADC samples, when the
alarm pin rose, which must be after the fan's onset.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import StateEvent
from edge_monitor.model import load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.sources.serial import SerialSource
from edge_monitor.training.synthetic import generate
from tests.helpers.simavr import ALARM_LED_PIN, ALARM_RELAY_PIN, firmware_build, simulated_arduino
from tests.helpers.tiny_models import tiny_autoencoder

__all__ = ["firmware_build", "tiny_autoencoder"]  # session fixtures

SR = 16000
SILENCE_S = 2.0
TIMEOUT_S = 120.0


@pytest.mark.timeout(300)
def test_fan_sound_after_silence_switches_the_alarm_on(firmware_build, tiny_autoencoder: Path):
    fan = generate("fan", 8.0, SR, seed=5)
    pcm = np.concatenate([np.zeros(int(SILENCE_S * SR)), fan])
    pcm = np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)
    onset_index = int(SILENCE_S * SR)
    runner = load_model(tiny_autoencoder)
    counter = itertools.count()
    settings = DetectorSettings(threshold=1e-9, clear_threshold=1e-9, trigger_k=2, trigger_n=3, clear_windows=2,
                                cooldown_seconds=0.0, silence_dbfs=-60.0)
    pipeline = Pipeline(runner, Detector(settings, "fan-1", runner.bundle.ident,
                                         id_factory=lambda: f"id-{next(counter)}"))
    states = []
    with simulated_arduino(pcm, loop=False) as board:
        source = SerialSource(board.pty_path, buffer_seconds=60)
        source.open()
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while board.pin_level(ALARM_LED_PIN) != 1:
                assert time.monotonic() < deadline, f"no alarm; states {states}"
                block = source.read(0.2)
                if block is None:
                    continue
                for event in pipeline.process(block):
                    if isinstance(event, StateEvent):
                        states.append(event.state)
                        if event.state in ("anomaly", "normal"):
                            source.set_alarm(event.state == "anomaly")  # what the daemon does
            board.wait_for_pin(ALARM_RELAY_PIN, 1)
            rises = [c for c in board.pin_history(ALARM_LED_PIN) if c.value == 1]
        finally:
            source.close()
            pipeline.close()
    assert "anomaly" in states
    assert rises and rises[0].adc_index > onset_index, "the alarm came on before the sound started"
    print(f"alarm on {(rises[0].adc_index - onset_index) / SR:.2f} s (simulated) after the sound started")
