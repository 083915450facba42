"""The Arduino serial protocol: frame and command encoding and decoding, and the device's side of it.

Everything here is pure (no I/O, no clock) except ``play`` and ``main`` at the
end: ``python -m edge_monitor.sources.serial_protocol --play FILE.wav --port
PORT`` plays a recording to a gateway as the Arduino would (``DeviceEmulator``),
to check a gateway without a board (see ``firmware/README.md``).

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
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
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


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of ``data``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _crc16_fast(data: Union[bytes, bytearray, memoryview], crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE in C (``binascii.crc_hqx`` is the same polynomial, unreflected)."""
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
    return body + _crc16_fast(memoryview(body)[2:]).to_bytes(2, "little")


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


def encode_recording(samples: np.ndarray, sample_rate_hz: int = 16000, *, block_samples: int = DEFAULT_BLOCK_SAMPLES,
                     start_seq: int = 0, boot: bool = True, alarm: bool = False) -> bytes:
    """Encode a whole recording into a protocol byte stream, as the firmware would send it.

    ``samples`` is ``(n,)`` float in [-1, 1] or int16 PCM (a ``(n, 1)`` array is
    accepted). The first frame carries BOOT (if ``boot``) and RESTART; a final
    partial block is sent as a shorter frame. Decoding gives back
    ``codes_to_float(float_to_codes(samples))`` (or ``int16_to_codes``) exactly.
    """
    x = np.asarray(samples)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"expected a mono recording (n,) or (n, 1), got shape {x.shape}")
    if not 1 <= block_samples <= MAX_AUDIO_SAMPLES:
        raise ValueError(f"block_samples must be 1..{MAX_AUDIO_SAMPLES}, got {block_samples}")
    codes = int16_to_codes(x) if x.dtype == np.int16 else float_to_codes(x)
    out = bytearray()
    base_flags = Flag.STREAMING | (Flag.ALARM if alarm else 0)
    for i, start in enumerate(range(0, len(codes), block_samples)):
        flags = base_flags
        if i == 0:
            flags |= Flag.RESTART | (Flag.BOOT if boot else 0)
        out += encode_frame(codes[start:start + block_samples], seq=start_seq + i,
                            sample_rate_hz=sample_rate_hz, flags=flags)
    return bytes(out)


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
            if _crc16_fast(memoryview(buf)[pos + 2:body_end]) != got:
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
                if _crc16_fast(memoryview(buf)[q + 2:q + length - CRC_BYTES]) == crc:
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


def iter_audio(frames: Iterable[Frame]) -> Iterable[Frame]:
    """Only the audio frames of ``frames``."""
    return (f for f in frames if f.kind == KIND_AUDIO)


# ---- the device's side, for checking a gateway without a board --------------------


class DeviceEmulator:
    """The firmware's behaviour as a pure state machine that plays a recording: the Python twin of the sketch.

    It starts like a freshly reset board: streaming at ``sample_rate_hz`` with
    the alarm off, BOOT on its first frame and RESTART on its first audio frame.
    ``receive(data)`` takes the gateway's bytes, applies the commands they
    complete exactly as ``em_handle_command`` does, and returns them with the
    reply frames to send back (one per command). ``next_audio_frame()`` returns
    the next block of the recording as an audio frame, or None while stopped or
    once a non-looping recording has ended. No I/O and no clock: the caller
    sends one frame every ``block_seconds``.
    """

    BOARD_ID = "emulator"
    FIRMWARE_VERSION = (1, 0, 0)

    def __init__(self, codes: np.ndarray, *, sample_rate_hz: int = 16000,
                 block_samples: int = DEFAULT_BLOCK_SAMPLES, loop: bool = False) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 1 or codes.size == 0:
            raise ValueError(f"expected a non-empty (n,) array of ADC codes, got shape {codes.shape}")
        if sample_rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
            raise ValueError(f"the firmware samples at {SUPPORTED_SAMPLE_RATES_HZ} Hz, not {sample_rate_hz}")
        if not 1 <= block_samples <= MAX_AUDIO_SAMPLES:
            raise ValueError(f"block_samples must be 1..{MAX_AUDIO_SAMPLES}, got {block_samples}")
        self.codes = codes.astype(np.uint16)
        self.sample_rate_hz = int(sample_rate_hz)
        self.block_samples = int(block_samples)
        self.loop = loop
        self.alarm_on = False
        self.streaming = True
        self.position = 0  # index into ``codes`` of the next sample to send
        self.frames_sent = 0
        self._seq = 0
        self._reply_seq = 0
        self._boot_pending = True
        self._restart_pending = True
        self._decoder = CommandDecoder()

    @classmethod
    def from_samples(cls, samples: np.ndarray, **kwargs) -> DeviceEmulator:
        """From ``(n,)`` or ``(n, 1)`` float samples in [-1, 1] or int16 PCM, quantised like the ADC."""
        x = np.asarray(samples)
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 1:
            raise ValueError(f"expected a mono recording (n,) or (n, 1), got shape {x.shape}")
        return cls(int16_to_codes(x) if x.dtype == np.int16 else float_to_codes(x), **kwargs)

    @property
    def block_seconds(self) -> float:
        """Duration of one audio frame at the current rate (s)."""
        return self.block_samples / self.sample_rate_hz

    @property
    def finished(self) -> bool:
        """True once a non-looping recording has been sent completely."""
        return not self.loop and self.position >= self.codes.size

    def receive(self, data: Union[bytes, bytearray]) -> tuple[list[DecodedCommand], bytes]:
        """Gateway bytes in; the commands they complete and the reply frames to send back out."""
        commands = self._decoder.feed(data)
        out = bytearray()
        for cmd in commands:
            out += self._reply(self._apply(cmd))
        return commands, bytes(out)

    def next_audio_frame(self) -> Optional[bytes]:
        """The next block as an audio frame; None while stopped or after the end of the recording."""
        if not self.streaming or self.finished:
            return None
        if self.position >= self.codes.size:
            self.position = 0  # looping
        block = self.codes[self.position:self.position + self.block_samples]
        self.position += block.size
        flags = self._flags()
        if self._restart_pending:
            flags |= Flag.RESTART
            self._restart_pending = False
        frame = encode_frame(block, seq=self._seq, sample_rate_hz=self.sample_rate_hz, flags=flags)
        self._seq = (self._seq + 1) & 0xFFFF
        self.frames_sent += 1
        return frame

    def _flags(self) -> int:
        """STREAMING, ALARM and (once after reset) BOOT, as the sketch's ``frame_flags``."""
        flags = (Flag.STREAMING if self.streaming else 0) | (Flag.ALARM if self.alarm_on else 0)
        if self._boot_pending:
            flags |= Flag.BOOT
            self._boot_pending = False
        return int(flags)

    def _restart_stream(self) -> None:
        """Sequence back to 0 and RESTART on the next audio frame (START after STOP, rate change)."""
        self._seq = 0
        self._restart_pending = True

    def _apply(self, cmd: DecodedCommand) -> bytes:
        """Apply one command; the reply payload ``[cmd, status, data...]``."""
        ok, bad = bytes([cmd.cmd, Status.OK]), bytes([cmd.cmd, Status.BAD_ARG])
        if cmd.cmd == Command.PING:
            return ok + bytes([PROTOCOL_VERSION, *self.FIRMWARE_VERSION]) + self.BOARD_ID.encode("ascii")
        if cmd.cmd == Command.SET_ALARM:
            if len(cmd.args) != 1 or cmd.args[0] > 1:
                return bad
            self.alarm_on = bool(cmd.args[0])
            return ok
        if cmd.cmd == Command.SET_RATE:
            rate_hz = int.from_bytes(cmd.args, "little") if len(cmd.args) == 2 else 0
            if rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
                return bad
            if rate_hz != self.sample_rate_hz:
                self.sample_rate_hz = rate_hz
                if self.streaming:
                    self._restart_stream()
            return ok
        if cmd.cmd in (Command.START, Command.STOP):
            if cmd.args:
                return bad
            if cmd.cmd == Command.START and not self.streaming:
                self._restart_stream()
            self.streaming = cmd.cmd == Command.START
            return ok
        return bytes([cmd.cmd, Status.UNKNOWN_CMD])

    def _reply(self, payload: bytes) -> bytes:
        """A reply frame carrying the device's current flags."""
        frame = encode_reply(payload, seq=self._reply_seq, sample_rate_hz=self.sample_rate_hz, flags=self._flags())
        self._reply_seq = (self._reply_seq + 1) & 0xFFFF
        return frame


def describe_command(cmd: DecodedCommand) -> str:
    """A command in words, e.g. ``SET_ALARM on``, ``SET_RATE 16000``, ``SET_ALARM args 07``."""
    try:
        name = Command(cmd.cmd).name
    except ValueError:
        return f"unknown command 0x{cmd.cmd:02x}"
    if cmd.cmd == Command.SET_ALARM and cmd.args in (b"\x00", b"\x01"):
        return f"{name} {'on' if cmd.args[0] else 'off'}"
    if cmd.cmd == Command.SET_RATE and len(cmd.args) == 2:
        return f"{name} {int.from_bytes(cmd.args, 'little')}"
    return f"{name} args {cmd.args.hex(' ')}" if cmd.args else name


# ---- command-line player: the only I/O in this module -------------------------------


def play(port: str, emulator: DeviceEmulator, *, baud: int = 500000, on_event: Optional[Callable[[dict], None]] = None,
         stop: Optional[threading.Event] = None) -> int:
    """Play ``emulator`` to a gateway on serial ``port`` in real time, the way a board would; return frames sent.

    Like an Arduino reset by the gateway opening its port, it stays silent until
    the gateway's first bytes arrive, then "boots": one audio frame every
    ``block_seconds`` on a fixed schedule (a late frame is sent at once and the
    schedule kept), commands answered between frames. ``on_event`` gets dicts:
    ``{"event": "boot", "t": UNIX time of the first sample}``, ``{"event":
    "command", "t", "stream_s", "command", "cmd", "args"}`` for every command and
    ``{"event": "end", "t", "frames", "stream_s"}``. Stops at the end of a
    non-looping recording or when ``stop`` is set.
    """
    import select

    import serial

    emit = on_event or (lambda event: None)
    ser = serial.Serial(port, baud, timeout=0, write_timeout=5.0)
    fd = ser.fileno()
    try:
        pending = b""
        while not pending:
            if stop is not None and stop.is_set():
                return 0
            select.select([fd], [], [], 0.2)
            pending = ser.read(4096)
        t0_mono, t0_wall = time.monotonic(), time.time()
        emit({"event": "boot", "t": t0_wall})
        due_mono = t0_mono + emulator.block_seconds
        while stop is None or not stop.is_set():
            if pending:
                commands, replies = emulator.receive(pending)
                now_mono = time.monotonic()
                for cmd in commands:
                    emit({"event": "command", "t": t0_wall + (now_mono - t0_mono), "stream_s": now_mono - t0_mono,
                          "command": describe_command(cmd), "cmd": cmd.cmd, "args": list(cmd.args)})
                if replies:
                    ser.write(replies)
            now_mono = time.monotonic()
            if now_mono >= due_mono:
                if emulator.finished:
                    break
                frame = emulator.next_audio_frame()
                if frame is None:  # stopped by the gateway: idle until START
                    due_mono = now_mono + emulator.block_seconds
                else:
                    ser.write(frame)
                    due_mono += emulator.block_seconds
            ready, _, _ = select.select([fd], [], [], max(0.0, due_mono - time.monotonic()))
            pending = ser.read(4096) if ready else b""
        end_mono = time.monotonic()
        emit({"event": "end", "t": t0_wall + (end_mono - t0_mono), "frames": emulator.frames_sent,
              "stream_s": end_mono - t0_mono})
        return emulator.frames_sent
    finally:
        ser.close()


def _print_event(event: dict, as_json: bool, what: str) -> None:
    """One player event on stdout: a JSON line, or a line for a person."""
    if as_json:
        print(json.dumps(event), flush=True)
    elif event["event"] == "boot":
        print(f"gateway connected: streaming {what} in real time", flush=True)
    elif event["event"] == "command":
        print(f"{event['stream_s']:8.2f} s  gateway: {event['command']}", flush=True)
    elif event["event"] == "end":
        print(f"finished: {event['frames']} frames in {event['stream_s']:.1f} s", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m edge_monitor.sources.serial_protocol --play FILE.wav --port PORT``: be the Arduino for a gateway."""
    import argparse

    import serial

    from edge_monitor.wavio import WavError, read_wav

    parser = argparse.ArgumentParser(
        prog="python -m edge_monitor.sources.serial_protocol",
        description="Play a WAV to an edge-monitor gateway over a serial port, as the Arduino firmware would "
                    "(10-bit samples, 128-sample frames, real-time pace), and show the commands the gateway sends.")
    parser.add_argument("--play", required=True, metavar="FILE.wav", help="recording at 16000 or 8000 Hz "
                        "(first channel if it has several)")
    parser.add_argument("--port", required=True, help="serial port to write to, e.g. one end of a socat pty pair")
    parser.add_argument("--baud", type=int, default=500000)
    parser.add_argument("--loop", action="store_true", help="start the recording again at its end")
    parser.add_argument("--json", action="store_true", help="events as JSON lines (UNIX times) for scripts")
    args = parser.parse_args(argv)
    try:
        samples, rate_hz = read_wav(args.play)
    except (OSError, WavError) as exc:
        print(f"error: cannot read {args.play}: {exc}", file=sys.stderr)
        return 2
    if rate_hz not in SUPPORTED_SAMPLE_RATES_HZ:
        print(f"error: {args.play} is sampled at {rate_hz} Hz; the firmware streams {SUPPORTED_SAMPLE_RATES_HZ} Hz, "
              f"so resample it first", file=sys.stderr)
        return 2
    emulator = DeviceEmulator.from_samples(samples[:, 0], sample_rate_hz=rate_hz, loop=args.loop)
    what = f"{args.play} ({samples.shape[0] / rate_hz:.1f} s at {rate_hz} Hz{', looped' if args.loop else ''})"
    if not args.json:
        print(f"waiting for the gateway to open the other end of {args.port} ...", flush=True)
    try:
        play(args.port, emulator, baud=args.baud, on_event=lambda e: _print_event(e, args.json, what))
    except (serial.SerialException, OSError) as exc:
        print(f"error: serial port {args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
