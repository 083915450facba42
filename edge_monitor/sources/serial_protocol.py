"""The Arduino serial protocol: frame and command encoding and decoding.

Everything here is pure (no I/O, no clock); it is what ``SerialSource`` needs at run
time. The device's side (``DeviceEmulator``, the real-time player and its command
line, ``python -m edge_monitor.tools.serial_emulator --play FILE.wav --port PORT``)
lives in ``edge_monitor.tools.serial_emulator``, which the daemon never imports.

The wire format is specified byte by byte in ``firmware/PROTOCOL.md``; the C
core in ``firmware/edge_monitor_mic/em_protocol.c`` implements the same format
and both are checked against ``firmware/test_vectors.txt``.

Device -> gateway frame (little-endian)::

    A5 5A | version | kind | flags | seq u16 | sample_rate_hz u16 | count u16 | payload | crc16

Gateway -> device command::

    C3 3C | version | cmd | arg_len | args | crc16

The CRC is CRC-16/CCITT-FALSE over everything after the two magic bytes.

Samples travel as raw 10-bit ADC codes (0..1023). The mapping to floats lives
here and only here: ``float = (code - 512) / 512``; see ``codes_to_float``.
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import sys
from typing import Optional, Union

import numpy as np

PROTOCOL_VERSION = 1
FRAME_MAGIC = b"\xa5\x5a"
COMMAND_MAGIC = b"\xc3\x3c"
FRAME_HEADER_BYTES = 11
CRC_BYTES = 2
MAX_AUDIO_SAMPLES = 512
MAX_REPLY_BYTES = 64
COMMAND_HEADER_BYTES = 5
MAX_COMMAND_ARG_BYTES = 8
SUPPORTED_SAMPLE_RATES_HZ = (8000, 16000)
DEFAULT_BLOCK_SAMPLES = 128  # what the firmware sends: 8 ms at 16 kHz

ADC_BITS = 10
ADC_MAX_CODE = (1 << ADC_BITS) - 1  # 1023
ADC_MID_CODE = 512  # code of a signal sitting exactly at the bias point -> 0.0
ADC_CODES_PER_UNIT = 512.0  # codes per 1.0 of float full scale

KIND_AUDIO = 1
KIND_REPLY = 2


class Flag(enum.IntFlag):
    """Bits of the frame's flags byte."""

    STREAMING = 0x01
    ALARM = 0x02
    BOOT = 0x04
    RESTART = 0x08
    OVERRUN = 0x10


class Command(enum.IntEnum):
    """Gateway -> device command codes."""

    PING = 0x01
    SET_ALARM = 0x02
    SET_RATE = 0x03
    START = 0x04
    STOP = 0x05


class Status(enum.IntEnum):
    """Status byte of a reply frame."""

    OK = 0
    BAD_ARG = 1
    UNKNOWN_CMD = 2


def crc16(data: Union[bytes, bytearray, memoryview], crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, unreflected) of ``data``: ``binascii.crc_hqx``, in C."""
    return binascii.crc_hqx(data, crc)


# ---- sample conversion (the one place) -------------------------------------


def codes_to_float(codes: np.ndarray) -> np.ndarray:
    """10-bit ADC codes (0..1023) -> float32 in [-1, 1): ``(code - 512) / 512``; larger codes clip to 1023."""
    x = np.minimum(np.asarray(codes, dtype=np.float32), ADC_MAX_CODE)
    return ((x - ADC_MID_CODE) / ADC_CODES_PER_UNIT).astype(np.float32)


def float_to_codes(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> uint16 codes, the way the ADC quantises (floor, clipped)."""
    x = np.floor(np.asarray(samples, dtype=np.float64) * ADC_CODES_PER_UNIT + ADC_MID_CODE)
    return np.clip(x, 0, ADC_MAX_CODE).astype(np.uint16)


def int16_to_codes(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> uint16 codes: the top 10 bits, offset to 0..1023 (same as ``float_to_codes(x / 32768)``)."""
    x = np.asarray(samples).astype(np.int32)
    return ((x + 32768) >> 6).astype(np.uint16)


# ---- frames ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded device -> gateway frame.

    ``payload`` is the raw payload bytes. For audio frames ``codes()`` gives the
    ``(count,)`` uint16 ADC codes and ``samples()`` the float32 samples.
    """

    kind: int
    flags: int
    seq: int
    sample_rate_hz: int
    count: int
    payload: bytes

    @property
    def is_audio(self) -> bool:
        """True for an audio frame."""
        return self.kind == KIND_AUDIO

    def codes(self) -> np.ndarray:
        """``(count,)`` uint16 ADC codes of an audio frame."""
        return np.frombuffer(self.payload, dtype="<u2").astype(np.uint16)

    def samples(self) -> np.ndarray:
        """``(count,)`` float32 samples in [-1, 1) of an audio frame."""
        return codes_to_float(self.codes())

    def has(self, flag: Flag) -> bool:
        """True if ``flag`` is set in this frame's flags."""
        return bool(self.flags & flag)

    def to_bytes(self) -> bytes:
        """The frame's wire bytes (header, payload, CRC)."""
        return _finish(_header(self.kind, self.flags, self.seq, self.sample_rate_hz, self.count), self.payload)


def _header(kind: int, flags: int, seq: int, sample_rate_hz: int, count: int) -> bytes:
    """The 11 header bytes (magic included)."""
    return (FRAME_MAGIC + bytes([PROTOCOL_VERSION, kind & 0xFF, flags & 0xFF])
            + int(seq & 0xFFFF).to_bytes(2, "little")
            + int(sample_rate_hz).to_bytes(2, "little")
            + int(count).to_bytes(2, "little"))


def _finish(header: bytes, payload: bytes) -> bytes:
    """Append payload and CRC (over everything after the magic)."""
    body = header + payload
    return body + crc16(memoryview(body)[2:]).to_bytes(2, "little")


def encode_frame(codes: np.ndarray, *, seq: int, sample_rate_hz: int = 16000, flags: int = Flag.STREAMING) -> bytes:
    """Encode one audio frame from ``(n,)`` 10-bit codes (1 <= n <= 512)."""
    codes = np.asarray(codes)
    n = int(codes.shape[0])
    if not 1 <= n <= MAX_AUDIO_SAMPLES:
        raise ValueError(f"an audio frame holds 1..{MAX_AUDIO_SAMPLES} samples, got {n}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > ADC_MAX_CODE):
        raise ValueError(f"ADC codes must be in 0..{ADC_MAX_CODE}")
    if not 1 <= sample_rate_hz <= 0xFFFF:
        raise ValueError(f"sample rate must fit in 16 bits, got {sample_rate_hz}")
    payload = codes.astype("<u2").tobytes()
    return _finish(_header(KIND_AUDIO, int(flags), seq, sample_rate_hz, n), payload)


def encode_reply(payload: bytes, *, seq: int = 0, sample_rate_hz: int = 16000, flags: int = 0) -> bytes:
    """Encode a reply frame (device -> gateway) carrying ``payload`` ([cmd, status, data...])."""
    if len(payload) > MAX_REPLY_BYTES:
        raise ValueError(f"a reply holds at most {MAX_REPLY_BYTES} bytes, got {len(payload)}")
    return _finish(_header(KIND_REPLY, int(flags), seq, sample_rate_hz, len(payload)), bytes(payload))


class FrameDecoder:
    """Incremental decoder of device -> gateway frames.

    ``feed(data)`` returns the complete, CRC-valid frames found so far. After
    garbage, a broken header or a CRC failure it drops one byte and rescans what
    it holds, so a real frame that starts inside a broken one is never lost;
    and a header whose corrupted count claims more bytes than have arrived is
    abandoned as soon as a complete valid frame is seen inside the claimed span.
    So the decoder is back in sync by the next intact frame. It never raises on
    input bytes and holds at most one maximal frame of data.

    Counters: ``frames``, ``crc_errors`` (frames whose header looked valid but
    whose CRC did not match, or whose claimed length proved false), ``resyncs`` (times a valid frame was found after
    bytes had to be skipped), ``bytes_skipped``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.crc_errors = 0
        self.resyncs = 0
        self.bytes_skipped = 0
        self._lost = False

    def reset(self) -> None:
        """Forget buffered bytes (counters are kept)."""
        self._buf.clear()
        self._lost = False

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> list[Frame]:
        """Consume ``data``; return the frames it completes, in order."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        while True:
            start = buf.find(FRAME_MAGIC, pos)
            if start < 0:
                # keep a trailing first magic byte: it may start the next frame
                keep_from = end - 1 if end > pos and buf[end - 1] == FRAME_MAGIC[0] else end
                self._skip(keep_from - pos)
                pos = keep_from
                break
            self._skip(start - pos)
            pos = start
            if end - pos < FRAME_HEADER_BYTES:
                break
            length = self._frame_length(buf, pos)
            if length == 0:
                self._skip(1)
                pos += 1
                continue
            if end - pos < length:
                # A corrupted count can claim bytes that never come. If a complete,
                # valid frame already sits inside the claimed span, the claim is false.
                later = self._complete_frame_after(buf, pos + 1, end)
                if later < 0:
                    break
                self.crc_errors += 1
                self._skip(later - pos)
                pos = later
                continue
            body_end = pos + length - CRC_BYTES
            got = buf[body_end] | (buf[body_end + 1] << 8)
            if crc16(memoryview(buf)[pos + 2:body_end]) != got:
                self.crc_errors += 1
                self._skip(1)
                pos += 1
                continue
            frames.append(self._parse(buf, pos, length))
            self.frames += 1
            if self._lost:
                self.resyncs += 1
                self._lost = False
            pos += length
        del buf[:pos]
        return frames

    def _skip(self, n: int) -> None:
        """Count ``n`` discarded bytes."""
        if n > 0:
            self.bytes_skipped += n
            self._lost = True

    def _complete_frame_after(self, buf: bytearray, start: int, end: int) -> int:
        """Position of the first complete CRC-valid frame in ``buf[start:end]``, or -1."""
        q = buf.find(FRAME_MAGIC, start, end)
        while 0 <= q and q + FRAME_HEADER_BYTES <= end:
            length = self._frame_length(buf, q)
            if length and q + length <= end:
                crc = buf[q + length - 2] | (buf[q + length - 1] << 8)
                if crc16(memoryview(buf)[q + 2:q + length - CRC_BYTES]) == crc:
                    return q
            q = buf.find(FRAME_MAGIC, q + 1, end)
        return -1

    @staticmethod
    def _frame_length(buf: bytearray, pos: int) -> int:
        """Total length of the frame whose header starts at ``pos``, or 0 if the header is invalid."""
        if buf[pos + 2] != PROTOCOL_VERSION:
            return 0
        kind = buf[pos + 3]
        rate = buf[pos + 7] | (buf[pos + 8] << 8)
        count = buf[pos + 9] | (buf[pos + 10] << 8)
        if kind == KIND_AUDIO:
            if not 1 <= count <= MAX_AUDIO_SAMPLES or rate == 0:
                return 0
            return FRAME_HEADER_BYTES + 2 * count + CRC_BYTES
        if kind == KIND_REPLY:
            if count > MAX_REPLY_BYTES:
                return 0
            return FRAME_HEADER_BYTES + count + CRC_BYTES
        return 0

    @staticmethod
    def _parse(buf: bytearray, pos: int, length: int) -> Frame:
        """Build a Frame from a CRC-checked frame at ``pos``."""
        return Frame(kind=buf[pos + 3], flags=buf[pos + 4],
                     seq=buf[pos + 5] | (buf[pos + 6] << 8),
                     sample_rate_hz=buf[pos + 7] | (buf[pos + 8] << 8),
                     count=buf[pos + 9] | (buf[pos + 10] << 8),
                     payload=bytes(buf[pos + FRAME_HEADER_BYTES:pos + length - CRC_BYTES]))


# ---- commands ----------------------------------------------------------------


def encode_command(cmd: int, args: bytes = b"") -> bytes:
    """Encode a gateway -> device command frame."""
    if len(args) > MAX_COMMAND_ARG_BYTES:
        raise ValueError(f"a command carries at most {MAX_COMMAND_ARG_BYTES} argument bytes, got {len(args)}")
    body = COMMAND_MAGIC + bytes([PROTOCOL_VERSION, int(cmd) & 0xFF, len(args)]) + bytes(args)
    return body + crc16(body[2:]).to_bytes(2, "little")


def ping_command() -> bytes:
    """PING: ask for firmware version and board id."""
    return encode_command(Command.PING)


def set_alarm_command(on: bool) -> bytes:
    """SET_ALARM: switch the alarm output (LED and relay) on or off."""
    return encode_command(Command.SET_ALARM, bytes([1 if on else 0]))


def set_rate_command(sample_rate_hz: int) -> bytes:
    """SET_RATE: 8000 or 16000 Hz."""
    if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        raise ValueError(f"the firmware samples at {SUPPORTED_SAMPLE_RATES_HZ} Hz, not {sample_rate_hz}")
    return encode_command(Command.SET_RATE, int(sample_rate_hz).to_bytes(2, "little"))


def start_command() -> bytes:
    """START: begin streaming audio (sequence restarts at 0)."""
    return encode_command(Command.START)


def stop_command() -> bytes:
    """STOP: stop streaming audio."""
    return encode_command(Command.STOP)


@dataclasses.dataclass(frozen=True)
class DecodedCommand:
    """One decoded gateway -> device command."""

    cmd: int
    args: bytes


class CommandDecoder:
    """Incremental decoder of gateway -> device commands, the Python twin of the C decoder.

    It keeps a sliding window of the last ``MAX_COMMAND_FRAME_BYTES`` bytes and
    accepts a command the moment its last byte arrives, whatever precedes it.
    Used by fakes and tests that play the Arduino's part.
    """

    MAX_FRAME_BYTES = COMMAND_HEADER_BYTES + MAX_COMMAND_ARG_BYTES + CRC_BYTES

    def __init__(self) -> None:
        self._buf = bytearray()
        self.crc_errors = 0
        self.bytes_skipped = 0

    def feed(self, data: Union[bytes, bytearray]) -> list[DecodedCommand]:
        """Consume ``data``; return the commands it completes, in order."""
        out: list[DecodedCommand] = []
        for byte in bytes(data):
            cmd = self._feed_byte(byte)
            if cmd is not None:
                out.append(cmd)
        return out

    def _feed_byte(self, byte: int) -> Optional[DecodedCommand]:
        """Add one byte; return a command if it completes one."""
        buf = self._buf
        if len(buf) >= self.MAX_FRAME_BYTES:
            del buf[0]
            self.bytes_skipped += 1
        buf.append(byte)
        n = len(buf)
        for start in range(0, n - COMMAND_HEADER_BYTES - CRC_BYTES + 1):
            if buf[start] != COMMAND_MAGIC[0] or buf[start + 1] != COMMAND_MAGIC[1]:
                continue
            if buf[start + 2] != PROTOCOL_VERSION or buf[start + 4] > MAX_COMMAND_ARG_BYTES:
                continue
            body_end = start + COMMAND_HEADER_BYTES + buf[start + 4]
            if body_end + CRC_BYTES != n:
                continue
            if crc16(bytes(buf[start + 2:body_end])) != (buf[body_end] | (buf[body_end + 1] << 8)):
                self.crc_errors += 1
                continue
            cmd = DecodedCommand(cmd=buf[start + 3], args=bytes(buf[start + COMMAND_HEADER_BYTES:body_end]))
            self.bytes_skipped += start
            buf.clear()
            return cmd
        return None


# ---- replies -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the firmware says about itself in its PING reply."""

    protocol_version: int
    firmware_version: str
    board_id: str


def parse_reply(frame: Frame) -> tuple[int, int, bytes]:
    """Split a reply frame's payload into ``(cmd, status, data)``; raise ValueError if too short."""
    if frame.kind != KIND_REPLY or len(frame.payload) < 2:
        raise ValueError("not a reply frame with [cmd, status]")
    return frame.payload[0], frame.payload[1], frame.payload[2:]


def parse_device_info(data: bytes) -> DeviceInfo:
    """Decode the data part of a PING reply: protocol, major, minor, patch, board id (ASCII)."""
    if len(data) < 4:
        raise ValueError(f"PING reply too short ({len(data)} bytes)")
    return DeviceInfo(protocol_version=data[0], firmware_version=f"{data[1]}.{data[2]}.{data[3]}",
                      board_id=data[4:].decode("ascii", errors="replace"))


if __name__ == "__main__":  # the player's former command line; it now lives in edge_monitor.tools.serial_emulator
    from edge_monitor.tools.serial_emulator import main

    sys.exit(main())
