"""Hostile audio and arguments: every verb answers a bad input with one sentence and exit 2, never a traceback,
a hang or a wrong answer.

Real WAV files (written by hand, header field by header field), the bundled demo
model, and the real CLI in a subprocess.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.config import load_config
from edge_monitor.daemon import Daemon
from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import AlertEvent, HealthEvent, ScoreEvent
from edge_monitor.sources.base import Block, SourceError
from edge_monitor.sources.wavfile import WavFileSource
from edge_monitor.wavio import WavError, read_wav, write_wav
from tests.helpers.daemon import DEMO_MODEL, DEMO_WAV, REPO_ROOT, write_config

RUNTIME_NOISE = "INFO: Created TensorFlow Lite XNNPACK delegate"


def raw_wav(path: Path, *, tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16,
            block_align: int | None = None, data: bytes = b"\x00\x01" * 8000) -> Path:
    """A WAV whose header fields are exactly the given ones (no consistency enforced)."""
    align = channels * bits // 8 if block_align is None else block_align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
                     + fmt + b"data" + struct.pack("<I", len(data)) + data)
    return path


def float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """A mono IEEE float WAV with exactly these samples (NaN and infinity included)."""
    return raw_wav(path, tag=3, bits=32, rate=rate, data=np.asarray(samples, dtype="<f4").tobytes())


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def assert_one_sentence(result: subprocess.CompletedProcess, *words: str) -> None:
    text = "\n".join(line for line in result.stderr.strip().splitlines() if not line.startswith(RUNTIME_NOISE))
    assert result.returncode == 2, (result.returncode, text)
    assert "Traceback" not in text and text.count("\n") == 0, text
    for word in words:
        assert word in text, text


def bad_wavs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Malformed WAVs and a word their error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    tone = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    nan = tone.copy()
    nan[1000] = np.nan
    inf = tone.copy()
    inf[5] = np.inf
    return {
        "block_align": (raw_wav(folder / "align.wav", block_align=3), "block_align"),
        "block_align_24": (raw_wav(folder / "align24.wav", bits=24, block_align=2, data=b"\x00" * 99), "block_align"),
        "channels": (raw_wav(folder / "channels.wav", channels=60000, block_align=2), "channels"),
        "rate": (raw_wav(folder / "rate.wav", rate=3_000_000_000), "rate"),
        "nan": (float_wav(folder / "nan.wav", nan), "NaN"),
        "inf": (float_wav(folder / "inf.wav", inf), "NaN or infinite"),
        "header": (_truncated(raw_wav(folder / "short.wav"), 30), "fmt chunk"),
    }


def _truncated(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return bad_wavs(tmp_path_factory.mktemp("bad-wavs"))


CASES = ["block_align", "block_align_24", "channels", "rate", "nan", "inf", "header"]


@pytest.mark.parametrize("case", CASES)
def test_reader_refuses_malformed_wavs_in_one_sentence(wavs, case: str) -> None:
    path, word = wavs[case]
    with pytest.raises(WavError) as info:
        read_wav(path)
    assert str(info.value).startswith(f"{path}: not a readable WAV file") and word in str(info.value)


@pytest.mark.timeout(300)
def test_every_audio_verb_refuses_malformed_wavs_with_exit_2(wavs, tmp_path: Path) -> None:
    for case in CASES:
        path, word = wavs[case]
        assert_one_sentence(cli("score", "--model", str(DEMO_MODEL), str(path)), str(path), word)
        config = write_config(tmp_path / case, source={"type": "file", "path": str(path)})
        assert_one_sentence(cli("replay", "--config", str(config), str(path)), str(path), word)
        result = cli("run", "--config", str(config), "--max-seconds", "20")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert str(path) in result.stderr and word in result.stderr, result.stderr


def test_non_finite_numbers_on_the_command_line_are_refused() -> None:
    for args in (("score", "--model", str(DEMO_MODEL), "--threshold", "nan", str(DEMO_WAV)),
                 ("score", "--model", str(DEMO_MODEL), "--threshold", "inf", "--json", str(DEMO_WAV)),
                 ("score", "--model", str(DEMO_MODEL), "--window-hop", "-1", str(DEMO_WAV)),
                 ("score", "--model", str(DEMO_MODEL), "--channel", "-1", str(DEMO_WAV)),
                 ("run", "--max-seconds", "nan")):
        result = cli(*args)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, (args, result)
        assert "error: argument" in result.stderr


@pytest.mark.parametrize("spec,words", [("host:abc", "1 to 65535"), ("host:0", "1 to 65535"),
                                        ("host:99999", "1 to 65535"), (":1883", "host name"),
                                        ("host:", "missing"), ("[::1", "IPv6")])
def test_bad_mqtt_override_is_one_sentence_and_exit_2(tmp_path: Path, spec: str, words: str) -> None:
    config = write_config(tmp_path)
    assert_one_sentence(cli("run", "--config", str(config), "--mqtt", spec, "--max-seconds", "5"), "--mqtt", words)


def test_file_source_at_another_rate_is_refused_like_replay(tmp_path: Path) -> None:
    audio, rate = read_wav(DEMO_WAV)
    fast = tmp_path / "fast.wav"
    write_wav(fast, audio[::2], rate // 2)  # the same sound, labelled 8 kHz
    config = write_config(tmp_path, source={"type": "file", "path": str(fast)})
    for result in (cli("check-config", str(config)), cli("run", "--config", str(config), "--max-seconds", "20")):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "8000 Hz" in result.stderr and "16000 Hz" in result.stderr, result.stderr
    assert_one_sentence(cli("replay", "--config", str(config), str(fast)), "8000 Hz")
    source = WavFileSource(fast, expect_rate_hz=rate)
    with pytest.raises(SourceError, match="8000 Hz but the model expects 16000 Hz"):
        source.open()


def test_looping_an_empty_wav_is_refused_instead_of_spinning(tmp_path: Path) -> None:
    empty = raw_wav(tmp_path / "empty.wav", data=b"")
    with pytest.raises(SourceError, match="has no audio, so it cannot be looped"):
        WavFileSource(empty, loop=True).open()
    config = write_config(tmp_path, source={"type": "file", "path": str(empty), "loop": True})
    started = time.monotonic()
    result = cli("run", "--config", str(config), "--max-seconds", "60")
    assert result.returncode == 2 and "it has no samples" in result.stderr, result.stderr
    assert len(result.stderr) < 5000, "no flood of log lines"
    assert time.monotonic() - started < 60, "refused at start, not after --max-seconds"


# ---------------------------------------------------------------- NaN and infinity inside the daemon

class RecordingSink:
    """Keeps every event."""

    def __init__(self) -> None:
        self.events: list = []

    def handle(self, event) -> None:
        """Keep it."""
        self.events.append(event)

    def close(self) -> None:
        """Nothing to release."""


def test_non_finite_samples_are_a_health_event_never_a_score(tmp_path: Path) -> None:
    daemon = Daemon([load_config(write_config(tmp_path))])
    daemon.build()
    machine = daemon.machines[0]
    sink = RecordingSink()
    machine.sinks.append(sink)
    audio, rate = read_wav(DEMO_WAV)
    block = 512
    t0 = 1_700_000_000.0
    try:
        for i in range(0, 16000 * 6, block):  # 6 s: good, then 2 s with NaN and inf, then good again
            chunk = audio[i:i + block].copy()
            if 16000 * 2 <= i < 16000 * 4:
                chunk[::7] = np.nan if (i // block) % 2 else np.inf
            machine.process(Block(chunk, t0 + i / rate, rate), None)
    finally:
        machine.close()
    kinds = [e.kind for e in sink.events if isinstance(e, HealthEvent)]
    assert kinds.count("invalid_samples") == 1 and kinds.count("invalid_samples_end") == 1, kinds
    scores = [e for e in sink.events if isinstance(e, ScoreEvent)]
    assert scores and all(math.isfinite(e.score) for e in scores)
    assert not [e for e in sink.events if isinstance(e, AlertEvent)]
    bad_from, bad_to = t0 + 2, t0 + 4
    assert not [e for e in scores if bad_from < e.at_s < bad_to + 1.0], "a window overlapping bad audio was scored"
    telemetry = machine.telemetry({})
    assert telemetry["score_mean"] is None or math.isfinite(telemetry["score_mean"])


def test_a_non_finite_score_is_a_health_event_not_an_anomaly() -> None:
    det = Detector(DetectorSettings(threshold=1.0, trigger_k=1, trigger_n=1), "fan-1")
    events = []
    for i, score in enumerate([float("nan"), float("inf"), float("nan"), 0.5, float("-inf")]):
        events += det.process(score, 100.0 + i, rms_dbfs=-20.0)
    kinds = [e.kind for e in events if isinstance(e, HealthEvent)]
    assert kinds == ["invalid_score", "invalid_score_end", "invalid_score"], kinds
    assert not [e for e in events if isinstance(e, AlertEvent)] and det.state == "normal"
