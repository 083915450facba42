"""Print events as JSON lines (the ``replay`` output, and the daemon's stdout when asked)."""

from __future__ import annotations

import json
import sys
from typing import IO, Callable, Optional

from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent


def event_to_json(event: Event) -> Optional[dict]:
    """The JSON line for an event, or None for per-window scores (too many to print)."""
    if isinstance(event, AlertEvent):
        return {"event": "alert", **event.to_payload()}
    if isinstance(event, StateEvent):
        return {"event": "state", **event.to_payload()}
    if isinstance(event, HealthEvent):
        return {"event": "health", **event.to_payload()}
    if isinstance(event, ClipEvent):
        return {"event": "clip", **event.to_payload()}
    if isinstance(event, ScoreEvent):
        return None
    return None


class ConsoleSink:
    """Writes one JSON object per line for alerts, state changes and health events.

    With ``recording_offset`` (UNIX time -> seconds into the recording, or None; set for file sources), an
    alert's line also carries ``recording_s``: where its start (or, for an ``end``, its end) falls in the file.
    """

    def __init__(self, stream: IO[str] = sys.stdout, scores: bool = False,
                 recording_offset: Optional[Callable[[float], Optional[float]]] = None) -> None:
        self.stream = stream
        self.scores = scores
        self.recording_offset = recording_offset

    def handle(self, event: Event) -> None:
        """Print one event."""
        obj = event_to_json(event)
        if obj is not None and isinstance(event, AlertEvent) and self.recording_offset is not None:
            offset = self.recording_offset(event.ended_at_s if event.ended_at_s is not None else event.started_at_s)
            if offset is not None:
                obj["recording_s"] = round(offset, 3)
        if obj is None and self.scores and isinstance(event, ScoreEvent):
            obj = {"event": "score", "machine": event.machine, "t": round(event.at_s, 3),
                   "score": round(event.score, 6), "rms_dbfs": round(event.rms_dbfs, 1)}
        if obj is not None:
            self.stream.write(json.dumps(obj) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Flush."""
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
