"""End to end over a serial cable: a recording played as the Arduino would → socat pty pair → ``edge-monitor run``.

The board's part is played by the command-line player a maintenance engineer
would use (``python -m edge_monitor.sources.serial_protocol --play``): the
bundled SYNTHETIC demo fan (40 s, bearing fault from 15 s to 25 s), quantised
to 10-bit ADC codes, in 128-sample frames with sequence numbers and CRCs, at
real-time pace, answering the gateway's commands like the firmware. The daemon
is a real ``edge-monitor run`` subprocess reading the other end of the cable.

Its alerts must match ``edge-monitor replay --start 0`` on the same WAV with
the same config: the same alert starts and ends, each within one window hop
plus a pacing allowance of the replay's time once the daemon's wall-clock
times are taken relative to the first sample's wall time (which the player
reports). Its scores must equal replay's on the 10-bit version of the file
(the serial path loses nothing but the ADC's quantisation), its thresholds the
model's, and the board must have been told to switch its alarm on during the
episode and off after it.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_monitor.model import load_model
from edge_monitor.sources import serial_protocol as sp
from edge_monitor.wavio import read_wav, write_wav
from tests.helpers.daemon import (
    DEMO_FAULT_END_SECONDS,
    DEMO_FAULT_ONSET_SECONDS,
    DEMO_MODEL,
    DEMO_WAV,
    REPO_ROOT,
    DaemonProcess,
    write_config,
)
from tests.helpers.socat import RecordingPlayer, virtual_cable

HOP_SECONDS = 0.5               # detection.window_hop_seconds in the config
PACING_ALLOWANCE_SECONDS = 0.25  # pty and reader latency, scheduling on a loaded machine
STREAM_TIMEOUT_SECONDS = 120.0


def iso_seconds(text: str) -> float:
    """UNIX seconds of an ISO 8601 UTC time as printed in events."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def json_lines(text: str) -> list[dict]:
    """The JSON objects among mixed output lines (the daemon's log goes to the same file)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def replay_events(config: Path, wav: Path) -> list[dict]:
    """Events of ``edge-monitor replay --start 0`` (times are then seconds from the first sample)."""
    done = subprocess.run([sys.executable, "-m", "edge_monitor", "replay", "--config", str(config), str(wav),
                           "--start", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json_lines(done.stdout)


def alerts(events: list[dict]) -> list[dict]:
    """Alert events only, in order."""
    return [e for e in events if e["event"] == "alert"]


def alert_times(event: dict) -> float:
    """The time an alert start or end refers to (UNIX s)."""
    return iso_seconds(event["started_at"] if event["type"] == "start" else event["ended_at"])


def quantised_copy(directory: Path) -> Path:
    """The demo WAV as the gateway receives it: through 10-bit ADC codes and back."""
    samples, rate = read_wav(DEMO_WAV)
    path = directory / "demo-fan-10bit.wav"
    write_wav(path, sp.codes_to_float(sp.float_to_codes(samples[:, 0])), rate)
    return path


@pytest.mark.timeout(240)
def test_run_on_a_serial_cable_raises_the_alerts_replay_does(tmp_path: Path):
    threshold = load_model(DEMO_MODEL).bundle.threshold
    with virtual_cable(tmp_path) as cable:
        # one config for both: replay ignores the source section and uses the same detection settings
        config = write_config(tmp_path / "machine", source={"type": "serial", "port": cable.b, "baud": 500000})
        expected = alerts(replay_events(config, DEMO_WAV))
        expected_10bit = alerts(replay_events(config, quantised_copy(tmp_path)))
        player = RecordingPlayer(cable.a, DEMO_WAV)
        daemon = DaemonProcess(config, tmp_path / "daemon.log",
                               extra_args=("--print-events", "--max-seconds", str(STREAM_TIMEOUT_SECONDS + 60)))
        try:
            first_sample_s = player.wait_for("boot", timeout_s=60)["t"]
            end = player.wait_for("end", timeout_s=STREAM_TIMEOUT_SECONDS)
            daemon_alive_at_end = daemon.running
        finally:
            daemon.stop()
            player.stop()
        log = daemon.log_text()
    got = alerts(json_lines(log))

    assert daemon_alive_at_end, f"the daemon exited during the stream:\n{log[-3000:]}"
    assert end["frames"] == -(-640000 // sp.DEFAULT_BLOCK_SAMPLES), end
    assert [e["type"] for e in expected] == ["start", "end"], expected  # the demo has one fault episode
    assert [e["type"] for e in got] == [e["type"] for e in expected], f"run: {got}\nreplay: {expected}\n{log[-3000:]}"

    for run_alert, replay_alert, replay_10bit in zip(got, expected, expected_10bit):
        run_s = alert_times(run_alert) - first_sample_s
        replay_s = alert_times(replay_alert)
        print(f"alert {run_alert['type']}: run {run_s:.3f} s, replay {replay_s:.3f} s, "
              f"difference {run_s - replay_s:+.3f} s")
        assert abs(run_s - replay_s) <= HOP_SECONDS + PACING_ALLOWANCE_SECONDS, (run_alert, replay_alert)
        assert run_alert["threshold"] == replay_alert["threshold"] == round(threshold, 6)
        assert run_alert["score"] == pytest.approx(replay_10bit["score"], rel=1e-5)
        assert run_alert["score"] == pytest.approx(replay_alert["score"], rel=0.05)
    assert got[0]["score"] >= got[0]["threshold"]
    assert got[0]["episode"] == got[1]["episode"]
    start_s, end_s = (alert_times(e) - first_sample_s for e in got)
    assert DEMO_FAULT_ONSET_SECONDS - HOP_SECONDS <= start_s < DEMO_FAULT_END_SECONDS < end_s

    # the board's alarm: off when the gateway connects, on during the episode, off after it
    alarm = [(c["stream_s"], c["args"] == [1]) for c in player.commands("SET_ALARM")]
    changes = [a for i, a in enumerate(alarm) if i == 0 or a[1] != alarm[i - 1][1]]
    assert [on for _, on in changes] == [False, True, False], alarm
    (on_s, _), (off_s, _) = changes[1], changes[2]
    print(f"alarm on at {on_s:.2f} s, off at {off_s:.2f} s of the stream")
    assert start_s <= on_s < end_s, "the alarm came on outside the alert episode"
    assert off_s >= end_s, "the alarm went off before the episode ended"
    assert player.commands("SET_RATE 16000") and player.commands("START")
