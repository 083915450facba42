"""SerialSource over a real virtual serial cable (socat pty pair) with a scripted device on the far end.

The device end (tests/helpers/socat.py: FakeArduino) writes frames made by the
real protocol encoder and decodes the commands the source sends, so each test
can script an exact byte stream: a recording, garbage, missing frames, an
Arduino reset, an unplugged cable. The real firmware is tested in simavr in
tests/test_firmware.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.config import SourceConfig
from edge_monitor.sources import serial_protocol as sp
from edge_monitor.sources.base import SourceError
from edge_monitor.sources.serial import SerialPortInfo, SerialSource, list_serial_ports
from edge_monitor.tools import serial_emulator as emu
from tests.helpers.socat import FakeArduino, virtual_cable

TIMEOUT_S = 30.0
REAL_CLIP = Path("/work/shared/data/real/dcase2023/fan/train")


def recording(kind: str) -> np.ndarray:
    """A real fan recording (skips when the development data is absent) or a synthetic tone-plus-noise one."""
    if kind == "real":
        clips = sorted(REAL_CLIP.glob("*.wav")) if REAL_CLIP.is_dir() else []
        if not clips:
            pytest.skip(f"real recordings not present ({REAL_CLIP})")
        from edge_monitor.wavio import read_wav

        samples, rate = read_wav(clips[0])
        assert rate == 16000
        x = samples[:, 0] if samples.ndim == 2 else samples
        if x.dtype != np.int16:
            x = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)
        return x
    rng = np.random.default_rng(11)
    t = np.arange(16000 * 6) / 16000
    x = 0.3 * np.sin(2 * np.pi * 120 * t) + 0.1 * np.sin(2 * np.pi * 1850 * t) + 0.05 * rng.standard_normal(t.size)
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def collect(source: SerialSource, n_samples: int, timeout_s: float = TIMEOUT_S) -> list:
    """Blocks until ``n_samples`` samples arrived."""
    blocks, total = [], 0
    deadline = time.monotonic() + timeout_s
    while total < n_samples:
        assert time.monotonic() < deadline, f"only {total} of {n_samples} samples within {timeout_s} s"
        block = source.read(0.2)
        if block is not None:
            blocks.append(block)
            total += block.samples.shape[0]
    return blocks


def wait_until(predicate, what: str, timeout_s: float = TIMEOUT_S, source: SerialSource = None) -> None:
    """Poll ``predicate`` (draining the source if given) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if source is not None:
            source.read(0.05)
        else:
            time.sleep(0.02)


def ramp(seq: int, n: int = 128) -> np.ndarray:
    """Distinct codes per frame so a block can be traced back to its frame."""
    return ((np.arange(n) + seq * 7) % 1024).astype(np.uint16)


@pytest.fixture
def cable(tmp_path):
    with virtual_cable(tmp_path) as c:
        yield c


@pytest.fixture
def rig(cable):
    """(source on end B, fake device on end A), both open."""
    source = SerialSource(cable.b, buffer_seconds=60)
    source.open()
    device = FakeArduino(cable.a)
    yield source, device
    source.close()
    device.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["synthetic", "real"])
def test_recording_through_the_cable_is_reproduced_exactly(rig, kind):
    source, device = rig
    pcm = recording(kind)
    device.write(emu.encode_recording(pcm, 16000))
    blocks = collect(source, len(pcm))
    got = np.concatenate([b.samples for b in blocks])
    assert got.shape == (len(pcm), 1) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], sp.codes_to_float(sp.int16_to_codes(pcm)))
    stats = source.stats()
    assert stats["gap_frames"] == 0 and stats["crc_errors"] == 0 and stats["dropped_frames"] == 0
    assert all(b.sample_rate == 16000 for b in blocks)
    print(f"recording ({kind}): {len(pcm)} samples reproduced exactly")


@pytest.mark.timeout(60)
def test_garbage_costs_no_frame(rig):
    source, device = rig
    rng = np.random.default_rng(1)
    stream = b"".join(device.frame(ramp(s), s) for s in range(5))
    # random bytes, then a false header that claims a maximal frame, then real frames again
    stream += rng.integers(0, 256, 300).astype(np.uint8).tobytes()
    stream += bytes([0xA5, 0x5A, 0x01, 0x01, 0x01, 0x05, 0x00, 0x80, 0x3E, 0x00, 0x02])
    stream += b"".join(device.frame(ramp(s), s) for s in range(5, 12))
    device.write(stream)
    blocks = collect(source, 12 * 128)
    got = np.concatenate([b.samples[:, 0] for b in blocks])
    np.testing.assert_array_equal(got, sp.codes_to_float(np.concatenate([ramp(s) for s in range(12)])))
    stats = source.stats()
    assert stats["resyncs"] >= 1 and stats["bytes_skipped"] >= 300 and stats["gap_frames"] == 0


@pytest.mark.timeout(60)
def test_missing_and_corrupted_frames_become_counted_zero_gaps(rig):
    source, device = rig
    frames = {s: device.frame(ramp(s), s) for s in range(10)}
    broken = bytearray(frames[6])
    broken[40] ^= 0x10
    stream = b"".join(frames[s] for s in (0, 1, 2, 5)) + bytes(broken) + frames[7] + frames[8] + frames[9]
    device.write(stream)
    blocks = collect(source, 10 * 128)
    by_gap = [(b.gap_frames, b.samples.shape[0]) for b in blocks]
    assert by_gap == [(0, 128)] * 3 + [(256, 384)] + [(128, 256)] + [(0, 128)] * 2
    got = np.concatenate([b.samples[:, 0] for b in blocks])
    expected = np.concatenate([sp.codes_to_float(ramp(s)) if s not in (3, 4, 6) else np.zeros(128, np.float32)
                               for s in range(10)])
    np.testing.assert_array_equal(got, expected)
    stats = source.stats()
    assert stats["gap_frames"] == 384 and stats["gaps"] == 2 and stats["crc_errors"] == 1


@pytest.mark.timeout(60)
def test_sequence_wraps_without_a_gap(rig):
    source, device = rig
    device.write(b"".join(device.frame(ramp(s & 0xFFFF), s & 0xFFFF) for s in range(65533, 65540)))
    collect(source, 7 * 128)
    assert source.stats()["gap_frames"] == 0


@pytest.mark.timeout(60)
def test_arduino_reset_mid_stream(rig):
    source, device = rig
    device.write(b"".join(device.frame(ramp(s), s) for s in range(20, 30)))
    collect(source, 10 * 128)
    rates_before = len(device.commands_of(sp.Command.SET_RATE))
    # the board reboots: a new stream from seq 0 with BOOT and RESTART, alarm off
    boot = sp.Flag.STREAMING | sp.Flag.BOOT | sp.Flag.RESTART
    device.write(device.frame(ramp(0), 0, flags=boot) + b"".join(device.frame(ramp(s), s) for s in range(1, 10)))
    blocks = collect(source, 10 * 128)
    assert sum(b.gap_frames for b in blocks) == 0
    got = np.concatenate([b.samples[:, 0] for b in blocks])
    np.testing.assert_array_equal(got, sp.codes_to_float(np.concatenate([ramp(s) for s in range(10)])))
    assert source.stats()["resets"] == 1
    # the source re-sends its settings to the rebooted board
    wait_until(lambda: len(device.commands_of(sp.Command.SET_RATE)) > rates_before, "settings after the reset")


@pytest.mark.timeout(60)
def test_set_alarm_reaches_the_device_and_is_reasserted(rig):
    source, device = rig
    assert source.set_alarm(True)
    wait_until(lambda: device.alarm_on, "the alarm command")
    device.write(b"".join(device.frame(ramp(s), s) for s in range(3)))
    wait_until(lambda: source.device_alarm_on is True, "the device to report the alarm", source=source)
    # the device lost the alarm state (e.g. a brown-out whose boot frame was lost): frames say alarm off
    device.alarm_on = False
    commands_before = len(device.commands_of(sp.Command.SET_ALARM))
    deadline = time.monotonic() + TIMEOUT_S
    seq = 3
    while len(device.commands_of(sp.Command.SET_ALARM)) == commands_before:
        assert time.monotonic() < deadline, "the source did not re-send SET_ALARM"
        device.write(device.frame(ramp(seq), seq))
        seq += 1
        source.read(0.05)
    assert device.alarm_on
    source.set_alarm(False)
    wait_until(lambda: not device.alarm_on, "alarm off")


@pytest.mark.timeout(60)
def test_identify(rig):
    source, device = rig
    assert source.identify(timeout_s=TIMEOUT_S) == sp.DeviceInfo(1, "1.0.0", "fake")


@pytest.mark.timeout(60)
def test_wrong_rate_frames_are_refused_and_the_rate_is_requested(cable):
    source = SerialSource(cable.b, sample_rate=8000)
    source.open()
    device = FakeArduino(cable.a, sample_rate_hz=16000)
    try:
        wait_until(lambda: device.sample_rate_hz == 8000, "SET_RATE 8000 at open")
        device.sample_rate_hz = 16000  # pretend the board ignored it
        device.write(b"".join(device.frame(ramp(s), s) for s in range(5)))
        wait_until(lambda: source.stats()["rate_mismatch_frames"] == 5, "the 16 kHz frames to be refused",
                   source=source)
        assert source.read(0.2) is None
        device.write(b"".join(device.frame(ramp(s), s) for s in range(5, 10)))
        wait_until(lambda: device.sample_rate_hz == 8000, "SET_RATE to be sent again")
    finally:
        source.close()
        device.close()


@pytest.mark.timeout(60)
def test_silent_device_is_asked_to_start_again(rig):
    source, device = rig
    wait_until(lambda: len(device.commands_of(sp.Command.START)) >= 1, "START at open")
    wait_until(lambda: len(device.commands_of(sp.Command.START)) >= 2, "START again after a stall", source=source)


@pytest.mark.timeout(90)
def test_unplug_raises_source_error_and_reopen_works(cable):
    source = SerialSource(cable.b)
    source.open()
    device = FakeArduino(cable.a)
    device.write(b"".join(device.frame(ramp(s), s) for s in range(4)))
    collect(source, 4 * 128)
    device.close()
    cable.unplug()
    deadline = time.monotonic() + TIMEOUT_S
    with pytest.raises(SourceError, match="failed"):
        while True:
            assert time.monotonic() < deadline, "no SourceError after the unplug"
            source.read(0.1)
    source.close()
    with pytest.raises(SourceError, match="cannot open serial port"):
        source.open()
    cable.plug()
    source.open()
    device = FakeArduino(cable.a)
    try:
        device.write(b"".join(device.frame(ramp(s), s) for s in range(100, 104)))
        blocks = collect(source, 4 * 128)
        np.testing.assert_array_equal(blocks[0].samples[:, 0], sp.codes_to_float(ramp(100)))
    finally:
        source.close()
        device.close()
    source.close()  # twice is fine


def test_open_of_a_missing_port_names_it(tmp_path):
    source = SerialSource(str(tmp_path / "ttyNOPE"))
    with pytest.raises(SourceError, match="ttyNOPE"):
        source.open()
    assert source.read(0) is None


def test_from_config_and_validation():
    cfg = SourceConfig(type="serial", port="/dev/ttyACM0", baud=1000000, sample_rate=8000, buffer_seconds=2.0)
    source = SerialSource.from_config(cfg)
    assert (source.port, source.baud, source.sample_rate, source.channels) == ("/dev/ttyACM0", 1000000, 8000, 1)
    with pytest.raises(ValueError, match="44100"):
        SerialSource.from_config(SourceConfig(type="serial", port="/dev/ttyACM0", sample_rate=44100))
    with pytest.raises(ValueError, match="source.port"):
        SerialSource.from_config(SourceConfig(type="serial"))
    assert set(source.stats()) >= {"dropped_frames", "overflows", "gap_frames", "crc_errors", "resyncs", "resets"}


def test_queue_overflow_is_counted_not_blocking(cable):
    source = SerialSource(cable.b, buffer_seconds=0.5)  # 63 blocks
    source.open()
    device = FakeArduino(cable.a)
    try:
        device.write(b"".join(device.frame(ramp(s % 65536), s % 65536) for s in range(200)))
        wait_until(lambda: source.stats()["frames"] == 200, "all frames decoded")
        stats = source.stats()
        assert stats["dropped_frames"] == (200 - 63) * 128 and stats["overflows"] == 200 - 63
    finally:
        source.close()
        device.close()


def test_list_serial_ports_returns_port_infos():
    ports = list_serial_ports()
    assert isinstance(ports, list)
    for p in ports:
        assert isinstance(p, SerialPortInfo) and p.device.startswith("/dev/")
    likely = [p.likely_arduino for p in ports]
    assert likely == sorted(likely, reverse=True)
