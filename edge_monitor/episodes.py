"""Remember an open alert episode on disk, so that even a crash cannot leave it without an ``end``.

While an alert is open, ``<state_dir>/episode-<machine>.json`` holds its ``start``
(written, fsynced and renamed before the start reaches any sink). It is removed
once the ``end`` has been handed to the sinks. A file found at start-up therefore
means the previous process died during an alert (``kill -9``, power cut, OOM): the
daemon then publishes an ``end`` with ``reason: "restart"`` before anything else.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from edge_monitor.atomic_file import fsync_dir, write_private_atomic
from edge_monitor.events import AlertEvent, new_alert_id

_LOGGER = logging.getLogger(__name__)

_FIELDS = ("id", "machine", "score", "threshold", "started_at_s", "model", "episode", "clip", "label")


class EpisodeStore:
    """The open episode of one machine (at most one at a time)."""

    def __init__(self, state_dir: Path, machine_id: str) -> None:
        """Keep the record in ``state_dir`` (created when needed) for ``machine_id``."""
        self.path = Path(state_dir) / f"episode-{machine_id}.json"

    def opened(self, start: AlertEvent) -> None:
        """Record an alert start, durably. Raises OSError when the disk refuses."""
        record = {name: getattr(start, name) for name in _FIELDS}
        write_private_atomic(self.path, json.dumps(record) + "\n")

    def closed(self) -> None:
        """The episode's end has been handed to the sinks: forget it."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)

    def dangling(self) -> Optional[AlertEvent]:
        """The start of an episode a previous process left open, or None (an unreadable record is logged)."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            start = AlertEvent(type="start", **{name: record[name] for name in _FIELDS})
            float(start.score), float(start.threshold), float(start.started_at_s)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            _LOGGER.error("ignoring the open-episode record %s: unreadable (%s)", self.path, exc)
            self.closed()
            return None
        return start


def restart_end(start: AlertEvent, now_s: Optional[float] = None) -> AlertEvent:
    """The ``end`` that closes an episode left open by a process that died."""
    return AlertEvent(new_alert_id(), "end", start.machine, float(start.score), float(start.threshold),
                      float(start.started_at_s), time.time() if now_s is None else now_s, start.model,
                      start.episode, label=start.label, reason="restart")
