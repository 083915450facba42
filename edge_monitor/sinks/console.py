"""Print events as JSON lines (the ``replay`` output, and the daemon's stdout when asked)."""

from __future__ import annotations

import json
import sys
from typing import IO, Optional

from edge_monitor.events import AlertEvent, Event, HealthEvent, ScoreEvent, StateEvent


def event_to_json(event: Event) -> Optional[dict]:
    """The JSON line for an event, or None for per-window scores (too many to print)."""
    if isinstance(event, AlertEvent):
        return {"event": "alert", **event.to_payload()}
    if isinstance(event, StateEvent):
        return {"event": "state", **event.to_payload()}
    if isinstance(event, HealthEvent):
        return {"event": "health", **event.to_payload()}
    if isinstance(event, ScoreEvent):
        return None
    return None


class ConsoleSink:
    """Writes one JSON object per line for alerts, state changes and health events."""

    def __init__(self, stream: IO[str] = sys.stdout, scores: bool = False) -> None:
        self.stream = stream
        self.scores = scores

    def handle(self, event: Event) -> None:
        """Print one event."""
        obj = event_to_json(event)
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
