"""The Arduino's side of the serial protocol, for checking a gateway without a board.

- ``encode_recording``: a whole recording as the frames a board would send;
- ``DeviceEmulator``: the firmware's behaviour as a pure state machine that plays a
  recording (the Python twin of the sketch);
- ``play``: that emulator on a real serial port, in real time;
- ``main``: ``python -m edge_monitor.tools.serial_emulator --play FILE.wav --port PORT``
  (see ``firmware/README.md``).

A tool, not part of the monitor: the daemon's import path never reaches this module.
The wire format and its codecs are in ``edge_monitor.sources.serial_protocol``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Optional, Union

import numpy as np

from edge_monitor.sources.serial_protocol import (
    DEFAULT_BLOCK_SAMPLES,
    MAX_AUDIO_SAMPLES,
    PROTOCOL_VERSION,
    SUPPORTED_SAMPLE_RATES_HZ,
    Command,
    CommandDecoder,
    DecodedCommand,
    Flag,
    Status,
    encode_frame,
    encode_reply,
    float_to_codes,
    int16_to_codes,
)


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


# ---- the real-time player and its command line: the only I/O in this module -----------


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

    import serial  # type: ignore[import-untyped]  # pyserial ships no type hints

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
    """``python -m edge_monitor.tools.serial_emulator --play FILE.wav --port PORT``: be the Arduino for a gateway."""
    import argparse

    import serial

    from edge_monitor.wavio import WavError, read_wav

    parser = argparse.ArgumentParser(
        prog="python -m edge_monitor.tools.serial_emulator",
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
