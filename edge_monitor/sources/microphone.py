"""Live audio from a sound card or USB microphone through PortAudio (python-sounddevice).

Threading: PortAudio calls ``_on_audio`` on its own real-time thread. That
callback only copies the block into a preallocated ring and updates counters;
it never logs, blocks on I/O or allocates in a loop. The pipeline thread calls
``read``, which takes everything captured so far, stamps it with the UNIX time
of its first sample (from a monotonic-to-wall anchor plus the frame count, not
per-block ``time.time()``), resamples it to the model's rate if the device runs
at another rate, and raises ``SourceError`` when the device is lost.

Lost-device detection: the stream finishing (PortAudio gives up when the device
or the audio server disappears), or no callback for ``stall_timeout_s``. The
daemon then calls ``close()`` and retries ``open()`` with backoff; ``open()``
re-enumerates PortAudio's devices so a re-plugged USB microphone is found again.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from edge_monitor.sources.base import Block, SourceError
from edge_monitor.sources.resample import StreamingResampler

if TYPE_CHECKING:
    from edge_monitor.config import SourceConfig

_LOGGER = logging.getLogger(__name__)

_MAX_WAIT_SLICE_SECONDS = 0.25       # read() re-checks device health at least this often
_CLOCK_STEP_SECONDS = 0.05           # a wall-clock change larger than this is a step (NTP), not jitter
_DRIFT_LIMIT_SECONDS = 0.1           # re-anchor timestamps when the sample clock drifts this far
_DRIFT_WINDOW_SECONDS = 10.0         # the drift estimate is the smallest lag seen over this long
# read() wakes once this much audio is buffered, not at every capture block: each wake-up of the
# pipeline thread costs Python overhead, and 32 ms blocks would mean 31 of them per second.
_WAKE_SECONDS = 0.128

# PortAudio's device list is only refreshed by Pa_Terminate/Pa_Initialize, which also kills every
# open stream, so a re-scan only happens when no microphone in this process has a stream open.
_OPEN_SOURCES: weakref.WeakSet[MicrophoneSource] = weakref.WeakSet()
_OPEN_SOURCES_LOCK = threading.Lock()


def import_sounddevice() -> Any:
    """Import python-sounddevice, turning a missing PortAudio library into a SourceError."""
    try:
        import sounddevice  # type: ignore[import-untyped]  # no type hints in python-sounddevice
    except OSError as exc:
        raise SourceError(f"the PortAudio library is not installed ({exc}); "
                          "install it with: sudo apt-get install libportaudio2") from None
    except ImportError as exc:
        raise SourceError(f"python-sounddevice is not installed ({exc}); "
                          "install it with: pip install sounddevice") from None
    return sounddevice


def parse_device(device: Union[int, str, None]) -> Union[int, str, None]:
    """A config device value as sounddevice wants it: a string of digits is an index."""
    if isinstance(device, str):
        stripped = device.strip()
        if stripped.isdigit():
            return int(stripped)
        return stripped or None
    return device


class MicrophoneSource:
    """A Source capturing ``channels`` input channels from one PortAudio device.

    Blocks are ``(frames, channels)`` float32 at ``sample_rate`` (the target rate);
    the device itself runs at ``device_rate_hz``.
    """

    def __init__(self, device: Union[int, str, None] = "default", *, channels: int = 1,
                 device_rate_hz: int = 16000, target_rate_hz: Optional[int] = None,
                 block_seconds: float = 0.032, buffer_seconds: float = 5.0,
                 stall_timeout_s: float = 2.0, start_timeout_s: float = 5.0,
                 latency: Union[str, float] = "high", wake_seconds: float = _WAKE_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """Describe the capture; nothing touches the device until ``open()``.

        ``wake_seconds``: ``read()`` returns once at least this much audio is buffered (or at
        its timeout), so the pipeline thread wakes a few times per second, whatever the
        capture block. It never exceeds half the ring.
        """
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.device = parse_device(device)
        self.channels = int(channels)
        self.device_rate_hz = int(device_rate_hz)
        self.sample_rate = int(target_rate_hz or device_rate_hz)
        self.block_seconds = float(block_seconds)
        self.buffer_seconds = float(buffer_seconds)
        self.stall_timeout_s = float(stall_timeout_s)
        self.start_timeout_s = max(float(start_timeout_s), self.stall_timeout_s)
        self.latency = latency
        self.wake_seconds = float(wake_seconds)
        self._wake_frames = 1          # set by open() from wake_seconds, the block and the ring
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self.device_name = str(device)
        self._stream: Any = None
        self._lock = threading.Lock()
        self._data_ready = threading.Event()
        self._open_attempts = 0
        self._opens = 0                # successful opens
        # Counters carried across reopen, for telemetry.
        self._totals = {"dropped_frames": 0, "overflows": 0, "callbacks": 0}
        self._reset_stream_state(capacity_frames=0)

    @classmethod
    def from_config(cls, cfg: SourceConfig, target_rate_hz: int, *, stall_timeout_s: float = 2.0) -> MicrophoneSource:
        """Build from a ``SourceConfig`` (type: microphone); opens channels 0..max(cfg.channels)."""
        return cls(cfg.device, channels=max(cfg.channels) + 1, device_rate_hz=cfg.sample_rate,
                   target_rate_hz=target_rate_hz, block_seconds=cfg.block_seconds,
                   buffer_seconds=cfg.buffer_seconds, stall_timeout_s=stall_timeout_s)

    # ----------------------------------------------------------------- state

    def _reset_stream_state(self, capacity_frames: int) -> None:
        """Fresh ring and per-stream counters (the callback is not running)."""
        self._capacity = capacity_frames
        self._ring = np.zeros((capacity_frames, self.channels), dtype=np.float32)
        self._write_count = 0          # ring frames ever written (producer)
        self._read_count = 0           # ring frames ever consumed (consumer)
        self._device_frames = 0        # frames PortAudio delivered, kept or dropped
        self._dropped = 0              # frames dropped because the ring was full
        self._last_drop_at = -1        # ring position (write count) of the latest drop run
        self._dropped_before_last_run = 0
        self._dropped_reported = 0     # drops already attributed to a returned block
        self._overflows = 0
        self._callbacks = 0
        self._last_callback_mono = 0.0
        self._first_sample_mono: Optional[float] = None
        self._finished = False
        self._open_mono = 0.0
        # Timestamp anchor: device frame ``_anchor_frame`` was captured at monotonic ``_anchor_mono``.
        self._anchored = False
        self._anchor_frame = 0
        self._anchor_mono = 0.0
        self._wall_minus_mono = 0.0
        self._drift_min_lag_s = float("inf")
        self._drift_baseline_s: Optional[float] = None
        self._drift_window_start = 0.0
        self._resampler: Optional[StreamingResampler] = None
        self._resample_origin_frame = 0
        self._last_output_end_s: Optional[float] = None

    # -------------------------------------------------------- audio callback

    def _on_audio(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy into the ring, count drops and overflows. Nothing else."""
        now = self._monotonic()
        if self._first_sample_mono is None:
            capture_lag_s = time_info.currentTime - time_info.inputBufferAdcTime
            if not 0.0 <= capture_lag_s < 2.0:
                capture_lag_s = frames / self.device_rate_hz
            self._first_sample_mono = now - capture_lag_s
        self._callbacks += 1
        self._last_callback_mono = now
        if status.input_overflow:
            self._overflows += 1
        capacity = self._capacity
        start = self._write_count
        kept = min(frames, capacity - (start - self._read_count))
        if kept > 0:
            offset = start % capacity
            first = min(kept, capacity - offset)
            self._ring[offset:offset + first] = indata[:first]
            if kept > first:
                self._ring[:kept - first] = indata[first:kept]
        with self._lock:
            self._write_count = start + kept
            self._device_frames += frames
            if kept < frames:
                if self._last_drop_at != self._write_count:
                    self._dropped_before_last_run = self._dropped
                    self._last_drop_at = self._write_count
                self._dropped += frames - kept
        if not self._data_ready.is_set() and self._write_count - self._read_count >= self._wake_frames:
            self._data_ready.set()

    def _on_finished(self) -> None:
        """PortAudio thread: the stream ended (device gone, server gone, or closed)."""
        self._finished = True
        self._data_ready.set()

    # ------------------------------------------------------------ open/close

    def open(self) -> None:
        """Find the device, check channels and rate, and start capturing. Raises SourceError."""
        self.close()
        sd = import_sounddevice()
        self._open_attempts += 1
        if self._open_attempts > 1:
            self._rescan_devices(sd)
        index, info = self._resolve_device(sd)
        self.device_name = f"{info['name']} (#{index})"
        if info["max_input_channels"] < self.channels:
            raise SourceError(
                f"audio device '{info['name']}' (#{index}) has {info['max_input_channels']} input channel(s), "
                f"but the config needs {self.channels} (channels 0..{self.channels - 1}); "
                f"pick channels below {info['max_input_channels']} or another device (see `edge-monitor devices`)")
        try:
            sd.check_input_settings(device=index, channels=self.channels, dtype="float32",
                                    samplerate=self.device_rate_hz)
        except Exception as exc:  # sounddevice raises PortAudioError or ValueError
            raise SourceError(
                f"audio device '{info['name']}' (#{index}) cannot capture {self.channels} channel(s) at "
                f"{self.device_rate_hz} Hz ({exc}); its default rate is {info['default_samplerate']:.0f} Hz. "
                f"Set source.sample_rate to a rate it supports (see `edge-monitor devices`); "
                f"the monitor resamples to {self.sample_rate} Hz itself") from None
        blocksize = max(1, int(round(self.block_seconds * self.device_rate_hz)))
        capacity = max(4 * blocksize, int(round(self.buffer_seconds * self.device_rate_hz)))
        self._reset_stream_state(capacity)
        self._wake_frames = max(1, min(max(blocksize, int(round(self.wake_seconds * self.device_rate_hz))),
                                       capacity // 2))
        if self.device_rate_hz != self.sample_rate:
            self._resampler = StreamingResampler(self.device_rate_hz, self.sample_rate, self.channels)
        self._data_ready.clear()
        try:
            stream = sd.InputStream(device=index, channels=self.channels, samplerate=self.device_rate_hz,
                                    dtype="float32", blocksize=blocksize, latency=self.latency,
                                    callback=self._on_audio, finished_callback=self._on_finished)
        except Exception as exc:
            raise SourceError(f"cannot open audio device '{info['name']}' (#{index}): {exc}") from None
        self._open_mono = self._monotonic()
        self._wall_minus_mono = self._wall_clock() - self._monotonic()
        try:
            stream.start()
        except Exception as exc:
            stream.close(ignore_errors=True)
            raise SourceError(f"cannot start audio device '{info['name']}' (#{index}): {exc}") from None
        self._stream = stream
        self._opens += 1
        with _OPEN_SOURCES_LOCK:
            _OPEN_SOURCES.add(self)
        _LOGGER.info("capturing %d channel(s) at %d Hz from audio device %s%s", self.channels,
                     self.device_rate_hz, self.device_name,
                     f", resampled to {self.sample_rate} Hz" if self._resampler else "")

    def _rescan_devices(self, sd: Any) -> None:
        """Let PortAudio see devices plugged in since start-up, if no other stream would be hurt."""
        with _OPEN_SOURCES_LOCK:
            if any(source is not self for source in _OPEN_SOURCES):
                return
            try:
                sd._terminate()
                sd._initialize()
            except Exception as exc:  # a failed rescan leaves the old list; the open below reports
                _LOGGER.debug("PortAudio re-scan failed: %s", exc)

    def _resolve_device(self, sd: Any) -> tuple[int, dict]:
        """The (index, info) of the configured input device, or a SourceError listing what exists."""
        wanted = self.device
        try:
            info = sd.query_devices(wanted, "input")
        except ValueError as exc:
            if wanted == "default":   # no device literally named "default": use the system default input
                try:
                    info = sd.query_devices(None, "input")
                except Exception:
                    raise SourceError(self._no_device_message(sd, str(exc))) from None
            else:
                raise SourceError(self._no_device_message(sd, str(exc))) from None
        except Exception as exc:   # PortAudioError: bad index, no devices at all
            raise SourceError(self._no_device_message(sd, str(exc))) from None
        index = info.get("index")
        if index is None:
            index = wanted if isinstance(wanted, int) else int(sd.default.device[0])
        if info.get("max_input_channels", 0) < 1:
            raise SourceError(self._no_device_message(sd, f"device #{index} '{info['name']}' has no inputs"))
        return int(index), dict(info)

    def _no_device_message(self, sd: Any, reason: str) -> str:
        """A clear 'device not found' message naming the inputs that do exist."""
        try:
            inputs = [f"#{i} '{d['name']}'" for i, d in enumerate(sd.query_devices())
                      if d["max_input_channels"] > 0]
        except Exception:
            inputs = []
        available = ", ".join(inputs) if inputs else "none"
        return (f"audio input device {self.device!r} not found ({reason.splitlines()[0]}); "
                f"inputs available: {available}")

    def close(self) -> None:
        """Stop and release the device; safe to call twice and after a failure."""
        stream, self._stream = self._stream, None
        with _OPEN_SOURCES_LOCK:
            _OPEN_SOURCES.discard(self)
        if stream is None:
            return
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as exc:   # a vanished device can make PortAudio complain on close
            _LOGGER.debug("closing audio device %s: %s", self.device_name, exc)
        self._totals["dropped_frames"] += self._dropped
        self._totals["overflows"] += self._overflows
        self._totals["callbacks"] += self._callbacks
        self._dropped = self._overflows = self._callbacks = 0

    # ------------------------------------------------------------------ read

    def _check_alive(self) -> None:
        """Raise SourceError if the stream ended or stalled (called only when the ring is empty)."""
        if self._finished:
            raise SourceError(f"audio device {self.device_name} stopped delivering audio "
                              "(unplugged, or the audio server went away)")
        now = self._monotonic()
        if self._callbacks == 0:
            if now - self._open_mono > self.start_timeout_s:
                raise SourceError(f"audio device {self.device_name} delivered no audio within "
                                  f"{self.start_timeout_s:g} s of opening")
        elif now - self._last_callback_mono > self.stall_timeout_s:
            raise SourceError(f"no audio from device {self.device_name} for "
                              f"{now - self._last_callback_mono:.1f} s (limit {self.stall_timeout_s:g} s); "
                              "was it unplugged?")

    def read(self, timeout_s: float = 1.0) -> Optional[Block]:
        """All audio captured since the last read as ``(frames, channels)`` float32, or None on timeout.

        Waits until ``wake_seconds`` of audio are buffered; at the timeout it returns what there is.
        """
        if self._stream is None:
            raise SourceError("read() on a closed microphone source; call open() first")
        deadline = self._monotonic() + timeout_s
        while True:
            self._data_ready.clear()
            with self._lock:
                end = self._write_count
                dropped = self._dropped
                last_drop_at = self._last_drop_at
                dropped_before_last_run = self._dropped_before_last_run
            start = self._read_count
            remaining = deadline - self._monotonic()
            if end - start >= self._wake_frames or (end > start and (remaining <= 0 or self._finished)):
                block = self._take(start, end, dropped if last_drop_at <= start else dropped_before_last_run)
                if block is not None:
                    return block
                continue
            if end == start:
                self._check_alive()
            if remaining <= 0:
                return None
            self._data_ready.wait(min(remaining, _MAX_WAIT_SLICE_SECONDS))

    def _take(self, start: int, end: int, dropped_before_start: int) -> Optional[Block]:
        """Consume ring frames ``[start, end)``; a Block at the target rate, or None if the resampler needs more."""
        capacity = self._capacity
        offset = start % capacity
        count = end - start
        first = min(count, capacity - offset)
        if first == count:
            samples = self._ring[offset:offset + count].copy()
        else:
            samples = np.concatenate([self._ring[offset:], self._ring[:count - first]])
        self._read_count = end   # only now may the callback reuse those frames
        gap_frames = dropped_before_start - self._dropped_reported
        self._dropped_reported = dropped_before_start
        first_frame = start + dropped_before_start   # device frame index of samples[0]
        self._update_clock()
        if self._resampler is None:
            return Block(samples, self._wall_time_of(first_frame), self.sample_rate, gap_frames=gap_frames)
        return self._resampled(samples, first_frame, gap_frames)

    def _resampled(self, samples: np.ndarray, first_frame: int, gap_frames: int) -> Optional[Block]:
        """Feed the resampler; restart it after a gap so timing stays exact."""
        resampler = self._resampler
        assert resampler is not None  # only called when the device rate differs from the target
        if gap_frames > 0 or resampler.input_frames == 0:
            resampler.reset()
            self._resample_origin_frame = first_frame
        before = resampler.output_frames
        out = resampler.process(samples)
        if out.shape[0] == 0:
            return None
        t_s = self._wall_time_of(self._resample_origin_frame) + before / self.sample_rate
        out_gap = 0
        if self._last_output_end_s is not None and gap_frames > 0:
            out_gap = max(0, int(round((t_s - self._last_output_end_s) * self.sample_rate)))
        self._last_output_end_s = t_s + out.shape[0] / self.sample_rate
        return Block(out, t_s, self.sample_rate, gap_frames=out_gap)

    # ------------------------------------------------------------ timestamps

    def _wall_time_of(self, device_frame: int) -> float:
        """UNIX time (s) at which device frame ``device_frame`` was captured."""
        return (self._anchor_mono + (device_frame - self._anchor_frame) / self.device_rate_hz
                + self._wall_minus_mono)

    def _update_clock(self) -> None:
        """Keep the frame-count clock honest: first anchor, wall-clock steps, sample-clock drift."""
        now = self._monotonic()
        if not self._anchored and self._first_sample_mono is not None:
            self._anchored = True
            self._anchor_mono = self._first_sample_mono
            self._anchor_frame = 0
            self._drift_window_start = now
        wall_minus_mono = self._wall_clock() - now
        if abs(wall_minus_mono - self._wall_minus_mono) > _CLOCK_STEP_SECONDS:
            _LOGGER.info("system clock stepped by %+.3f s; audio timestamps follow it",
                         wall_minus_mono - self._wall_minus_mono)
            self._wall_minus_mono = wall_minus_mono
        # Callbacks come late, never early, so the smallest lag of a callback behind the frame
        # clock over a window is the buffering delay plus the drift between the two clocks.
        with self._lock:
            last_callback_mono = self._last_callback_mono
            device_frames = self._device_frames
        expected_mono = self._anchor_mono + (device_frames - self._anchor_frame) / self.device_rate_hz
        self._drift_min_lag_s = min(self._drift_min_lag_s, last_callback_mono - expected_mono)
        if now - self._drift_window_start < _DRIFT_WINDOW_SECONDS:
            return
        if self._drift_baseline_s is None:
            self._drift_baseline_s = self._drift_min_lag_s
        else:
            drift_s = self._drift_min_lag_s - self._drift_baseline_s
            if abs(drift_s) > _DRIFT_LIMIT_SECONDS:
                _LOGGER.info("audio clock of %s drifted %+.3f s from the system clock; re-anchoring timestamps",
                             self.device_name, drift_s)
                self._anchor_mono += drift_s
        self._drift_min_lag_s = float("inf")
        self._drift_window_start = now

    # ----------------------------------------------------------------- stats

    def stats(self) -> dict:
        """Counters for telemetry, cumulative over reopens."""
        return {
            "dropped_frames": self._totals["dropped_frames"] + self._dropped,
            "overflows": self._totals["overflows"] + self._overflows,
            "callbacks": self._totals["callbacks"] + self._callbacks,
            "reopens": max(0, self._opens - 1),   # successful reopens after the first open
            "buffered_frames": self._write_count - self._read_count,
            "device": self.device_name,
            "device_rate_hz": self.device_rate_hz,
            "sample_rate_hz": self.sample_rate,
        }
