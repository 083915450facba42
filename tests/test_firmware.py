"""The Arduino firmware, tested as firmware: host C tests, the arduino-mk build, and the sketch running in simavr.

The simulated board is fed a known waveform on A0; its UART is bridged to a
pty that the real ``SerialSource`` (or a raw ``FrameDecoder``) reads. The
simulated clock is the AVR cycle counter, so nothing here depends on how fast
simavr runs on this machine (the speed is printed, not asserted).
"""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import serial

from edge_monitor.sources import serial_protocol as sp
from edge_monitor.sources.serial import SerialSource
from tests.helpers.simavr import (
    ALARM_LED_PIN,
    ALARM_RELAY_PIN,
    BUILD_DIR,
    ELF,
    F_CPU_HZ,
    FIRMWARE_DIR,
    HEX,
    STATUS_LED_PIN,
    find_offset,
    firmware_build,
    simulated_arduino,
)

__all__ = ["firmware_build"]  # the session fixture, imported so pytest finds it

WAVE_SAMPLES = 48000  # 3 s at 16 kHz; random codes, so any 64-sample run locates itself
TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def wave_codes() -> np.ndarray:
    """A reproducible random 10-bit waveform: every stretch of it is unique."""
    return np.random.default_rng(2024).integers(0, 1024, WAVE_SAMPLES).astype(np.uint16)


def collect_blocks(source: SerialSource, n_samples: int, timeout_s: float = TIMEOUT_S) -> list:
    """Read blocks until ``n_samples`` samples arrived."""
    blocks, total = [], 0
    deadline = time.monotonic() + timeout_s
    while total < n_samples:
        assert time.monotonic() < deadline, f"only {total} of {n_samples} samples within {timeout_s} s"
        block = source.read(timeout_s=0.5)
        if block is not None:
            blocks.append(block)
            total += block.samples.shape[0]
    return blocks


def drain(source: SerialSource) -> int:
    """Drop every block already queued; returns how many samples that was."""
    dropped = 0
    while (block := source.read(timeout_s=0)) is not None:
        dropped += block.samples.shape[0]
    return dropped


def read_frames(port: serial.Serial, decoder: sp.FrameDecoder, until, timeout_s: float = TIMEOUT_S) -> list:
    """Decode frames from a raw port until ``until(frames)`` is true."""
    frames = []
    deadline = time.monotonic() + timeout_s
    while not until(frames):
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s ({len(frames)} frames)"
        frames += decoder.feed(port.read(4096))
    return frames


def assert_contiguous_in_wave(samples: np.ndarray, wave_codes: np.ndarray) -> int:
    """The float samples are a contiguous stretch of the (looped) waveform; returns where it starts."""
    expected_all = sp.codes_to_float(np.concatenate([wave_codes, wave_codes, wave_codes]))
    offset = find_offset(expected_all, samples[:64])
    assert offset >= 0, "the first samples received are not in the waveform"
    n = len(samples)
    reps = n // len(wave_codes) + 3
    expected = sp.codes_to_float(np.tile(wave_codes, reps))[offset:offset + n]
    mismatch = np.flatnonzero(expected != samples)
    assert mismatch.size == 0, f"{mismatch.size} samples differ, first at {mismatch[:5]}"
    return offset


# ---- host-side C tests and the build -------------------------------------------------------


def test_c_core_passes_shared_vectors(firmware_build):
    proc = subprocess.run([str(BUILD_DIR / "host" / "test_core"), str(FIRMWARE_DIR / "test_vectors.txt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout


@pytest.mark.parametrize("seed", [1, 2])
def test_c_command_decoder_survives_randomized_streams(firmware_build, seed):
    proc = subprocess.run([str(BUILD_DIR / "host" / "fuzz_cmd"), "100000", str(seed)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 bogus" in proc.stdout


def test_sketch_builds_to_hex_that_fits_the_atmega328p(firmware_build):
    lines = HEX.read_text().splitlines()
    assert lines and all(line.startswith(":") for line in lines)
    assert lines[-1] == ":00000001FF"  # Intel HEX end-of-file record
    size = subprocess.run(["avr-size", "-A", str(ELF)], capture_output=True, text=True, check=True).stdout
    sections = {parts[0]: int(parts[1]) for parts in (line.split() for line in size.splitlines())
                if len(parts) >= 2 and parts[1].isdigit()}
    flash = sections[".text"] + sections.get(".data", 0)
    ram = sections.get(".data", 0) + sections.get(".bss", 0)
    print(f"firmware: {flash} bytes flash, {ram} bytes static RAM")
    assert flash <= 32256  # Uno flash minus the bootloader
    assert ram <= 1536  # leave at least 512 of the 2048 bytes for the stack


def test_build_outputs_are_not_tracked(firmware_build):
    ignored = subprocess.run(["git", "check-ignore", "-q", str(HEX)], cwd=FIRMWARE_DIR)
    assert ignored.returncode == 0, "firmware/build/ must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "firmware"], cwd=FIRMWARE_DIR, capture_output=True, text=True)
    assert not [f for f in tracked.stdout.split() if f.endswith((".hex", ".elf", ".o", ".a"))]


# ---- the sketch in simavr ------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_frames_carry_the_waveform_in_sequence_at_16khz(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        port = serial.Serial(board.pty_path, 500000, timeout=0.1)
        decoder = sp.FrameDecoder()
        frames = read_frames(port, decoder, lambda fs: len([f for f in fs if f.is_audio]) >= 300)
        port.close()
        audio = [f for f in frames if f.is_audio]
        assert decoder.crc_errors == 0
        assert all(f.sample_rate_hz == 16000 and f.count == 128 for f in audio)
        assert all(f.has(sp.Flag.STREAMING) and not f.has(sp.Flag.ALARM) for f in audio)
        seqs = np.array([f.seq for f in audio])
        assert np.all(np.diff(seqs) == 1), "sequence numbers must be consecutive"
        assert not any(f.has(sp.Flag.OVERRUN) for f in audio)
        codes = np.concatenate([f.codes() for f in audio])
        assert_contiguous_in_wave(sp.codes_to_float(codes), wave_codes)
        # the sample clock, measured in simulated cycles between ADC triggers
        adc = board.adc_log()
        assert len(adc) >= 3
        (i0, c0), (i1, c1) = adc[1], adc[-1]
        # simavr runs timers at instruction boundaries: allow a few cycles over thousands of samples
        assert abs((c1 - c0) - (i1 - i0) * 1000) <= 4, "ADC triggers must be 1000 cycles (16 kHz) apart"
        sim_s, wall_s = board.speed() or (0.0, 1.0)
        print(f"simavr speed: {sim_s:.2f} s simulated in {wall_s:.2f} s wall = {sim_s / max(wall_s, 1e-9):.2f}x real time")


@pytest.mark.timeout(180)
def test_serial_source_reproduces_the_waveform_exactly(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        source = SerialSource(board.pty_path, sample_rate=16000, buffer_seconds=30)
        source.open()
        try:
            blocks = collect_blocks(source, 40000)
        finally:
            source.close()
        samples = np.concatenate([b.samples for b in blocks])
        assert samples.dtype == np.float32 and samples.shape[1] == 1
        assert all(b.sample_rate == 16000 for b in blocks)
        assert_contiguous_in_wave(samples[:, 0], wave_codes)
        stats = source.stats()
        assert stats["gap_frames"] == 0 and stats["crc_errors"] == 0 and stats["dropped_frames"] == 0


@pytest.mark.timeout(180)
def test_alarm_command_switches_led_and_relay(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        source = SerialSource(board.pty_path)
        source.open()
        try:
            collect_blocks(source, 1024)
            assert board.pin_level(ALARM_LED_PIN) == 0 and board.pin_level(ALARM_RELAY_PIN) == 0
            assert source.set_alarm(True)
            on = board.wait_for_pin(ALARM_LED_PIN, 1)
            board.wait_for_pin(ALARM_RELAY_PIN, 1)
            # the device reports the alarm in its frames, and the status LED blinks at 4 Hz
            deadline = time.monotonic() + TIMEOUT_S
            while source.device_alarm_on is not True:
                assert time.monotonic() < deadline
                source.read(0.5)
            board.wait_for(lambda: len([c for c in board.pin_history(STATUS_LED_PIN) if c.cycle > on.cycle]) >= 3,
                           TIMEOUT_S, "the status LED to blink")
            blink = [c for c in board.pin_history(STATUS_LED_PIN) if c.cycle > on.cycle]
            half_period_s = (blink[2].cycle - blink[1].cycle) / F_CPU_HZ
            assert 0.12 <= half_period_s <= 0.13
            source.set_alarm(False)
            board.wait_for_pin(ALARM_LED_PIN, 0)
            board.wait_for_pin(ALARM_RELAY_PIN, 0)
        finally:
            source.close()


@pytest.mark.timeout(180)
def test_ping_reports_firmware_version_and_board(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        source = SerialSource(board.pty_path)
        source.open()
        try:
            info = source.identify(timeout_s=TIMEOUT_S)
        finally:
            source.close()
        assert info == sp.DeviceInfo(protocol_version=1, firmware_version="1.0.0", board_id="uno")


@pytest.mark.timeout(180)
def test_8khz_is_selectable(firmware_build, wave_codes):
    with simulated_arduino(wave_codes, log_every=8000) as board:
        source = SerialSource(board.pty_path, sample_rate=8000, buffer_seconds=30)
        source.open()
        try:
            blocks = collect_blocks(source, 16000)
        finally:
            source.close()
        assert all(b.sample_rate == 8000 for b in blocks)
        samples = np.concatenate([b.samples for b in blocks])[:, 0]
        assert_contiguous_in_wave(samples, wave_codes)
        adc = board.adc_log()
        (i0, c0), (i1, c1) = adc[-2], adc[-1]
        assert abs((c1 - c0) - (i1 - i0) * 2000) <= 4, "ADC triggers must be 2000 cycles (8 kHz) apart"


@pytest.mark.timeout(180)
def test_stop_and_start_commands(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        port = serial.Serial(board.pty_path, 500000, timeout=0.1)
        decoder = sp.FrameDecoder()
        read_frames(port, decoder, lambda fs: len(fs) >= 5)
        port.write(sp.stop_command())
        frames = read_frames(port, decoder, lambda fs: any(not f.is_audio for f in fs))
        reply = [f for f in frames if not f.is_audio][0]
        assert sp.parse_reply(reply)[:2] == (sp.Command.STOP, sp.Status.OK)
        assert not reply.has(sp.Flag.STREAMING)
        # stopped: a whole simulated 0.2 s passes with no audio frame
        start_adc = board.adc_log()[-1][0] if board.adc_log() else 0
        time.sleep(0.5)
        assert not [f for f in decoder.feed(port.read(65536)) if f.is_audio]
        assert (board.adc_log()[-1][0] if board.adc_log() else 0) == start_adc, "the ADC must stop too"
        port.write(sp.start_command())
        frames = read_frames(port, decoder, lambda fs: len([f for f in fs if f.is_audio]) >= 3)
        audio = [f for f in frames if f.is_audio]
        assert audio[0].seq == 0 and audio[0].has(sp.Flag.RESTART)
        assert [f.seq for f in audio[:3]] == [0, 1, 2]
        port.close()


def alarm_levels_since_reset(board) -> list[str]:
    """Levels the alarm LED took after the last MCU reset, in order."""
    events = board.events()
    resets = [i for i, e in enumerate(events) if e[0] == "reset"]
    after = events[resets[-1] + 1:] if resets else []
    return [e[2] for e in after if e[0] == "pin" and e[1] == ALARM_LED_PIN]


@pytest.mark.timeout(180)
def test_serial_source_survives_an_arduino_reset(firmware_build, wave_codes):
    with simulated_arduino(wave_codes) as board:
        source = SerialSource(board.pty_path, buffer_seconds=30)
        source.open()
        try:
            collect_blocks(source, 2048)
            source.set_alarm(True)
            board.wait_for_pin(ALARM_LED_PIN, 1)
            board.reset()
            board.wait_for(lambda: board.resets() == 1, TIMEOUT_S, "the reset")
            # the reset switches the alarm off; the source notices the reboot and switches it back on
            board.wait_for(lambda: alarm_levels_since_reset(board)[-2:] == ["0", "1"], TIMEOUT_S,
                           "the alarm to be restored after the reset")
            deadline = time.monotonic() + TIMEOUT_S
            while source.stats()["resets"] < 1:
                assert time.monotonic() < deadline, "the source did not notice the reset"
                source.read(0.5)
            # Audio from before the reboot (and from the boot itself) may still be queued when the reader
            # thread counts the reset: on a busy machine the queue can hold seconds of it. Let the restart
            # settle, drop that backlog, then check the stream that follows.
            board.wait_for(lambda: source.device_alarm_on is True, TIMEOUT_S, "the restored alarm in the frames")
            resets = source.stats()["resets"]
            drain(source)
            after = collect_blocks(source, 8192)
        finally:
            source.close()
        assert source.stats()["resets"] == resets, "the board must not reset again"
        samples = np.concatenate([b.samples for b in after])[-6144:, 0]
        assert_contiguous_in_wave(samples, wave_codes)
        assert resets >= 1
