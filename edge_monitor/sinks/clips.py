"""Evidence clips: a WAV file of the audio around each alert start.

The pipeline thread calls ``push`` with every block of (mono, float32) audio and
``start_clip`` when an alert starts. ``start_clip`` picks the file name at once,
so the path can go into the alert payload before the clip exists; the file is
written when ``post_seconds`` of audio after the trigger have arrived, or with
whatever exists on ``flush()``/``close()``.

Memory is bounded and allocated up front: one float32 ring of
``pre_seconds + trigger_lookback_seconds`` (960 kB at 16 kHz with the defaults)
plus one ``pre_seconds + post_seconds`` buffer per pending clip (at most
``MAX_PENDING_CLIPS``).

Clip files are 16-bit PCM mono WAVs named ``<machine>-<UTC start>-<id>.wav``,
written to a hidden temporary name, fsynced, then renamed, so a reader never
sees a half-written clip. Clips are created 0640 (the folder 0750) whatever the
umask: they are recordings of the factory floor. After each write the oldest clips of this machine are
deleted until both ``max_count`` and ``max_total_mb`` hold. A full, missing or
read-only folder never stops alerting: ``start_clip`` returns None, failures are
counted in ``stats()`` and logged once per kind of failure.

When a clip is complete on disk (renamed into place), ``on_written`` receives a
``ClipEvent`` (id, alert id, duration, size, sha256), after the recorder's lock is
released, on the thread that completed it (the pipeline thread, or the one calling
``flush``/``close``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import hashlib
import io
import logging
import os
import re
import threading
import time
import uuid
import wave
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edge_monitor.config import ClipsConfig
from edge_monitor.events import AlertEvent, ClipEvent

_LOGGER = logging.getLogger(__name__)

MAX_PENDING_CLIPS = 4
"""Clips that may wait for their post-trigger audio at once; further alerts get no clip."""

_BYTES_PER_MB = 1_000_000
CLIP_FILE_MODE = 0o640
CLIP_DIR_MODE = 0o750
_WAV_HEADER_BYTES = 44
_INT16_SCALE = 32768.0  # float sample 1.0 maps to int16 full scale (clipped to 32767)


@dataclasses.dataclass
class _PendingClip:
    """A clip whose audio is still arriving. Indices count samples since the recorder started."""

    path: Path
    buffer: np.ndarray  # (stop_index - start_index,) float32
    start_index: int
    stop_index: int
    filled_until_index: int
    alert_id: str = ""
    episode: str = ""
    start_t_s: float = 0.0  # UNIX time (s) of the clip's first sample


class ClipRecorder:
    """Keeps recent audio and writes a WAV around each alert start."""

    def __init__(self, cfg: ClipsConfig, clips_dir: Path, machine_id: str, sample_rate_hz: int, *,
                 trigger_lookback_seconds: float = 10.0,
                 on_written: Optional[Callable[[ClipEvent], None]] = None) -> None:
        """Preallocate the ring; nothing touches the disk until the first clip.

        ``on_written`` is told about every clip once it is complete on disk.

        ``trigger_lookback_seconds`` is how far in the past an alert's
        ``started_at_s`` may lie (the detector's k-of-n delay) and still be
        found in the ring, so the clip is centred on the anomaly's onset.
        """
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        self._cfg = cfg
        self._dir = Path(clips_dir)
        self._sample_rate_hz = int(sample_rate_hz)
        self._machine = re.sub(r"[^A-Za-z0-9_-]", "_", machine_id) or "machine"
        self._machine_id = machine_id
        self._name_re = re.compile(rf"^{re.escape(self._machine)}-\d{{8}}T\d{{6}}Z-[0-9A-Za-z]{{1,8}}\.wav$")
        self._pre_samples = int(round(cfg.pre_seconds * sample_rate_hz))
        self._post_samples = int(round(cfg.post_seconds * sample_rate_hz))
        lookback_samples = int(round(max(trigger_lookback_seconds, 0.0) * sample_rate_hz))
        self._ring = np.zeros(max(self._pre_samples + lookback_samples, 1), dtype=np.float32)
        self._end_index = 0            # samples pushed so far; the next sample's index
        self._anchor_t_s: Optional[float] = None  # UNIX time of the latest block's first sample
        self._anchor_index = 0
        self._pending: list[_PendingClip] = []
        self._lock = threading.Lock()
        self._closed = False
        self._errors_logged: set[tuple[str, int]] = set()
        self._failing = False
        self._counts = {"clips_written": 0, "clips_failed": 0, "clips_deleted": 0, "clips_skipped": 0}
        self._stale_temp_files_removed = False
        self.on_written = on_written  # settable: the daemon wires it after building the machine
        self._written: list[ClipEvent] = []  # complete clips not yet announced (guarded by _lock)

    # ---- audio in -------------------------------------------------------

    def push(self, samples: np.ndarray, t_s: float) -> None:
        """Add one block: ``samples`` is ``(n,)`` float32 mono, ``t_s`` the UNIX time (s) of its first sample."""
        if not self._cfg.enabled:
            return
        block = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = block.shape[0]
        with self._lock:
            if self._closed or n == 0:
                return
            start_index = self._end_index
            self._write_ring(block)
            self._end_index += n
            self._anchor_t_s = float(t_s)
            self._anchor_index = start_index
            if self._pending:
                self._feed_pending(block, start_index)
        self._announce()

    def _write_ring(self, block: np.ndarray) -> None:
        """Copy a block into the ring (only its tail if it is longer than the ring)."""
        size = self._ring.shape[0]
        n = block.shape[0]
        if n >= size:
            block = block[n - size:]
            first_index = self._end_index + n - size
            n = size
        else:
            first_index = self._end_index
        pos = first_index % size
        head = min(n, size - pos)
        self._ring[pos:pos + head] = block[:head]
        if head < n:
            self._ring[:n - head] = block[head:]

    def _read_ring(self, start_index: int, stop_index: int, out: np.ndarray) -> None:
        """Copy samples ``[start_index, stop_index)`` (all still in the ring) into ``out``."""
        size = self._ring.shape[0]
        n = stop_index - start_index
        if n <= 0:
            return
        pos = start_index % size
        head = min(n, size - pos)
        out[:head] = self._ring[pos:pos + head]
        if head < n:
            out[head:n] = self._ring[:n - head]

    def _feed_pending(self, block: np.ndarray, block_start_index: int) -> None:
        """Copy the new block into every pending clip; write the clips that are complete."""
        block_stop_index = block_start_index + block.shape[0]
        finished: list[_PendingClip] = []
        for clip in self._pending:
            lo = max(clip.filled_until_index, block_start_index)
            hi = min(clip.stop_index, block_stop_index)
            if hi > lo:
                clip.buffer[lo - clip.start_index:hi - clip.start_index] = \
                    block[lo - block_start_index:hi - block_start_index]
                clip.filled_until_index = hi
            if clip.filled_until_index >= clip.stop_index:
                finished.append(clip)
        for clip in finished:
            self._pending.remove(clip)
            self._write_clip(clip)

    # ---- clips ----------------------------------------------------------

    def start_clip(self, alert: AlertEvent) -> Optional[str]:
        """Begin a clip around ``alert.started_at_s``; return its future path, or None if none will be saved.

        The trigger is the audio at ``started_at_s`` if that is still in the ring,
        else the newest audio. Calling again for the same alert returns the same path.
        """
        if not self._cfg.enabled or self._pre_samples + self._post_samples == 0:
            return None
        with self._lock:
            if self._closed:
                return None
            path = self._dir / self._clip_name(alert)
            for clip in self._pending:
                if clip.path == path:
                    return str(path)
            if len(self._pending) >= MAX_PENDING_CLIPS:
                self._counts["clips_skipped"] += 1
                self._log_once("pending", 0, logging.WARNING,
                               f"{MAX_PENDING_CLIPS} clips are still waiting for audio; no clip for alert {alert.id}")
                return None
            expected_bytes = _WAV_HEADER_BYTES + 2 * (self._pre_samples + self._post_samples)
            if not self._folder_usable(expected_bytes):
                self._counts["clips_failed"] += 1
                return None
            clip = self._begin(path, self._trigger_index(alert.started_at_s))
            clip.alert_id, clip.episode = alert.id, alert.episode
            if clip.filled_until_index >= clip.stop_index:
                self._write_clip(clip)
            else:
                self._pending.append(clip)
        self._announce()
        return str(path)

    def _clip_name(self, alert: AlertEvent) -> str:
        """``<machine>-<YYYYmmddTHHMMSSZ>-<first 8 id characters>.wav`` for an alert."""
        stamp = _dt.datetime.fromtimestamp(alert.started_at_s, tz=_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        short_id = re.sub(r"[^0-9A-Za-z]", "", alert.id)[:8] or uuid.uuid4().hex[:8]
        return f"{self._machine}-{stamp}-{short_id}.wav"

    def _trigger_index(self, started_at_s: float) -> int:
        """The sample index of ``started_at_s``, clamped to the audio still in the ring."""
        oldest_index = max(0, self._end_index - self._ring.shape[0])
        if self._anchor_t_s is None:
            return self._end_index
        index = self._anchor_index + int(round((started_at_s - self._anchor_t_s) * self._sample_rate_hz))
        if index < oldest_index:
            _LOGGER.debug("alert start %.3f s is older than the audio kept; clip starts at the oldest audio",
                          started_at_s)
        return min(max(index, oldest_index), self._end_index)

    def _begin(self, path: Path, trigger_index: int) -> _PendingClip:
        """A pending clip around ``trigger_index``, with the audio already in the ring copied in."""
        oldest_index = max(0, self._end_index - self._ring.shape[0])
        start_index = max(trigger_index - self._pre_samples, oldest_index)
        stop_index = trigger_index + self._post_samples
        clip = _PendingClip(path=path, buffer=np.zeros(stop_index - start_index, dtype=np.float32),
                            start_index=start_index, stop_index=stop_index,
                            filled_until_index=min(self._end_index, stop_index),
                            start_t_s=self._time_of(start_index))
        self._read_ring(start_index, clip.filled_until_index, clip.buffer)
        return clip

    def _time_of(self, index: int) -> float:
        """UNIX time (s) of sample ``index`` (from the latest block's time stamp)."""
        if self._anchor_t_s is None:
            return time.time()
        return self._anchor_t_s + (index - self._anchor_index) / self._sample_rate_hz

    def flush(self) -> None:
        """Write every pending clip now, with the audio that has arrived so far."""
        with self._lock:
            pending, self._pending = self._pending, []
            for clip in pending:
                clip.buffer = clip.buffer[:clip.filled_until_index - clip.start_index]
                clip.stop_index = clip.filled_until_index
                self._write_clip(clip)
        self._announce()

    def _announce(self) -> None:
        """Hand complete clips to ``on_written`` (outside the lock); a failing listener is logged."""
        if not self._written:
            return
        with self._lock:
            written, self._written = self._written, []
        for event in written:
            if self.on_written is None:
                continue
            try:
                self.on_written(event)
            except Exception:  # noqa: BLE001 - announcing must never stop the recorder
                _LOGGER.exception("announcing clip %s failed", event.path)

    def close(self) -> None:
        """Write pending clips with what exists and stop accepting audio. Safe to call twice."""
        self.flush()
        with self._lock:
            self._closed = True

    def stats(self) -> dict:
        """Counters for telemetry: clips_written, clips_failed, clips_deleted, clips_skipped, clips_pending."""
        with self._lock:
            return {**self._counts, "clips_pending": len(self._pending)}

    # ---- disk -----------------------------------------------------------

    def _folder_usable(self, expected_bytes: int) -> bool:
        """Create the clips folder if needed; False (logged once) if it cannot take a clip of this size."""
        try:
            if not self._dir.is_dir():
                self._dir.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._dir.mkdir(mode=CLIP_DIR_MODE)
                    os.chmod(self._dir, CLIP_DIR_MODE)  # mkdir's mode is filtered by the umask
                except FileExistsError:
                    pass
        except OSError as exc:
            self._log_failure("mkdir", exc, f"cannot create clips folder {self._dir}: {exc.strerror or exc}")
            return False
        if not os.access(self._dir, os.W_OK | os.X_OK):
            self._log_once("access", errno.EACCES, logging.ERROR,
                           f"clips folder {self._dir} is not writable (read-only file system or permissions); "
                           "alerts go out without clips")
            self._failing = True
            return False
        try:
            fs = os.statvfs(self._dir)
        except OSError as exc:
            self._log_failure("statvfs", exc, f"cannot check free space in {self._dir}: {exc.strerror or exc}")
            return False
        free_bytes = fs.f_bavail * fs.f_frsize
        if free_bytes < expected_bytes:
            self._log_once("space", errno.ENOSPC, logging.ERROR,
                           f"clips folder {self._dir} has {free_bytes} bytes free, a clip needs {expected_bytes}; "
                           "alerts go out without clips")
            self._failing = True
            return False
        self._remove_stale_temp_files()
        return True

    def _remove_stale_temp_files(self) -> None:
        """Delete this machine's temporary clip files left by a crash (once per recorder)."""
        if self._stale_temp_files_removed:
            return
        self._stale_temp_files_removed = True
        try:
            with os.scandir(self._dir) as entries:
                stale = [e.path for e in entries
                         if e.name.startswith(".") and e.name.endswith(".tmp") and self._name_re.match(e.name[1:-4])]
            for path in stale:
                os.unlink(path)
        except OSError as exc:
            _LOGGER.debug("could not remove stale temporary clips in %s: %s", self._dir, exc)

    def _write_clip(self, clip: _PendingClip) -> None:
        """Write the clip as 16-bit mono WAV via a temporary file and rename; count and log, never raise."""
        temp_path = clip.path.with_name(f".{clip.path.name}.tmp")
        samples = np.nan_to_num(clip.buffer, nan=0.0, posinf=1.0, neginf=-1.0)
        pcm = np.clip(np.rint(samples * _INT16_SCALE), -32768, 32767).astype("<i2")
        memory = io.BytesIO()
        with wave.open(memory, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(self._sample_rate_hz)
            wav.writeframes(pcm.tobytes())
        data = memory.getvalue()
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CLIP_FILE_MODE)
            os.fchmod(fd, CLIP_FILE_MODE)
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_path, clip.path)
        except (OSError, wave.Error) as exc:
            self._counts["clips_failed"] += 1
            self._log_failure("write", exc, f"cannot write clip {clip.path}: {getattr(exc, 'strerror', None) or exc}")
            try:
                temp_path.unlink()
            except OSError:
                pass
            return
        self._counts["clips_written"] += 1
        self._written.append(ClipEvent(
            id=clip.path.stem, alert_id=clip.alert_id, episode=clip.episode, machine=self._machine_id,
            path=str(clip.path), at_s=time.time(), duration_s=pcm.shape[0] / self._sample_rate_hz,
            sample_rate_hz=self._sample_rate_hz, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            started_at_s=clip.start_t_s))
        if self._failing:
            _LOGGER.info("clips are being written to %s again", self._dir)
            self._failing = False
            self._errors_logged.clear()
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        """Delete this machine's oldest clips until max_count and max_total_mb hold; never the newest."""
        try:
            with os.scandir(self._dir) as entries:
                clips = [(e.stat().st_mtime_ns, e.name, e.stat().st_size) for e in entries
                         if self._name_re.match(e.name) and e.is_file(follow_symlinks=False)]
        except OSError as exc:
            self._log_failure("scan", exc, f"cannot list clips in {self._dir} for retention: {exc.strerror or exc}")
            return
        clips.sort()
        count = len(clips)
        total_bytes = sum(size for _, _, size in clips)
        limit_bytes = self._cfg.max_total_mb * _BYTES_PER_MB
        for _, name, size in clips[:-1]:
            if count <= self._cfg.max_count and total_bytes <= limit_bytes:
                break
            try:
                os.unlink(self._dir / name)
                self._counts["clips_deleted"] += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._log_failure("delete", exc, f"cannot delete old clip {self._dir / name}: {exc.strerror or exc}")
                return
            count -= 1
            total_bytes -= size

    # ---- logging --------------------------------------------------------

    def _log_failure(self, operation: str, exc: BaseException, message: str) -> None:
        """Log a disk failure once per (operation, errno); later repeats go to DEBUG."""
        self._failing = True
        self._log_once(operation, getattr(exc, "errno", None) or 0, logging.ERROR, message)

    def _log_once(self, operation: str, errno_value: int, level: int, message: str) -> None:
        """Log ``message`` at ``level`` the first time this kind of problem occurs, at DEBUG afterwards."""
        key = (operation, errno_value)
        if key in self._errors_logged:
            _LOGGER.debug("%s", message)
            return
        self._errors_logged.add(key)
        _LOGGER.log(level, "%s", message)
