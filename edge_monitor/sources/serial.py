"""Audio from an Arduino microphone front end over USB serial (firmware in ``firmware/``).

A background reader thread reads the port, decodes frames
(``serial_protocol.FrameDecoder``) and puts one ``Block`` per audio frame into
a bounded queue; ``read()`` takes them out. The reader also keeps the device
in the state the gateway wants: after an Arduino reset, or if the device
reports an alarm state or sample rate other than the wanted one, it sends the
commands again. Missing sequence numbers are filled with zeros (up to
``max_gap_fill_seconds``) and counted; the port disappearing, or (with
``stall_timeout_s``) a board that stops sending audio, makes ``read()`` raise
``SourceError``, and ``open()`` works again once the port is back.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edge_monitor.sources import serial_protocol as sp
from edge_monitor.sources.base import Block, SourceError

if TYPE_CHECKING:
    from edge_monitor.config import SourceConfig

_LOGGER = logging.getLogger(__name__)

READ_POLL_SECONDS = 0.05  # reader thread wakes at least this often
RESEND_INTERVAL_SECONDS = 1.0  # least time between repeats of a corrective command
STALL_SECONDS = 1.5  # no audio for this long: ask the device to (re)start streaming
REANCHOR_SECONDS = 0.5  # re-anchor block timestamps when the sample clock drifts this far from wall time
START_TIMEOUT_SECONDS = 5.0  # first audio after open(): an Uno reset by the port opening needs ~2 s to boot

# USB vendor ids of Arduino boards and the USB-serial chips found on clones.
_ARDUINO_VIDS = {0x2341: "Arduino", 0x2A03: "Arduino", 0x1A86: "CH340", 0x0403: "FTDI", 0x10C4: "CP210x"}


@dataclasses.dataclass(frozen=True)
class SerialPortInfo:
    """One serial port as listed by ``list_serial_ports``."""

    device: str
    description: str
    hwid: str
    vid: Optional[int]
    pid: Optional[int]
    serial_number: Optional[str]
    likely_arduino: bool


def list_serial_ports() -> list[SerialPortInfo]:
    """Serial ports on this machine, most likely Arduinos first (for ``edge-monitor devices``)."""
    from serial.tools import list_ports  # type: ignore[import-untyped]  # pyserial ships no type hints

    ports = []
    for p in list_ports.comports():
        ports.append(SerialPortInfo(device=p.device, description=p.description or "", hwid=p.hwid or "",
                                    vid=p.vid, pid=p.pid, serial_number=p.serial_number,
                                    likely_arduino=p.vid in _ARDUINO_VIDS))
    return sorted(ports, key=lambda p: (not p.likely_arduino, p.device))


class SerialSource:
    """A ``Source`` reading the edge-monitor Arduino firmware's frames from a serial port.

    ``read()`` returns one ``Block`` per audio frame: ``(n, 1)`` float32 in
    [-1, 1) (see ``serial_protocol.codes_to_float``), with ``gap_frames``
    zero samples at its start where frames were missing.
    """

    channels = 1

    def __init__(self, port: str, *, baud: int = 500000, sample_rate: int = 16000, buffer_seconds: float = 5.0,
                 max_gap_fill_seconds: float = 1.0, stall_timeout_s: Optional[float] = None) -> None:
        """``stall_timeout_s``: no audio for this long (or for ``START_TIMEOUT_SECONDS`` after ``open()``,
        whichever is longer) makes ``read()`` raise ``SourceError``; None never gives up on a silent board."""
        if sample_rate not in sp.SUPPORTED_SAMPLE_RATES_HZ:
            raise ValueError(f"the Arduino firmware samples at {sp.SUPPORTED_SAMPLE_RATES_HZ} Hz; "
                             f"source.sample_rate {sample_rate} is not supported with type: serial")
        if not port:
            raise ValueError("source.port is required with type: serial (e.g. /dev/ttyACM0)")
        self.port = port
        self.baud = int(baud)
        self.sample_rate = int(sample_rate)
        self.buffer_seconds = float(buffer_seconds)
        self.max_gap_fill_samples = int(max_gap_fill_seconds * sample_rate)
        self.stall_timeout_s = None if stall_timeout_s is None else float(stall_timeout_s)
        max_blocks = max(4, math.ceil(buffer_seconds * sample_rate / sp.DEFAULT_BLOCK_SAMPLES))
        self._queue: queue.Queue = queue.Queue(maxsize=max_blocks)
        self._decoder = sp.FrameDecoder()
        self._serial: Any = None  # a serial.Serial while open (pyserial ships no type hints)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._opened_before = False
        self._alarm_wanted = False
        self._replies: dict[int, tuple[int, bytes]] = {}
        self._reply_cond = threading.Condition()
        self._counters = dict(dropped_frames=0, overflows=0, gap_frames=0, gaps=0, discontinuities=0,
                              device_overruns=0, resets=0, rate_mismatch_frames=0, frames=0, samples=0)
        self._reset_stream_state()

    @classmethod
    def from_config(cls, cfg: SourceConfig, *, stall_timeout_s: Optional[float] = 2.0) -> SerialSource:
        """Build from an ``edge_monitor.config.SourceConfig`` (port, baud, sample_rate, buffer_seconds)."""
        return cls(cfg.port or "", baud=cfg.baud, sample_rate=cfg.sample_rate, buffer_seconds=cfg.buffer_seconds,
                   stall_timeout_s=stall_timeout_s)

    # ---- Source protocol -------------------------------------------------

    def open(self) -> None:
        """Open the port, start the reader thread and ask the device to stream; SourceError if the port is missing."""
        import serial  # type: ignore[import-untyped]

        if self._thread is not None:
            return
        try:
            self._serial = serial.Serial(self.port, self.baud, timeout=READ_POLL_SECONDS, write_timeout=1.0,
                                         exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"cannot open serial port {self.port}: {exc}") from exc
        retrying_silent_board = self._opened_before and not self._audio_seen
        self._opened_before = True
        self._error = None
        self._stop.clear()
        self._decoder.reset()
        self._reset_stream_state()
        self._drain_queue()
        self._thread = threading.Thread(target=self._reader, name=f"serial-{self.port}", daemon=True)
        self._thread.start()
        self._send_settings()
        # a board that stays silent is reopened every few seconds: log those attempts only at DEBUG
        _LOGGER.log(logging.DEBUG if retrying_silent_board else logging.INFO, "serial source open on %s at %d baud, "
                    "%d Hz", self.port, self.baud, self.sample_rate)

    def read(self, timeout_s: float) -> Optional[Block]:
        """Next block, or None on timeout; SourceError once the port has failed (or the board went silent
        for longer than ``stall_timeout_s``) and the queue is empty."""
        try:
            block = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            block = None
        if block is None:
            if self._error is not None:
                raise SourceError(f"serial port {self.port} failed: {self._error}")
            self._check_stall(time.monotonic())
        return block

    def stats(self) -> dict:
        """Counters: dropped_frames and overflows (Source protocol), gap_frames, crc_errors, resyncs, resets, ..."""
        out = dict(self._counters)
        out.update(crc_errors=self._decoder.crc_errors, resyncs=self._decoder.resyncs,
                   bytes_skipped=self._decoder.bytes_skipped)
        return out

    def close(self) -> None:
        """Stop the reader and close the port. Safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - the port may already be gone
                pass
            _LOGGER.log(logging.INFO if self._audio_seen else logging.DEBUG, "serial source on %s closed", self.port)

    # ---- gateway -> device -----------------------------------------------

    def set_alarm(self, on: bool) -> bool:
        """Switch the Arduino's alarm output (LED and relay); kept and re-applied after resets and reconnects.

        Returns True if the command was written now, False if the port is not
        open (the state is then applied on the next ``open()``).
        """
        self._alarm_wanted = bool(on)
        self._last_alarm_sent_s = time.monotonic()
        return self._write(sp.set_alarm_command(self._alarm_wanted))

    @property
    def device_alarm_on(self) -> Optional[bool]:
        """Alarm state the device last reported in its frames (None before the first frame)."""
        return None if self._device_flags is None else bool(self._device_flags & sp.Flag.ALARM)

    def identify(self, timeout_s: float = 2.0) -> sp.DeviceInfo:
        """Ask the firmware for its version and board id (PING); SourceError if it does not answer."""
        with self._reply_cond:
            self._replies.pop(int(sp.Command.PING), None)
        if not self._write(sp.ping_command()):
            raise SourceError(f"serial port {self.port} is not open")
        deadline = time.monotonic() + timeout_s
        with self._reply_cond:
            while int(sp.Command.PING) not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SourceError(f"no PING reply from the device on {self.port} within {timeout_s} s")
                self._reply_cond.wait(remaining)
            status, data = self._replies.pop(int(sp.Command.PING))
        return sp.parse_device_info(data)

    def send_command(self, frame: bytes) -> bool:
        """Write a raw command frame (from ``serial_protocol``); False if the port is not open."""
        return self._write(frame)

    # ---- internals ---------------------------------------------------------

    def _check_stall(self, now_s: float) -> None:
        """Raise SourceError if the board has sent no audio for too long (only called with an empty queue)."""
        if self.stall_timeout_s is None or self._thread is None:
            return
        limit_s = self.stall_timeout_s if self._audio_seen else max(self.stall_timeout_s, START_TIMEOUT_SECONDS)
        silent_s = now_s - self._last_audio_s
        if silent_s > limit_s:
            what = "since the last audio frame" if self._audio_seen else "since the port was opened"
            raise SourceError(f"no audio from the board on serial port {self.port} for {silent_s:.1f} s {what} "
                              f"(limit {limit_s:g} s); is it powered and running the edge-monitor firmware?")

    def _reset_stream_state(self) -> None:
        """Forget sequence and timing state (new port or device restart)."""
        self._last_seq: Optional[int] = None
        self._device_flags: Optional[int] = None
        self._anchor_t_s = 0.0
        self._anchor_samples = 0
        self._last_audio_s = time.monotonic()
        self._audio_seen = False
        self._last_alarm_sent_s = 0.0
        self._last_settings_sent_s = 0.0

    def _drain_queue(self) -> None:
        """Drop blocks left over from a previous connection."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _write(self, data: bytes) -> bool:
        """Write bytes to the port; False if it is closed or the write fails (the reader reports failures)."""
        ser = self._serial
        if ser is None:
            return False
        try:
            with self._write_lock:
                ser.write(data)
            return True
        except Exception as exc:  # noqa: BLE001 - pyserial raises several types on unplug
            _LOGGER.warning("write to serial port %s failed: %s", self.port, exc)
            return False

    def _send_settings(self) -> None:
        """Rate, alarm and START: idempotent, so safe to repeat at any time."""
        now = time.monotonic()
        self._last_settings_sent_s = now
        self._last_alarm_sent_s = now
        self._write(sp.set_rate_command(self.sample_rate) + sp.set_alarm_command(self._alarm_wanted)
                    + sp.start_command())

    def _reader(self) -> None:
        """Reader thread: bytes -> frames -> blocks, plus keeping the device in the wanted state."""
        ser = self._serial
        try:
            while not self._stop.is_set():
                waiting = ser.in_waiting
                data = ser.read(min(max(waiting, 1), 65536))
                if data:
                    for frame in self._decoder.feed(data):
                        self._on_frame(frame)
                self._maintain(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - SerialException, OSError, TypeError on a closed fd
            if not self._stop.is_set():
                self._error = exc
                _LOGGER.warning("serial port %s lost: %s", self.port, exc)

    def _maintain(self, now_s: float) -> None:
        """Re-send commands whose effect the device's frames do not show (lost command, reset, other gateway)."""
        if self._device_flags is not None and bool(self._device_flags & sp.Flag.ALARM) != self._alarm_wanted:
            if now_s - self._last_alarm_sent_s >= RESEND_INTERVAL_SECONDS:
                self._last_alarm_sent_s = now_s
                self._write(sp.set_alarm_command(self._alarm_wanted))
        if now_s - self._last_audio_s >= STALL_SECONDS and now_s - self._last_settings_sent_s >= 2 * STALL_SECONDS:
            self._send_settings()

    def _on_frame(self, frame: sp.Frame) -> None:
        """Handle one decoded frame (reader thread)."""
        self._device_flags = frame.flags
        if frame.has(sp.Flag.BOOT):
            self._counters["resets"] += 1
            self._last_seq = None
            _LOGGER.info("Arduino on %s restarted; re-sending settings", self.port)
            self._send_settings()
        if frame.kind == sp.KIND_REPLY:
            try:
                cmd, status, data = sp.parse_reply(frame)
            except ValueError:
                return
            with self._reply_cond:
                self._replies[cmd] = (status, data)
                self._reply_cond.notify_all()
            return
        if frame.kind != sp.KIND_AUDIO:
            return
        now_s = time.monotonic()
        self._last_audio_s = now_s
        self._audio_seen = True
        if frame.sample_rate_hz != self.sample_rate:
            self._counters["rate_mismatch_frames"] += 1
            self._last_seq = None
            if now_s - self._last_settings_sent_s >= RESEND_INTERVAL_SECONDS:
                self._send_settings()
            return
        self._deliver(frame)

    def _deliver(self, frame: sp.Frame) -> None:
        """Turn an audio frame into a Block (gap-filled) and queue it."""
        c = self._counters
        n = frame.count
        gap = 0
        wall_start_s = time.time() - n / self.sample_rate
        if frame.has(sp.Flag.OVERRUN):
            c["device_overruns"] += 1
            c["overflows"] += 1
        if self._last_seq is None or frame.has(sp.Flag.RESTART):
            self._anchor(wall_start_s)
        else:
            missing_blocks = (frame.seq - self._last_seq - 1) & 0xFFFF
            if missing_blocks:
                c["gaps"] += 1
                if missing_blocks * n <= self.max_gap_fill_samples:
                    gap = missing_blocks * n
                    c["gap_frames"] += gap
                else:
                    c["discontinuities"] += 1
                    self._anchor(wall_start_s)
        self._last_seq = frame.seq
        samples = frame.samples()
        if gap:
            samples = np.concatenate([np.zeros(gap, dtype=np.float32), samples])
        t_s = self._anchor_t_s + self._anchor_samples / self.sample_rate
        if abs(t_s + gap / self.sample_rate - wall_start_s) > REANCHOR_SECONDS:
            self._anchor(wall_start_s - gap / self.sample_rate)
            t_s = self._anchor_t_s
        self._anchor_samples += samples.shape[0]
        block = Block(samples=samples.reshape(-1, 1), t_s=t_s, sample_rate=self.sample_rate, gap_frames=gap)
        c["frames"] += 1
        c["samples"] += samples.shape[0]
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            c["dropped_frames"] += samples.shape[0]
            c["overflows"] += 1

    def _anchor(self, t_s: float) -> None:
        """Restart the block clock at wall time ``t_s``."""
        self._anchor_t_s = t_s
        self._anchor_samples = 0
