"""The topics of one machine and how payloads are written as JSON.

Topics (``<prefix>`` defaults to ``edge-monitor/<site>/<machine>``; docs/mqtt.md
has payload examples):

- ``<prefix>/status``           retained ``online``/``offline`` (the will is ``offline``)
- ``<prefix>/state``            retained ``normal``/``anomaly``/``degraded``
- ``<prefix>/alert``            QoS 1, not retained, JSON from ``AlertEvent.to_payload()``
- ``<prefix>/telemetry``        JSON handed in by the daemon, plus this sink's counters
- ``<prefix>/health``           JSON of each health event (QoS 0, not retained; sent while connected)
- ``<prefix>/threshold/set``    (subscribed) a new threshold, as a plain number
- ``<prefix>/threshold/state``  retained current threshold, as a plain number
- ``<prefix>/threshold/error``  JSON describing a rejected ``threshold/set``
- ``<prefix>/score``            the latest window score, a plain number, at most every ``score_seconds``
- ``<prefix>/clip``             QoS 1 JSON announcing a complete evidence clip (id, alert id, size, sha256)
- ``<prefix>/clip/get``         (subscribed) a clip id; answered on ``<prefix>/clip/data/<id>`` (the WAV
                                bytes, QoS 1) or ``<prefix>/clip/error`` (JSON)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from edge_monitor.config import MachineConfig


@dataclasses.dataclass(frozen=True)
class Topics:
    """Every topic of one machine, derived from its prefix."""

    prefix: str

    @property
    def status(self) -> str:
        """Retained online/offline."""
        return f"{self.prefix}/status"

    @property
    def state(self) -> str:
        """Retained normal/anomaly/degraded."""
        return f"{self.prefix}/state"

    @property
    def alert(self) -> str:
        """QoS 1 alert JSON."""
        return f"{self.prefix}/alert"

    @property
    def telemetry(self) -> str:
        """Periodic telemetry JSON."""
        return f"{self.prefix}/telemetry"

    @property
    def threshold_set(self) -> str:
        """Subscribed: new threshold value."""
        return f"{self.prefix}/threshold/set"

    @property
    def threshold_state(self) -> str:
        """Retained current threshold."""
        return f"{self.prefix}/threshold/state"

    @property
    def threshold_error(self) -> str:
        """Rejected threshold/set messages."""
        return f"{self.prefix}/threshold/error"

    @property
    def health(self) -> str:
        """Health events as JSON."""
        return f"{self.prefix}/health"

    @property
    def score(self) -> str:
        """The latest score as a plain number."""
        return f"{self.prefix}/score"

    @property
    def clip(self) -> str:
        """Announcements of complete clips (JSON)."""
        return f"{self.prefix}/clip"

    @property
    def clip_get(self) -> str:
        """Subscribed: requests for a clip's bytes (payload: the clip id)."""
        return f"{self.prefix}/clip/get"

    def clip_data(self, clip_id: str) -> str:
        """The answer to a ``clip/get``: the WAV file's bytes."""
        return f"{self.prefix}/clip/data/{clip_id}"

    @property
    def clip_error(self) -> str:
        """A ``clip/get`` that cannot be answered (JSON)."""
        return f"{self.prefix}/clip/error"

    @property
    def feedback(self) -> str:
        """A person's verdict on an alert, from the web page (JSON, QoS 1, not retained)."""
        return f"{self.prefix}/feedback"


def default_prefix(machine: MachineConfig) -> str:
    """``edge-monitor/<site>/<machine>``."""
    return f"edge-monitor/{machine.site}/{machine.id}"


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_default(value: Any) -> Any:
    """numpy scalars and arrays, and anything else as its string."""
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    return str(value)
