"""What the web page does on a machine: set the threshold, record feedback, stream live scores, serve clips.

``Actions`` adds these to ``Pages``: the two forms (threshold and feedback), the
server-sent events of live scores, and the clips with their spectrograms, opened only
by a well-formed clip id inside the machine's clips folder.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from edge_monitor.events import utc_iso
from edge_monitor.threshold_store import THRESHOLD_MAX, is_valid_threshold
from edge_monitor.web.auth import Session
from edge_monitor.web.feedback import FeedbackError
from edge_monitor.web.http_types import EventStream, Response
from edge_monitor.web.pages import MachinePort, Pages
from edge_monitor.web.spectrogram import SpectrogramCache, SpectrogramError, marks_in_clip, placeholder_svg

_LOGGER = logging.getLogger("edge_monitor.web.app")  # the web page's log name

CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}-[0-9]{8}T[0-9]{6}Z-[0-9A-Za-z]{1,8}$")
"""A clip id as the clip recorder names clips; nothing else is ever opened."""
MAX_EVENT_STREAMS = 4
"""Live-score streams served at once; beyond that a page polls (the server has 16 connections in all)."""
EVENT_STREAM_SECONDS = 600.0
"""A stream ends after this long and the browser reconnects (its session is checked again)."""
EVENT_CHECK_SECONDS = 0.2
"""How often a stream looks for a new score (the pipeline takes no lock and signals nothing)."""
EVENT_KEEPALIVE_SECONDS = 15.0


class Actions(Pages):
    """The forms, the live-score stream, the clips and their spectrograms."""

    spectrograms: SpectrogramCache
    stopping: threading.Event
    _streams: threading.BoundedSemaphore

    def _set_threshold(self, port: MachinePort, session: Session, form: dict[str, str]) -> Response:
        text = form.get("threshold", "").strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not is_valid_threshold(value):
            return self._page(port.name, self._machine_page(
                port, session, None, f"threshold {text[:40]!r} refused: expected a finite number in (0, "
                                     f"{THRESHOLD_MAX:g}]"), session, 400)
        try:
            warning = port.set_threshold(value)
        except ValueError as exc:
            return self._page(port.name, self._machine_page(port, session, None, f"threshold refused: {exc}"),
                              session, 400)
        _LOGGER.info("web: threshold of %s set to %g", port.id, value)
        code = "threshold-unsaved" if warning else "threshold-ok"
        return Response(303, headers=[("Location", f"/machine/{port.id}?m={code}")])

    def _feedback(self, port: MachinePort, session: Session, form: dict[str, str]) -> Response:
        episode = form.get("episode", "")
        record = next((a for a in port.view.alerts() if a.episode == episode), None)
        if record is None:
            return self._page(port.name, self._machine_page(port, session, None, "no such alert"), session, 400)
        clip = f"{record.clip_id}.wav" if record.clip_id else None
        clip_path = str(port.clips_dir / clip) if clip and port.clips_dir is not None else None
        try:
            entry = port.feedback.record(episode, form.get("verdict", ""), form.get("note", ""),
                                         alert_id=record.alert_id, clip=clip, clip_path=clip_path,
                                         now_s=self.clock())
        except FeedbackError as exc:
            return self._page(port.name, self._machine_page(port, session, None, str(exc)), session, 400)
        except OSError as exc:
            _LOGGER.error("web: cannot save feedback to %s: %s", port.feedback.path, exc)
            return self._page(port.name, self._machine_page(port, session, None,
                                                            f"not saved: {exc.strerror or exc}"), session, 500)
        payload = {"machine": port.id, "episode": episode, "alert_id": record.alert_id,
                   "verdict": entry["verdict"], "note": entry["note"], "at": entry["at"],
                   "started_at": utc_iso(record.started_at_s), "clip": clip}
        try:
            published = port.publish_feedback(payload)
        except Exception:  # noqa: BLE001 - stored already; publishing is best effort
            _LOGGER.exception("web: publishing feedback failed")
            published = False
        _LOGGER.info("web: %s alert %s marked %s", port.id, episode, entry["verdict"])
        code = "feedback-ok" if published else "feedback-local"
        return Response(303, headers=[("Location", f"/machine/{port.id}?m={code}#alert-{episode}")])

    def _event_stream(self, port: MachinePort) -> Response:
        if not self._streams.acquire(blocking=False):
            return self._text(503, "too many live streams; the page polls instead")
        headers = [("Cache-Control", "no-store"), ("X-Accel-Buffering", "no")]  # nginx: pass each event on at once
        return Response(200, b"", "text/event-stream; charset=utf-8", headers,
                        EventStream(self._events(port), self._streams.release))

    def _events(self, port: MachinePort) -> Iterator[bytes]:
        """``data:`` with the machine's JSON (as ``/api``) at each new score or change; a comment now and then."""
        yield b"retry: 3000\n\n"  # how long the browser waits before it reconnects
        ends = time.monotonic() + EVENT_STREAM_SECONDS
        last: Any = None
        quiet_since = time.monotonic()
        while not self.stopping.is_set() and time.monotonic() < ends:
            v = port.view
            key = (v.last_score_at_s, v.state, v.alerts_total, len(v.clips), v.health_active, port.threshold())
            if key != last:
                last = key
                quiet_since = time.monotonic()
                yield b"data: " + json.dumps(self.machine_json(port)).encode() + b"\n\n"
            elif time.monotonic() - quiet_since >= EVENT_KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield b": still here\n\n"  # proxies and the browser see the connection is alive
            self.stopping.wait(EVENT_CHECK_SECONDS)

    def _clip_path(self, port: MachinePort, clip_id: str) -> Optional[Path]:
        """The clip's file in the machine's clips folder, or None for a name that is not a clip id."""
        if port.clips_dir is None or not CLIP_ID.fullmatch(clip_id):
            return None
        folder = port.clips_dir.resolve()
        path = (folder / f"{clip_id}.wav").resolve()
        return path if path.parent == folder else None

    def _spectrogram(self, port: MachinePort, name: str) -> Response:
        clip_id = name[:-4] if name.endswith(".png") else ""
        path = self._clip_path(port, clip_id)
        if path is None:
            return self._text(404, "no such clip")
        record = next((a for a in port.view.alerts() if a.clip_id == clip_id), None)
        marks = marks_in_clip(record.clip_started_at_s, record.started_at_s, record.ended_at_s) if record else []
        try:
            png = self.spectrograms.png(path, port.spec, marks)
        except SpectrogramError as exc:  # the picture says why; the page itself never breaks
            return Response(200, placeholder_svg(str(exc)).encode(), "image/svg+xml", [("Cache-Control", "no-store")])
        cache = "private, max-age=3600" if record is None or record.ended_at_s is not None else "no-store"
        return Response(200, png, "image/png", [("Cache-Control", cache)])

    def _clip(self, port: MachinePort, name: str, range_header: Optional[str]) -> Response:
        clip_id = name[:-4] if name.endswith(".wav") else ""
        path = self._clip_path(port, clip_id)
        if path is None:
            return self._text(404, "no such clip")
        try:
            data = path.read_bytes()
        except OSError:
            return self._text(404, "no such clip (never written, or deleted by the clip retention)")
        headers = [("Accept-Ranges", "bytes"), ("Cache-Control", "private, max-age=3600")]
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", (range_header or "").strip())
        if m and (m.group(1) or m.group(2)):
            size = len(data)
            if m.group(1):
                start, end = int(m.group(1)), int(m.group(2)) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            end = min(end, size - 1)
            if start > end or start >= size:
                return Response(416, b"", "audio/wav", headers + [("Content-Range", f"bytes */{size}")])
            return Response(206, data[start:end + 1], "audio/wav",
                            headers + [("Content-Range", f"bytes {start}-{end}/{size}")])
        return Response(200, data, "audio/wav", headers)
