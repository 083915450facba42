"""Events that flow from the detector to the sinks.

Every event is an immutable value. Sinks turn them into MQTT messages, console
lines or files; nothing else in the pipeline knows how they are delivered.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid
from typing import Any, Literal, Optional, Union

AlertType = Literal["start", "end"]
MachineState = Literal["normal", "anomaly", "degraded", "unknown"]
"""``unknown``: the monitor stopped listening (a clean stop); nothing is known about the machine until it is back."""
EndReason = Literal[
    "clear",        # enough calm windows in a row
    "silence",      # the machine went quiet (stopped)
    "source_lost",  # the audio device or serial link went away
    "shutdown",     # the monitor was stopped during the alert
    "restart",      # the monitor died during the alert (kill -9, power cut); closed by the next start
]
HealthKind = Literal[
    "silence",        # RMS below the configured floor: not scored, not an anomaly
    "silence_end",
    "clipping",       # too many samples at full scale
    "clipping_end",
    "source_lost",    # the audio device or serial port went away
    "source_ok",      # it came back
    "wrong_machine",  # a machine-type classifier disagrees with the configured type
    "invalid_samples",      # the source delivered NaN or infinite samples: not scored
    "invalid_samples_end",
    "invalid_score",        # the model produced a NaN or infinite score: not used
    "invalid_score_end",
    "reload_failed",        # SIGHUP: the new config was refused; the old one keeps running
    "reload_restart_needed",  # SIGHUP: some changed settings apply only after a restart
    "mqtt_error",           # the broker cannot be reached or refuses the connection
    "mqtt_ok",              # connected again after an mqtt_error
]


def utc_iso(ts_s: float) -> str:
    """Format a UNIX time (seconds) as ISO 8601 UTC with millisecond precision."""
    dt = _dt.datetime.fromtimestamp(ts_s, tz=_dt.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_alert_id() -> str:
    """A fresh random UUID4 string: the stable identity of one alert episode."""
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class AlertEvent:
    """Start or end of an anomaly episode. Start and end share ``episode``; ``id`` is unique per message."""

    id: str
    type: AlertType
    machine: str
    score: float
    threshold: float
    started_at_s: float                 # UNIX time (s) of the first anomalous window
    ended_at_s: Optional[float] = None  # UNIX time (s), only for ``type == "end"``
    model: str = ""
    episode: str = ""
    clip: Optional[str] = None
    label: Optional[str] = None         # classifier bundles: the alert label with the most probability
    reason: Optional[EndReason] = None  # why the episode ended; only for ``type == "end"``

    def to_payload(self) -> dict[str, Any]:
        """The JSON object published on ``<prefix>/alert`` (see DESIGN.md)."""
        payload: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "machine": self.machine,
            "score": round(float(self.score), 6),
            "threshold": round(float(self.threshold), 6),
            "started_at": utc_iso(self.started_at_s),
            "model": self.model,
            "episode": self.episode,
        }
        if self.ended_at_s is not None:
            payload["ended_at"] = utc_iso(self.ended_at_s)
        if self.clip is not None:
            payload["clip"] = self.clip
        if self.label is not None:
            payload["label"] = self.label
        if self.reason is not None:
            payload["reason"] = self.reason
        return payload

    def with_clip(self, clip: Optional[str]) -> AlertEvent:
        """A copy carrying the evidence clip path."""
        return dataclasses.replace(self, clip=clip)


@dataclasses.dataclass(frozen=True)
class HealthEvent:
    """A condition of the input, not of the machine: silence, clipping, a lost device."""

    kind: HealthKind
    machine: str
    at_s: float  # UNIX time (s)
    detail: str = ""

    def to_payload(self) -> dict[str, Any]:
        """JSON form for logs and telemetry."""
        return {"kind": self.kind, "machine": self.machine, "at": utc_iso(self.at_s), "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class StateEvent:
    """The machine's published state changed."""

    machine: str
    state: MachineState
    at_s: float  # UNIX time (s)

    def to_payload(self) -> dict[str, Any]:
        """JSON form for logs."""
        return {"machine": self.machine, "state": self.state, "at": utc_iso(self.at_s)}


@dataclasses.dataclass(frozen=True)
class ScoreEvent:
    """One scored window. Not published per window; sinks aggregate it into telemetry."""

    machine: str
    at_s: float       # UNIX time (s) of the window's end
    score: float
    threshold: float
    rms_dbfs: float
    latency_ms: float  # feature + inference time for this window
    probabilities: Optional[tuple[tuple[str, float], ...]] = None  # classifier bundles: (label, probability) pairs

    def to_payload(self) -> dict[str, Any]:
        """JSON form for ``replay --scores``: time, score, level and, for classifiers, label probabilities."""
        payload: dict[str, Any] = {"machine": self.machine, "t": round(self.at_s, 3), "score": round(self.score, 6),
                                   "rms_dbfs": round(self.rms_dbfs, 1)}
        if self.probabilities is not None:
            payload["label"] = max(self.probabilities, key=lambda lp: lp[1])[0]
            payload["probabilities"] = {label: round(p, 4) for label, p in self.probabilities}
        return payload


@dataclasses.dataclass(frozen=True)
class ClipEvent:
    """An evidence clip is complete on disk (written, fsynced and renamed): announce it."""

    id: str               # the clip's id: its file name without ``.wav``
    alert_id: str         # the ``start`` alert the clip belongs to
    episode: str
    machine: str
    path: str             # where it lies on the gateway
    at_s: float           # UNIX time (s) the file was complete
    duration_s: float     # audio length (s)
    sample_rate_hz: int
    size_bytes: int       # the WAV file's size
    sha256: str           # hex digest of the whole file
    started_at_s: float   # UNIX time (s) of the clip's first sample

    def to_payload(self) -> dict[str, Any]:
        """The JSON object published on ``<prefix>/clip``."""
        return {"id": self.id, "alert_id": self.alert_id, "episode": self.episode, "machine": self.machine,
                "path": self.path, "at": utc_iso(self.at_s), "started_at": utc_iso(self.started_at_s),
                "duration_s": round(self.duration_s, 3), "sample_rate_hz": self.sample_rate_hz,
                "size_bytes": self.size_bytes, "sha256": self.sha256}


Event = Union[AlertEvent, HealthEvent, StateEvent, ScoreEvent, ClipEvent]
