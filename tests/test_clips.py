"""Evidence clips: real WAV files written, read back and compared sample by sample."""

from __future__ import annotations

import logging
import os
import subprocess
import tracemalloc
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from edge_monitor.config import ClipsConfig
from edge_monitor.events import AlertEvent
from edge_monitor.sinks.clips import MAX_PENDING_CLIPS, ClipRecorder

RATE_HZ = 8000
BLOCK = 256
T0_S = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Stream:
    """Feeds a recorder int16-exact random audio in blocks and remembers all of it."""

    def __init__(self, recorder: ClipRecorder, seed: int = 0) -> None:
        self.recorder = recorder
        self.rng = np.random.default_rng(seed)
        self.audio = np.zeros(0, dtype=np.float32)

    def push(self, n_samples: int, block: int = BLOCK) -> None:
        """Push ``n_samples`` more samples, ``block`` at a time."""
        pcm = self.rng.integers(-32768, 32768, size=n_samples, dtype=np.int64)
        fresh = (pcm / 32768.0).astype(np.float32)
        for offset in range(0, n_samples, block):
            chunk = fresh[offset:offset + block]
            index = self.audio.shape[0] + offset
            self.recorder.push(chunk, T0_S + index / RATE_HZ)
        self.audio = np.concatenate([self.audio, fresh])

    def time_of(self, index: int) -> float:
        """UNIX time of sample ``index``."""
        return T0_S + index / RATE_HZ

    @property
    def end(self) -> int:
        """Samples pushed so far."""
        return self.audio.shape[0]


def alert_at(t_s: float, alert_id: Optional[str] = None) -> AlertEvent:
    """A start alert whose first anomalous window is at ``t_s``."""
    return AlertEvent(id=alert_id or str(uuid.uuid4()), type="start", machine="fan-1", score=2.0,
                      threshold=1.0, started_at_s=t_s)


def read_wav(path: str) -> np.ndarray:
    """Samples of a 16-bit mono WAV as float32 in [-1, 1), checking the format."""
    with wave.open(path, "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == RATE_HZ
        data = wav.readframes(wav.getnframes())
    return (np.frombuffer(data, dtype="<i2") / 32768.0).astype(np.float32)


def make(tmp_path: Path, **cfg: object) -> ClipRecorder:
    """A recorder with 0.5 s before and 0.25 s after, writing into tmp_path/clips."""
    settings = {"pre_seconds": 0.5, "post_seconds": 0.25, **cfg}
    return ClipRecorder(ClipsConfig(**settings), tmp_path / "clips", "fan-1", RATE_HZ,
                        trigger_lookback_seconds=2.0)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for the test (needs root); skips where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_clip_holds_pre_and_post_audio_around_the_alert_start(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(3 * RATE_HZ)
    onset = 2 * RATE_HZ + 123  # the detector reports the onset ~1 s after it happened
    path = recorder.start_clip(alert_at(stream.time_of(onset)))
    assert path is not None
    assert os.path.exists(path)  # the 0.25 s after the onset is already in the ring: written at once
    stream.push(RATE_HZ)
    clip = read_wav(path)
    expected = stream.audio[onset - RATE_HZ // 2:onset + RATE_HZ // 4]
    assert clip.shape == expected.shape
    np.testing.assert_array_equal(clip, expected)
    assert recorder.stats()["clips_written"] == 1


def test_clip_is_written_when_post_seconds_have_arrived(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    trigger = stream.end
    path = recorder.start_clip(alert_at(stream.time_of(trigger) + 100.0))  # unknown future time: clamp to now
    assert path is not None
    assert Path(path).parent == tmp_path / "clips"
    assert Path(path).name.startswith("fan-1-20231114T")
    stream.push(RATE_HZ // 4 - 1, block=100)
    assert not os.path.exists(path)
    assert recorder.stats()["clips_pending"] == 1
    stream.push(1)
    assert os.path.exists(path)
    np.testing.assert_array_equal(read_wav(path), stream.audio[trigger - RATE_HZ // 2:trigger + RATE_HZ // 4])
    assert recorder.stats()["clips_pending"] == 0
    assert not [p for p in (tmp_path / "clips").iterdir() if p.name.endswith(".tmp")]


def test_close_writes_what_exists(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(RATE_HZ // 5)  # less than pre_seconds of audio so far
    trigger = stream.end
    path = recorder.start_clip(alert_at(stream.time_of(trigger)))
    assert path is not None
    stream.push(RATE_HZ // 10)
    recorder.close()
    np.testing.assert_array_equal(read_wav(path), stream.audio[:trigger + RATE_HZ // 10])
    recorder.close()  # twice is fine
    assert recorder.start_clip(alert_at(stream.time_of(trigger))) is None
    assert recorder.stats()["clips_written"] == 1


def test_overlapping_alerts_get_their_own_correct_clips(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder, seed=7)
    stream.push(RATE_HZ)
    first_trigger = stream.end
    first = recorder.start_clip(alert_at(stream.time_of(first_trigger)))
    stream.push(RATE_HZ // 10, block=77)
    second_trigger = stream.end
    second = recorder.start_clip(alert_at(stream.time_of(second_trigger)))
    assert first and second and first != second
    assert recorder.stats()["clips_pending"] == 2
    stream.push(RATE_HZ, block=333)
    np.testing.assert_array_equal(read_wav(first), stream.audio[first_trigger - 4000:first_trigger + 2000])
    np.testing.assert_array_equal(read_wav(second), stream.audio[second_trigger - 4000:second_trigger + 2000])
    assert recorder.stats()["clips_written"] == 2


def test_same_alert_twice_gives_one_clip(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    alert = alert_at(stream.time_of(stream.end))
    assert recorder.start_clip(alert) == recorder.start_clip(alert)
    stream.push(RATE_HZ)
    assert recorder.stats()["clips_written"] == 1
    assert len(list((tmp_path / "clips").glob("*.wav"))) == 1


def test_too_many_pending_clips_are_skipped_not_queued(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    paths = []
    for _ in range(MAX_PENDING_CLIPS + 1):
        paths.append(recorder.start_clip(alert_at(stream.time_of(stream.end))))
        stream.push(10)
    assert all(paths[:MAX_PENDING_CLIPS]) and paths[-1] is None
    assert recorder.stats()["clips_skipped"] == 1
    stream.push(RATE_HZ)
    assert recorder.stats()["clips_written"] == MAX_PENDING_CLIPS


def test_alert_start_older_than_the_ring_starts_at_the_oldest_audio(tmp_path: Path) -> None:
    recorder = make(tmp_path)  # ring = 0.5 s pre + 2 s lookback
    stream = Stream(recorder)
    stream.push(5 * RATE_HZ)
    path = recorder.start_clip(alert_at(stream.time_of(0)))
    oldest = stream.end - int(2.5 * RATE_HZ)
    stream.push(RATE_HZ)
    np.testing.assert_array_equal(read_wav(path), stream.audio[oldest:oldest + RATE_HZ // 4])


def test_retention_by_count_keeps_the_newest(tmp_path: Path) -> None:
    recorder = make(tmp_path, max_count=3)
    stream = Stream(recorder)
    other = tmp_path / "clips"
    other.mkdir()
    (other / "pump-20200101T000000Z-abcdef01.wav").write_bytes(b"not ours")
    (other / "notes.txt").write_text("keep me")
    written = []
    for _ in range(5):
        stream.push(RATE_HZ // 2)
        written.append(recorder.start_clip(alert_at(stream.time_of(stream.end))))
        stream.push(RATE_HZ // 2)
    remaining = sorted(str(p) for p in other.glob("fan-1-*.wav"))
    assert remaining == sorted(written[-3:])
    assert (other / "pump-20200101T000000Z-abcdef01.wav").exists()
    assert (other / "notes.txt").exists()
    assert recorder.stats()["clips_deleted"] == 2


def test_retention_by_total_size(tmp_path: Path) -> None:
    # 16 s clips at 8 kHz, 16-bit: 256 044 bytes each, so 1 MB holds three.
    recorder = ClipRecorder(ClipsConfig(pre_seconds=8.0, post_seconds=8.0, max_total_mb=1.0),
                            tmp_path / "clips", "fan-1", RATE_HZ)
    stream = Stream(recorder)
    written = []
    for _ in range(5):
        stream.push(8 * RATE_HZ, block=4096)
        written.append(recorder.start_clip(alert_at(stream.time_of(stream.end))))
        stream.push(8 * RATE_HZ, block=4096)
    sizes = [os.path.getsize(p) for p in written[-3:]]
    assert sizes == [256_044] * 3
    assert sorted(str(p) for p in (tmp_path / "clips").glob("*.wav")) == sorted(written[-3:])
    assert recorder.stats()["clips_deleted"] == 2


def test_disabled_recorder_saves_nothing(tmp_path: Path) -> None:
    recorder = make(tmp_path, enabled=False)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    assert recorder.start_clip(alert_at(stream.time_of(stream.end))) is None
    assert not (tmp_path / "clips").exists()


def test_unusable_folder_returns_none_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "regular-file"
    not_a_dir.write_text("x")
    recorder = ClipRecorder(ClipsConfig(pre_seconds=0.5, post_seconds=0.25), not_a_dir / "clips", "fan-1", RATE_HZ)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    with caplog.at_level(logging.WARNING, logger="edge_monitor.sinks.clips"):
        for _ in range(3):
            assert recorder.start_clip(alert_at(stream.time_of(stream.end))) is None
            stream.push(RATE_HZ)
    assert recorder.stats()["clips_failed"] == 3
    assert recorder.stats()["clips_written"] == 0
    assert len([r for r in caplog.records if "cannot create clips folder" in r.getMessage()]) == 1


def test_read_only_file_system(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips_dir = tmpfs / "clips"
    clips_dir.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    recorder = ClipRecorder(ClipsConfig(pre_seconds=0.1, post_seconds=0.1), clips_dir, "fan-1", RATE_HZ)
    stream = Stream(recorder)
    stream.push(RATE_HZ // 2)
    with caplog.at_level(logging.WARNING, logger="edge_monitor.sinks.clips"):
        assert recorder.start_clip(alert_at(stream.time_of(stream.end))) is None
        assert recorder.start_clip(alert_at(stream.time_of(stream.end))) is None
    assert recorder.stats()["clips_failed"] == 2
    assert len([r for r in caplog.records if "not writable" in r.getMessage()]) == 1


def test_disk_full_before_and_during_the_write(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    clips_dir = tmpfs / "clips"
    # 1 s clips (16 044 bytes) fit in 64 KiB; a 6 s clip (96 044 bytes) does not.
    big = ClipRecorder(ClipsConfig(pre_seconds=3.0, post_seconds=3.0), clips_dir, "big", RATE_HZ)
    Stream(big).push(RATE_HZ)
    with caplog.at_level(logging.INFO, logger="edge_monitor.sinks.clips"):
        assert big.start_clip(alert_at(T0_S)) is None
        assert big.stats()["clips_failed"] == 1

        recorder = ClipRecorder(ClipsConfig(pre_seconds=0.5, post_seconds=0.5), clips_dir, "fan-1", RATE_HZ)
        stream = Stream(recorder)
        stream.push(RATE_HZ)
        doomed = recorder.start_clip(alert_at(stream.time_of(stream.end)))
        assert doomed is not None
        filler = tmpfs / "filler"
        with open(filler, "wb", buffering=0) as out:  # fill the disk while the clip waits for its post audio
            with pytest.raises(OSError):
                while True:
                    out.write(b"\0" * 4096)
        stream.push(RATE_HZ)  # the write fails: counted and logged, not raised
        assert recorder.stats()["clips_failed"] == 1
        assert not os.path.exists(doomed)
        assert not [p for p in clips_dir.iterdir() if p.name.endswith(".tmp")]

        recorder.start_clip(alert_at(stream.time_of(stream.end)))
        stream.push(RATE_HZ)
        assert recorder.stats()["clips_failed"] == 2

        filler.unlink()
        good = recorder.start_clip(alert_at(stream.time_of(stream.end)))
        trigger = stream.end
        stream.push(RATE_HZ)
    np.testing.assert_array_equal(read_wav(good), stream.audio[trigger - RATE_HZ // 2:trigger + RATE_HZ // 2])
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len([m for m in messages if m.startswith("cannot write clip")]) == 1
    assert any("written to" in m and "again" in m for m in messages)


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    stale = clips_dir / ".fan-1-20231114T221320Z-deadbeef.wav.tmp"
    stale.write_bytes(b"half a clip")
    foreign = clips_dir / ".pump-20231114T221320Z-deadbeef.wav.tmp"
    foreign.write_bytes(b"another machine's")
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(RATE_HZ)
    assert recorder.start_clip(alert_at(stream.time_of(stream.end))) is not None
    assert not stale.exists()
    assert foreign.exists()


def test_pushing_does_not_grow_memory(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    block = np.linspace(-0.5, 0.5, 512, dtype=np.float32)
    for i in range(200):
        recorder.push(block, T0_S + i * 512 / RATE_HZ)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(200, 5200):
            recorder.push(block, T0_S + i * 512 / RATE_HZ)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16_384


def test_blocks_longer_than_the_ring(tmp_path: Path) -> None:
    recorder = make(tmp_path)
    stream = Stream(recorder)
    stream.push(10 * RATE_HZ, block=5 * RATE_HZ)  # each block is twice the 2.5 s ring
    trigger = stream.end
    path = recorder.start_clip(alert_at(stream.time_of(trigger)))
    stream.push(RATE_HZ, block=RATE_HZ)
    np.testing.assert_array_equal(read_wav(path), stream.audio[trigger - RATE_HZ // 2:trigger + RATE_HZ // 4])
