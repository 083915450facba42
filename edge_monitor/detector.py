"""From window scores to alert events: a pure state machine with no clock and no I/O.

Rules, evaluated once per scored window (time is passed in):

* A window is *hot* when its score exceeds ``threshold``.
* An alert **starts** when at least ``trigger_k`` of the last ``trigger_n`` scored windows
  were hot, and at least ``cooldown_seconds`` have passed since the previous alert ended.
* An alert **ends** after ``clear_windows`` consecutive windows scored at or below
  ``clear_threshold`` (hysteresis: the clear level sits below the trigger level), or
  equally many windows of silence (a machine that stopped is no longer anomalous).
* Silence (RMS below ``silence_dbfs``) and clipping (more than ``clipping_fraction`` of
  samples at full scale) are health events. Such windows are not scored and never
  trigger an alert.
* While the source is lost the state is ``degraded``; an open alert is ended first.
* A score that is NaN or infinite is a health event (``invalid_score``), never a score:
  the window counts as unscored.
* Every ``end`` carries its ``reason``: clear, silence, source_lost, or (from
  ``close_episode``) shutdown.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Optional

from edge_monitor.events import AlertEvent, EndReason, Event, HealthEvent, MachineState, StateEvent, new_alert_id


@dataclasses.dataclass(frozen=True)
class DetectorSettings:
    """Trigger settings. Reloadable at run time (SIGHUP, MQTT threshold command)."""

    threshold: float
    clear_threshold: Optional[float] = None  # default 0.9 x threshold
    trigger_k: int = 3
    trigger_n: int = 5
    clear_windows: int = 5
    cooldown_seconds: float = 30.0
    silence_dbfs: float = -70.0
    clipping_fraction: float = 0.01

    def __post_init__(self) -> None:
        if not 1 <= self.trigger_k <= self.trigger_n:
            raise ValueError(f"need 1 <= trigger_k <= trigger_n, got k={self.trigger_k}, n={self.trigger_n}")
        if self.clear_threshold is not None and self.clear_threshold > self.threshold:
            raise ValueError(f"clear_threshold ({self.clear_threshold}) must not exceed threshold ({self.threshold})")

    @property
    def clear_level(self) -> float:
        """The score at or below which a window counts towards clearing."""
        return 0.9 * self.threshold if self.clear_threshold is None else self.clear_threshold


class Detector:
    """Turns (score, rms, clipping, time) per window into alert, state and health events."""

    def __init__(self, settings: DetectorSettings, machine: str, model: str = "",
                 id_factory: Callable[[], str] = new_alert_id) -> None:
        self.settings = settings
        self.machine = machine
        self.model = model
        self._new_id = id_factory
        self.reset()

    def reset(self) -> None:
        """Back to a fresh normal state (no history, no open alert)."""
        self._hot: collections.deque[tuple[bool, float]] = collections.deque(maxlen=self.settings.trigger_n)
        self._episode: Optional[str] = None
        self._started_at_s = 0.0
        self._peak = 0.0
        self._calm = 0
        self._last_end_s: Optional[float] = None
        self._silent = False
        self._clipping = False
        self._degraded = False
        self._invalid_score = False
        self._published: MachineState = "normal"

    @property
    def state(self) -> MachineState:
        """The state a subscriber sees."""
        if self._degraded:
            return "degraded"
        return "anomaly" if self._episode else "normal"

    @property
    def in_alert(self) -> bool:
        """True while an alert episode is open."""
        return self._episode is not None

    def update_settings(self, settings: DetectorSettings) -> None:
        """Apply new settings without losing an open alert; the trigger history is kept if n is unchanged."""
        old = self.settings
        self.settings = settings
        if settings.trigger_n != old.trigger_n:
            self._hot = collections.deque(self._hot, maxlen=settings.trigger_n)

    def process(self, score: Optional[float], t_s: float, rms_dbfs: float = 0.0,
                clip_fraction: float = 0.0) -> list[Event]:
        """Feed one window ending at UNIX time ``t_s``. ``score`` None means the window wasn't scored."""
        s = self.settings
        events: list[Event] = []
        if self._degraded:
            return events
        silent = rms_dbfs < s.silence_dbfs
        clipping = (not silent) and clip_fraction > s.clipping_fraction
        if silent != self._silent:
            self._silent = silent
            events.append(HealthEvent("silence" if silent else "silence_end", self.machine, t_s,
                                      f"rms {rms_dbfs:.1f} dBFS, floor {s.silence_dbfs:.1f} dBFS"))
        if clipping != self._clipping:
            self._clipping = clipping
            events.append(HealthEvent("clipping" if clipping else "clipping_end", self.machine, t_s,
                                      f"{100 * clip_fraction:.2f}% of samples at full scale"))
        if silent:
            if self._episode:
                self._calm += 1
                if self._calm >= s.clear_windows:
                    events += self._end(t_s, "silence")
            self._hot.clear()
            return events
        if score is not None and not math.isfinite(score):
            if not self._invalid_score:
                self._invalid_score = True
                events.append(HealthEvent("invalid_score", self.machine, t_s,
                                          f"the model produced a score of {score}; the window is not used"))
            return events
        if self._invalid_score and score is not None:
            self._invalid_score = False
            events.append(HealthEvent("invalid_score_end", self.machine, t_s, "scores are finite again"))
        if clipping or score is None:
            return events
        hot = score > s.threshold
        self._hot.append((hot, t_s))
        if self._episode:
            self._peak = max(self._peak, score)
            self._calm = self._calm + 1 if score <= s.clear_level else 0
            if self._calm >= s.clear_windows:
                events += self._end(t_s, "clear")
            return events
        n_hot = sum(1 for h, _ in self._hot if h)
        cooled = self._last_end_s is None or t_s - self._last_end_s >= s.cooldown_seconds
        if n_hot >= s.trigger_k and cooled:
            first_hot = next(t for h, t in self._hot if h)
            self._episode = self._new_id()
            self._started_at_s = first_hot
            self._peak = score
            self._calm = 0
            events.append(AlertEvent(self._new_id(), "start", self.machine, score, s.threshold,
                                     first_hot, None, self.model, self._episode))
            events += self._set_state(t_s)
        return events

    def _end(self, t_s: float, why: EndReason) -> list[Event]:
        assert self._episode is not None
        event = AlertEvent(self._new_id(), "end", self.machine, self._peak, self.settings.threshold,
                           self._started_at_s, t_s, self.model, self._episode, reason=why)
        self._episode = None
        self._last_end_s = t_s
        self._calm = 0
        self._hot.clear()
        return [event] + self._set_state(t_s)

    def _set_state(self, t_s: float) -> list[Event]:
        if self.state == self._published:
            return []
        self._published = self.state
        return [StateEvent(self.machine, self._published, t_s)]

    def set_source_lost(self, lost: bool, t_s: float, detail: str = "") -> list[Event]:
        """Mark the audio source lost (``degraded``) or back; ends an open alert first."""
        if lost == self._degraded:
            return []
        events: list[Event] = []
        if lost:
            if self._episode:
                events += self._end(t_s, "source_lost")
            self._degraded = True
            events.append(HealthEvent("source_lost", self.machine, t_s, detail))
        else:
            self._degraded = False
            self._hot.clear()
            self._silent = self._clipping = False
            events.append(HealthEvent("source_ok", self.machine, t_s, detail))
        return events + self._set_state(t_s)

    def close_episode(self, t_s: float, reason: EndReason = "shutdown") -> list[AlertEvent]:
        """End an open alert now (the monitor is stopping); [] when none is open. The state is left to the caller."""
        if self._episode is None:
            return []
        return [e for e in self._end(t_s, reason) if isinstance(e, AlertEvent)]
