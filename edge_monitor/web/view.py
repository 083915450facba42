"""What the page knows about one machine, fed by its pipeline thread and read by the web threads.

The pipeline side only appends to bounded deques and replaces whole values; the web
side copies a deque in one C call (``tuple(d)``) and works on the copy. Nothing here
takes a lock, so a slow browser can never hold up a block of audio.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Optional

import numpy as np

from edge_monitor.events import AlertEvent, ClipEvent, Event, HealthEvent, ScoreEvent, StateEvent

HISTORY_SECONDS = 3600.0
"""The score chart covers the last hour."""
MAX_SCORE_POINTS = 7200
"""One hour at the default 0.5 s window hop; older points fall off."""
MAX_ALERT_EVENTS = 400
"""Start and end messages kept for the alert history (about 200 episodes)."""
MAX_CLIPS = 400

HEALTH_CONDITIONS = {
    "silence": "silence_end", "clipping": "clipping_end", "source_lost": "source_ok",
    "invalid_samples": "invalid_samples_end", "invalid_score": "invalid_score_end", "mqtt_error": "mqtt_ok",
}
"""Health kinds that start a condition, and the kind that ends it."""
_ENDS = {end: start for start, end in HEALTH_CONDITIONS.items()}


@dataclasses.dataclass(frozen=True)
class AlertRecord:
    """One alert episode as the page shows it."""

    episode: str
    alert_id: str              # id of the start message
    started_at_s: float
    ended_at_s: Optional[float]
    start_score: float
    end_score: Optional[float]
    threshold: float
    label: Optional[str]
    reason: Optional[str]
    clip_id: Optional[str]     # file name without .wav, once announced complete
    clip_pending: bool         # a clip is being written
    clip_started_at_s: Optional[float] = None  # UNIX time of the clip's first sample


class ScoreRing:
    """The last ``size`` (time, score) pairs in two numpy arrays: one writer (the pipeline), any readers.

    The writer stores a pair, then counts it; a reader copies both arrays between two reads
    of the count and retries if a pair was counted meanwhile. The oldest slot, the one a
    write in progress may be replacing, is never read.
    """

    def __init__(self, size: int) -> None:
        """Room for ``size`` pairs."""
        self.size = size
        self._t = np.zeros(size)
        self._s = np.zeros(size)
        self.count = 0  # pairs ever written

    def append(self, t_s: float, score: float) -> None:
        """Store one pair (pipeline thread)."""
        i = self.count % self.size
        self._t[i] = t_s
        self._s[i] = score
        self.count += 1

    def arrays(self, since_s: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
        """(times, scores) of the pairs at or after ``since_s``, oldest first (copies)."""
        for _ in range(5):
            before = self.count
            t, s = self._t.copy(), self._s.copy()
            if self.count == before:
                break
        n = min(before, self.size - 1)
        if n <= 0:
            return np.zeros(0), np.zeros(0)
        idx = (np.arange(before - n, before)) % self.size
        t, s = t[idx], s[idx]
        first = int(np.searchsorted(t, since_s, side="left")) if np.all(np.diff(t) >= 0) else 0
        if first:
            t, s = t[first:], s[first:]
        keep = t >= since_s
        return (t, s) if keep.all() else (t[keep], s[keep])


def _snapshot(d: collections.deque) -> tuple:
    """A copy of ``d`` taken while its writer may append (one C-level call; retried if it races)."""
    for _ in range(5):
        try:
            return tuple(d)
        except RuntimeError:  # "deque mutated during iteration"
            continue
    return ()


class MachineView:
    """A sink that remembers what the page shows: scores of the last hour, state, health, alerts, clips."""

    def __init__(self, machine_id: str) -> None:
        """An empty view of ``machine_id``."""
        self.machine_id = machine_id
        self.scores = ScoreRing(MAX_SCORE_POINTS + 1)
        self.alert_events: collections.deque[AlertEvent] = collections.deque(maxlen=MAX_ALERT_EVENTS)
        self.clips: collections.deque[ClipEvent] = collections.deque(maxlen=MAX_CLIPS)
        self.state = "unknown"
        self.last_score: Optional[float] = None
        self.last_score_at_s: Optional[float] = None
        self.last_inference_ms: Optional[float] = None
        self.rms_dbfs: Optional[float] = None
        self.health_active: frozenset[str] = frozenset()
        self.health_counts: dict[str, int] = {}
        self.last_health: Optional[HealthEvent] = None
        self.alerts_total = 0

    # ------------------------------------------------------------ pipeline side

    def handle(self, event: Event) -> None:
        """Remember one event. Called on the pipeline thread: appends and assignments only."""
        if isinstance(event, ScoreEvent):
            self.scores.append(event.at_s, event.score)
            self.last_score, self.last_score_at_s = event.score, event.at_s
            self.last_inference_ms, self.rms_dbfs = event.latency_ms, event.rms_dbfs
        elif isinstance(event, AlertEvent):
            self.alert_events.append(event)
            if event.type == "start":
                self.alerts_total += 1
        elif isinstance(event, StateEvent):
            self.state = event.state
        elif isinstance(event, ClipEvent):
            self.clips.append(event)
        elif isinstance(event, HealthEvent):
            counts = dict(self.health_counts)
            counts[event.kind] = counts.get(event.kind, 0) + 1
            self.health_counts = counts  # replaced whole: a reader never sees it change under it
            if event.kind in HEALTH_CONDITIONS:
                self.health_active = self.health_active | {event.kind}
            elif event.kind in _ENDS:
                self.health_active = self.health_active - {_ENDS[event.kind]}
            self.last_health = event

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------ web side

    def score_points(self, since_s: float) -> list[tuple[float, float]]:
        """(UNIX time, score) of the windows scored since ``since_s``, oldest first."""
        t, s = self.scores.arrays(since_s)
        return list(zip(t.tolist(), s.tolist()))

    def score_arrays(self, since_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(UNIX times, scores) of the windows scored since ``since_s``, oldest first."""
        return self.scores.arrays(since_s)

    def alerts(self) -> list[AlertRecord]:
        """Alert episodes, newest first."""
        clips = {c.alert_id: c for c in _snapshot(self.clips)}
        starts: dict[str, AlertEvent] = {}
        ends: dict[str, AlertEvent] = {}
        order: list[str] = []
        for e in _snapshot(self.alert_events):
            key = e.episode or e.id
            if e.type == "start":
                starts[key] = e
                order.append(key)
            else:
                ends[key] = e
                if key not in starts:
                    order.append(key)  # its start fell off the history (or came before this start-up)
        out = []
        for key in reversed(order):
            s, e = starts.get(key), ends.get(key)
            first = s or e
            assert first is not None
            clip = clips.get(s.id) if s is not None else None
            clip_id = clip.id if clip is not None else None
            out.append(AlertRecord(
                episode=key, alert_id=first.id, started_at_s=first.started_at_s,
                ended_at_s=e.ended_at_s if e is not None else None,
                start_score=s.score if s is not None else float("nan"),
                end_score=e.score if e is not None else None, threshold=first.threshold,
                label=first.label, reason=e.reason if e is not None else None, clip_id=clip_id,
                clip_pending=clip_id is None and s is not None and s.clip is not None,
                clip_started_at_s=clip.started_at_s if clip is not None else None))
        return out

    def peak_score(self, record: AlertRecord) -> float:
        """Highest score seen during an episode (from the last hour's scores, else its start and end)."""
        end = record.ended_at_s if record.ended_at_s is not None else time.time()
        t, s = self.scores.arrays(record.started_at_s - 1.0)
        seen = s[t <= end]
        seen = seen[np.isfinite(seen)]
        known = [v for v in (record.start_score, record.end_score) if v is not None and v == v]
        if seen.size:
            known.append(float(seen.max()))
        return max(known) if known else float("nan")
