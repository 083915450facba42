"""SourcePump: the one loop that reads a source, over a real WAV file source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_monitor.sources.base import SourceError
from edge_monitor.sources.pump import SourcePump
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.wavio import write_wav

RATE_HZ = 16000


@pytest.fixture
def wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    samples = (np.sin(np.arange(RATE_HZ) * 0.01) * 0.5).astype(np.float32)
    path = tmp_path / "tone.wav"
    write_wav(path, samples, RATE_HZ)
    return path, samples


def test_every_block_of_a_file_then_its_end(wav: tuple[Path, np.ndarray]) -> None:
    path, samples = wav
    source = WavFileSource(path, block_seconds=0.032)
    source.open()
    reads: list[int] = []
    pump = SourcePump(source, on_read=lambda: reads.append(1))
    got = np.concatenate([b.samples[:, 0] for b in pump])
    assert pump.at_end and pump.blocks == len(reads) == -(-samples.size // 512)
    np.testing.assert_allclose(got, samples, atol=1 / 32768)


def test_keep_going_stops_before_the_end_and_a_looping_file_never_ends(wav: tuple[Path, np.ndarray]) -> None:
    path, samples = wav
    source = WavFileSource(path, block_seconds=0.032, loop=True)
    source.open()
    seen: list[int] = []
    pump = SourcePump(source, keep_going=lambda: len(seen) < 100)
    for block in pump:
        seen.append(block.samples.shape[0])
    assert len(seen) == 100 and not pump.at_end and sum(seen) > samples.size  # it went round the loop


def test_a_source_error_reaches_the_caller(wav: tuple[Path, np.ndarray]) -> None:
    source = WavFileSource(wav[0])  # never opened: read() fails like a lost device
    with pytest.raises(SourceError, match="before open"):
        list(SourcePump(source))
