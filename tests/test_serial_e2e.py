"""End to end over a serial cable: a recording played as the Arduino would → socat pty pair → ``edge-monitor run``.

The board's part is played by the command-line player a maintenance engineer
would use (``python -m edge_monitor.tools.serial_emulator --play``): the
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
episode and off after it. When the board then falls silent the machine goes
``degraded`` (and stays so while the port opens but sends nothing); when it
streams again the machine is ``normal`` without a daemon restart.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.config import SourceConfig
from edge_monitor.model import load_model
from edge_monitor.sources import serial_protocol as sp
from edge_monitor.sources.base import SourceError
from edge_monitor.sources.serial import START_TIMEOUT_SECONDS, SerialSource
from edge_monitor.tools import serial_emulator as emu
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
from tests.helpers.socat import FakeArduino, RecordingPlayer, virtual_cable

HOP_SECONDS = 0.5               # detection.window_hop_seconds in the config
PACING_ALLOWANCE_SECONDS = 0.25  # pty and reader latency, scheduling on a loaded machine
STREAM_TIMEOUT_SECONDS = 120.0
SILENT_BOARD_SECONDS = START_TIMEOUT_SECONDS + 1.0  # long enough for the daemon to reopen the silent port once


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


def wait_for_state(daemon: DaemonProcess, state: str, after_s: float, timeout_s: float = 60.0) -> None:
    """Poll the daemon's output until it prints a state event ``state`` timed after ``after_s``."""
    deadline = time.monotonic() + timeout_s
    while not any(e["event"] == "state" and e["state"] == state and iso_seconds(e["at"]) > after_s
                  for e in json_lines(daemon.log_text())):
        assert daemon.running, f"the daemon exited:\n{daemon.log_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no state {state!r} within {timeout_s} s:\n{daemon.log_text()[-3000:]}"
        time.sleep(0.2)


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
        second_player = None
        try:
            first_sample_s = player.wait_for("boot", timeout_s=60)["t"]
            end = player.wait_for("end", timeout_s=STREAM_TIMEOUT_SECONDS)
            daemon_alive_at_end = daemon.running
            # the board falls silent: degraded, and no flapping back to normal while the port opens but stays quiet
            wait_for_state(daemon, "degraded", after_s=end["t"])
            time.sleep(SILENT_BOARD_SECONDS)
            second_player = RecordingPlayer(cable.a, DEMO_WAV, loop=True)
            back_s = second_player.wait_for("boot", timeout_s=60)["t"]
            wait_for_state(daemon, "normal", after_s=end["t"])
        finally:
            daemon.stop()
            player.stop()
            if second_player is not None:
                second_player.stop()
        log = daemon.log_text()
    events = json_lines(log)
    got = alerts(events)

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
    # start_s and end_s are the daemon's timestamps (block arrival, so pty and reader latency included) less
    # the player's boot time; on_s and off_s are the player's stream position: they agree within that latency
    assert start_s - PACING_ALLOWANCE_SECONDS <= on_s < end_s, "the alarm came on outside the alert episode"
    assert off_s >= end_s - PACING_ALLOWANCE_SECONDS, "the alarm went off before the episode ended"
    assert player.commands("SET_RATE 16000") and player.commands("START")

    after = [(e["state"], iso_seconds(e["at"])) for e in events
             if e["event"] == "state" and iso_seconds(e["at"]) > end["t"]]
    assert [state for state, _ in after] == ["degraded", "normal"], after
    assert after[1][1] >= back_s, "the daemon reported normal while the board was silent"
    assert [e["kind"] for e in events if e["event"] == "health"] == ["source_lost", "source_ok"]


# ---- the emulated board on its own (pure, no cable) ---------------------------------


def decode(data: bytes) -> list[sp.Frame]:
    """All frames in ``data``."""
    return sp.FrameDecoder().feed(data)


def test_emulator_streams_the_recording_like_a_freshly_reset_board():
    codes = (np.arange(300) % 1024).astype(np.uint16)
    board = emu.DeviceEmulator(codes)
    frames = []
    while (data := board.next_audio_frame()) is not None:
        frames += decode(data)
    assert [f.seq for f in frames] == [0, 1, 2] and [f.count for f in frames] == [128, 128, 44]
    assert frames[0].flags == sp.Flag.STREAMING | sp.Flag.BOOT | sp.Flag.RESTART
    assert all(f.flags == sp.Flag.STREAMING for f in frames[1:])
    assert np.array_equal(np.concatenate([f.codes() for f in frames]), codes)
    assert board.finished and board.block_seconds == 128 / 16000


def test_emulator_answers_every_command_as_the_firmware_does():
    board = emu.DeviceEmulator.from_samples(np.zeros(1000, dtype=np.int16))
    commands, out = board.receive(sp.ping_command() + sp.set_alarm_command(True) + b"\x00junk"
                                  + sp.encode_command(sp.Command.SET_ALARM, b"\x07") + bytes([0xC3, 0x3C]))
    replies = decode(out)
    assert [emu.describe_command(c) for c in commands] == ["PING", "SET_ALARM on", "SET_ALARM args 07"]
    assert [sp.parse_reply(r)[:2] for r in replies] == [(sp.Command.PING, sp.Status.OK),
                                                        (sp.Command.SET_ALARM, sp.Status.OK),
                                                        (sp.Command.SET_ALARM, sp.Status.BAD_ARG)]
    info = sp.parse_device_info(sp.parse_reply(replies[0])[2])
    assert (info.protocol_version, info.firmware_version, info.board_id) == (1, "1.0.0", "emulator")
    assert replies[0].has(sp.Flag.BOOT) and not replies[1].has(sp.Flag.BOOT)
    assert replies[1].has(sp.Flag.ALARM) and [r.seq for r in replies] == [0, 1, 2]
    frame = decode(board.next_audio_frame())[0]
    assert frame.has(sp.Flag.ALARM) and frame.has(sp.Flag.RESTART) and not frame.has(sp.Flag.BOOT)


def test_emulator_stop_start_and_rate_change_restart_the_sequence():
    board = emu.DeviceEmulator.from_samples(np.zeros(16000, dtype=np.float32), loop=True)
    for _ in range(3):
        board.next_audio_frame()
    board.receive(sp.start_command() + sp.set_rate_command(16000))  # no change: no restart
    assert decode(board.next_audio_frame())[0].seq == 3
    board.receive(sp.stop_command())
    assert board.next_audio_frame() is None and not board.finished
    board.receive(sp.start_command())
    restarted = decode(board.next_audio_frame())[0]
    assert restarted.seq == 0 and restarted.has(sp.Flag.RESTART)
    board.receive(sp.set_rate_command(8000))
    slow = decode(board.next_audio_frame())[0]
    assert (slow.seq, slow.sample_rate_hz, board.block_seconds) == (0, 8000, 128 / 8000)
    _, out = board.receive(sp.encode_command(sp.Command.SET_RATE, (44100).to_bytes(2, "little")))
    assert sp.parse_reply(decode(out)[0])[1] == sp.Status.BAD_ARG and board.sample_rate_hz == 8000
    for _ in range(200):  # 1 s at 16 kHz in 128-sample blocks, looped
        assert board.next_audio_frame() is not None


@pytest.mark.parametrize("module", ["edge_monitor.tools.serial_emulator",
                                    "edge_monitor.sources.serial_protocol"])  # the command's former home still works
def test_player_refuses_a_recording_at_a_rate_the_board_cannot_stream(tmp_path: Path, module: str):
    wav = tmp_path / "cd.wav"
    write_wav(wav, np.zeros(4410, dtype=np.float32), 44100)
    done = subprocess.run([sys.executable, "-m", module, "--play", str(wav),
                           "--port", str(tmp_path / "nowhere")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "44100 Hz" in done.stderr and "resample" in done.stderr


@pytest.mark.timeout(60)
def test_a_board_that_falls_silent_is_a_source_error_only_with_a_stall_timeout(tmp_path: Path):
    with virtual_cable(tmp_path) as cable:
        device = FakeArduino(cable.a)
        watchful = SerialSource(cable.b, stall_timeout_s=0.3)
        try:
            watchful.open()
            device.write(b"".join(device.frame(np.full(128, 512, dtype=np.uint16), s) for s in range(3)))
            deadline = time.monotonic() + 30
            blocks = 0
            with pytest.raises(SourceError, match=r"no audio from the board .*\(limit 0\.3 s\)"):
                while True:
                    assert time.monotonic() < deadline, "the silent board was never reported"
                    blocks += watchful.read(0.1) is not None
            assert blocks == 3  # the queued audio is delivered before the stall is reported
        finally:
            watchful.close()
            device.close()
    assert SerialSource.from_config(SourceConfig(type="serial", port=cable.b)).stall_timeout_s == 2.0
    assert SerialSource(cable.b).stall_timeout_s is None
