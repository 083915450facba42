"""End-to-end: four machines on one 4-channel audio device, in one daemon process.

A private PulseAudio with a 4-channel null sink stands in for a microphone array.
Four configs (m0..m3) each take one channel of the same device, so the daemon opens
one shared input stream. The played WAV carries the demo's bearing fault (SYNTHETIC
audio, bundled with the package) only on channel 2; the other channels carry normal
stretches of the same demo. Only m2 may alert, on its own topic prefix.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.broker import Collector, Mosquitto, mosquitto, read_retained, wait_until  # noqa: F401
from tests.helpers.daemon import DEMO_FAULT_END_SECONDS, DEMO_FAULT_ONSET_SECONDS, DEMO_WAV, DaemonProcess, write_config
from tests.helpers.pulse import PulseServer, pulse_factory, write_wav  # noqa: F401

MACHINES = ("m0", "m1", "m2", "m3")
FAULT_CHANNEL = 2
PLAY_SECONDS = 20.0
FAULT_LEAD_SECONDS = 5.0      # normal audio before the fault on the fault channel
NORMAL_OFFSETS_SECONDS = {0: 0.0, 1: 4.0, 3: 9.0}   # different normal stretches on the other channels


def _prefix(machine_id: str) -> str:
    return f"e2e/{machine_id}"


def _demo_int16() -> tuple[np.ndarray, int]:
    with wave.open(str(DEMO_WAV), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16), wav.getframerate()


def _four_channel_wav(path: Path) -> Path:
    """20 s, 4 channels: channel 2 is 5 s normal, 10 s fault, 5 s normal; the others only normal audio."""
    demo, rate = _demo_int16()
    frames = int(PLAY_SECONDS * rate)
    onset, end = int(DEMO_FAULT_ONSET_SECONDS * rate), int(DEMO_FAULT_END_SECONDS * rate)
    normal = np.concatenate([demo[:onset], demo[end:]])   # the demo without its fault: 30 s
    out = np.zeros((frames, len(MACHINES)), dtype=np.int16)
    start = onset - int(FAULT_LEAD_SECONDS * rate)
    out[:, FAULT_CHANNEL] = demo[start:start + frames]
    for channel, offset_s in NORMAL_OFFSETS_SECONDS.items():
        first = int(offset_s * rate)
        out[:, channel] = normal[first:first + frames]
    return write_wav(path, out, rate)


def _alerts(collector: Collector, machine_id: str) -> list[dict]:
    return [m.json() for m in collector.on(f"{_prefix(machine_id)}/alert")]


def _has_level(collector: Collector, machine_id: str) -> bool:
    return any(m.json().get("rms_dbfs") is not None for m in collector.on(f"{_prefix(machine_id)}/telemetry"))


def _child_pids(pid: int) -> list[int]:
    """Child processes of ``pid`` (from every thread's ``children`` list in /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:   # a thread that just ended
            pass
    return children


@pytest.mark.timeout(180)
def test_four_machines_on_one_four_channel_device(tmp_path: Path, mosquitto: Mosquitto,  # noqa: F811
                                                  pulse_factory) -> None:  # noqa: F811
    """Only the machine whose channel carries the fault alerts; all four are online with retained state."""
    pulse: PulseServer = pulse_factory(rate_hz=16000, channels=len(MACHINES))
    wav = _four_channel_wav(tmp_path / "four-channels.wav")
    configs = [write_config(tmp_path, machine_id=mid, name=f"{mid}.yaml",
                            source={"type": "microphone", "device": "default", "sample_rate": 16000,
                                    "channels": [index]},
                            mqtt={"host": mosquitto.host, "port": mosquitto.port})
               for index, mid in enumerate(MACHINES)]
    collector = Collector(mosquitto, [f"{_prefix(mid)}/#" for mid in MACHINES])
    extra = tuple(arg for config in configs[1:] for arg in ("--config", str(config)))
    daemon = DaemonProcess(configs[0], tmp_path / "daemon.log", extra_args=extra, env=pulse.env)
    try:
        wait_until(lambda: all(_has_level(collector, mid) for mid in MACHINES), 90,
                   what="telemetry with an input level from all four machines")
        assert daemon.running, daemon.log_text()
        assert _child_pids(daemon.proc.pid) == [], "the daemon must run all machines in its own process"
        for mid in MACHINES:
            assert read_retained(mosquitto, f"{_prefix(mid)}/status") == b"online", mid
        player = pulse.play_wav_async(wav)
        wait_until(lambda: any(a["type"] == "end" for a in _alerts(collector, "m2")), 90,
                   what=f"alert start and end from m2 (log: {daemon.log_text()[-1500:]})")
        assert player.wait(timeout=60) == 0
        for mid in MACHINES:
            wait_until(lambda m=mid: read_retained(mosquitto, f"{_prefix(m)}/state") == b"normal", 20,
                       what=f"retained state normal for {mid}")
        assert daemon.running, daemon.log_text()
    finally:
        daemon.stop()
    log = daemon.log_text()
    captures = re.findall(r"capturing (\d+) channel\(s\)", log)
    assert captures == ["4"], f"expected one shared 4-channel stream, log says {captures}:\n{log[-2000:]}"
    m2 = _alerts(collector, "m2")
    assert [a["type"] for a in m2] == ["start", "end"], m2
    assert {a["machine"] for a in m2} == {"m2"}
    assert m2[0]["score"] > m2[0]["threshold"]
    for mid in ("m0", "m1", "m3"):
        assert _alerts(collector, mid) == [], f"{mid} alerted on normal audio: {_alerts(collector, mid)}"
        assert b"anomaly" not in [m.payload for m in collector.on(f"{_prefix(mid)}/state")], mid
    for mid in MACHINES:
        states = [m for m in collector.on(f"{_prefix(mid)}/state")]
        assert states and all(m.payload in (b"normal", b"anomaly") for m in states), (mid, states)
        assert read_retained(mosquitto, f"{_prefix(mid)}/status") == b"offline", mid
    collector.close()
