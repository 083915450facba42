"""The detector state machine: k-of-n trigger, hysteresis, cooldown, health events, degraded state, ids."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Sequence
from typing import Optional

import pytest

from edge_monitor.detector import Detector, DetectorSettings
from edge_monitor.events import AlertEvent, Event, HealthEvent, StateEvent

T0_S = 1_700_000_000.0
STEP_S = 0.5
LOUD_DBFS = -20.0
QUIET_DBFS = -90.0


def _settings(**kw: float) -> DetectorSettings:
    base = dict(threshold=1.0, trigger_k=3, trigger_n=5, clear_windows=2, cooldown_seconds=10.0)
    base.update(kw)
    return DetectorSettings(**base)  # type: ignore[arg-type]


def _counter_ids() -> itertools.count:
    return itertools.count(1)


def _detector(**kw: float) -> Detector:
    counter = _counter_ids()
    return Detector(_settings(**kw), "fan-1", "tiny@1#abcdef12", id_factory=lambda: f"id-{next(counter)}")


class Clock:
    """Window end times, STEP_S apart."""

    def __init__(self) -> None:
        self.t_s = T0_S

    def next(self) -> float:
        self.t_s += STEP_S
        return self.t_s


def _feed(det: Detector, clock: Clock, scores: Sequence[Optional[float]], rms_dbfs: float = LOUD_DBFS,
          clip_fraction: float = 0.0) -> list[tuple[int, Event]]:
    """Feed scores; return (index in ``scores``, event) for every event."""
    out = []
    for i, s in enumerate(scores):
        out += [(i, e) for e in det.process(s, clock.next(), rms_dbfs, clip_fraction)]
    return out


def _alerts(events: list[tuple[int, Event]]) -> list[tuple[int, AlertEvent]]:
    return [(i, e) for i, e in events if isinstance(e, AlertEvent)]


# ---------------------------------------------------------------- trigger

def test_three_of_five_hot_windows_start_an_alert() -> None:
    det, clock = _detector(), Clock()
    events = _feed(det, clock, [2.0, 0.1, 2.0, 0.1, 3.0, 0.1])
    alerts = _alerts(events)
    assert [(i, a.type) for i, a in alerts] == [(4, "start")]
    start = alerts[0][1]
    assert start.started_at_s == T0_S + STEP_S  # the first hot window, not the triggering one
    assert start.score == 3.0 and start.threshold == 1.0 and start.machine == "fan-1"
    assert det.state == "anomaly" and det.in_alert
    assert [e.state for _, e in events if isinstance(e, StateEvent)] == ["anomaly"]


def test_hot_windows_spread_wider_than_n_never_trigger() -> None:
    det, clock = _detector(), Clock()
    events = _feed(det, clock, [2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0])
    assert _alerts(events) == [] and det.state == "normal"


def test_score_equal_to_threshold_is_not_hot() -> None:
    det, clock = _detector(trigger_k=1, trigger_n=1), Clock()
    assert _alerts(_feed(det, clock, [1.0, 1.0, 1.0])) == []
    assert [a.type for _, a in _alerts(_feed(det, clock, [1.0001]))] == ["start"]


# ---------------------------------------------------------------- ending

def test_hysteresis_uses_clear_threshold() -> None:
    det, clock = _detector(clear_threshold=0.5, clear_windows=3), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    assert det.in_alert
    # below the trigger level but above the clear level: the alert stays open
    events = _feed(det, clock, [0.9, 0.8, 0.9, 0.7, 0.6, 0.9])
    assert _alerts(events) == [] and det.in_alert
    # two calm windows, one in the band (resets the count), then three calm ones
    events = _feed(det, clock, [0.4, 0.5, 0.8, 0.3, 0.2, 0.1])
    alerts = _alerts(events)
    assert [(i, a.type) for i, a in alerts] == [(5, "end")]
    end = alerts[0][1]
    assert end.score == 2.0  # the peak of the episode
    assert end.ended_at_s == clock.t_s
    assert det.state == "normal"


def test_default_clear_level_is_ninety_percent_of_threshold() -> None:
    assert _settings().clear_level == pytest.approx(0.9)
    assert _settings(clear_threshold=0.3).clear_level == 0.3


def test_clear_windows_counts_consecutive_calm_windows() -> None:
    det, clock = _detector(clear_windows=4, clear_threshold=0.5), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    assert _alerts(_feed(det, clock, [0.1, 0.1, 0.1, 2.0, 0.1, 0.1, 0.1])) == []
    assert [a.type for _, a in _alerts(_feed(det, clock, [0.1]))] == ["end"]


def test_cooldown_delays_the_next_alert() -> None:
    det, clock = _detector(cooldown_seconds=10.0, clear_windows=1), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    end_events = _alerts(_feed(det, clock, [0.0]))
    assert [a.type for _, a in end_events] == ["end"]
    ended_at = end_events[0][1].ended_at_s
    # hot again at once: within the 10 s cooldown (20 windows) nothing starts
    events = _feed(det, clock, [2.0] * 19)
    assert _alerts(events) == [] and clock.t_s - ended_at < 10.0
    events = _feed(det, clock, [2.0])
    assert clock.t_s - ended_at >= 10.0
    assert [a.type for _, a in _alerts(events)] == ["start"]


def test_zero_cooldown_allows_immediate_retrigger() -> None:
    det, clock = _detector(cooldown_seconds=0.0, clear_windows=1), Clock()
    events = _feed(det, clock, [2.0, 2.0, 2.0, 0.0, 2.0, 2.0, 2.0])
    assert [(i, a.type) for i, a in _alerts(events)] == [(2, "start"), (3, "end"), (6, "start")]


# ---------------------------------------------------------------- health

def test_silence_is_a_health_event_and_never_an_alert() -> None:
    det, clock = _detector(), Clock()
    events = _feed(det, clock, [5.0] * 10, rms_dbfs=QUIET_DBFS)
    health = [(i, e) for i, e in events if isinstance(e, HealthEvent)]
    assert [(i, e.kind) for i, e in health] == [(0, "silence")]
    assert "-90.0 dBFS" in health[0][1].detail and "-70.0 dBFS" in health[0][1].detail
    assert _alerts(events) == [] and det.state == "normal"
    events = _feed(det, clock, [0.1], rms_dbfs=LOUD_DBFS)
    assert [e.kind for _, e in events if isinstance(e, HealthEvent)] == ["silence_end"]


def test_silence_clears_the_trigger_history() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0])
    _feed(det, clock, [None], rms_dbfs=QUIET_DBFS)
    assert _alerts(_feed(det, clock, [2.0, 2.0])) == []
    assert [a.type for _, a in _alerts(_feed(det, clock, [2.0]))] == ["start"]


def test_silence_ends_an_open_alert_after_clear_windows() -> None:
    det, clock = _detector(clear_windows=3), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    events = _feed(det, clock, [None, None, None], rms_dbfs=QUIET_DBFS)
    assert [(i, a.type) for i, a in _alerts(events)] == [(2, "end")]
    assert det.state == "normal"


def test_clipping_is_a_health_event_and_its_windows_are_not_scored() -> None:
    det, clock = _detector(), Clock()
    events = _feed(det, clock, [5.0] * 6, clip_fraction=0.05)
    assert [(i, e.kind) for i, e in events if isinstance(e, HealthEvent)] == [(0, "clipping")]
    assert "5.00% of samples" in [e for _, e in events if isinstance(e, HealthEvent)][0].detail
    assert _alerts(events) == []
    events = _feed(det, clock, [0.1], clip_fraction=0.0)
    assert [e.kind for _, e in events if isinstance(e, HealthEvent)] == ["clipping_end"]


def test_unscored_window_changes_nothing() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0])
    assert _feed(det, clock, [None, None, None]) == []
    assert [a.type for _, a in _alerts(_feed(det, clock, [2.0]))] == ["start"]


# ---------------------------------------------------------------- degraded source

def test_source_lost_ends_the_alert_and_degrades() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    t_lost = clock.next()
    events = det.set_source_lost(True, t_lost, "device gone")
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    assert [a.type for a in alerts] == ["end"] and alerts[0].ended_at_s == t_lost
    assert [(e.kind, e.detail) for e in events if isinstance(e, HealthEvent)] == [("source_lost", "device gone")]
    assert [e for e in events if isinstance(e, StateEvent)][-1].state == "degraded"
    assert det.state == "degraded" and not det.in_alert
    assert det.set_source_lost(True, clock.next()) == []  # idempotent
    assert _feed(det, clock, [9.0] * 10) == []  # nothing is scored while degraded
    events = det.set_source_lost(False, clock.next(), "back")
    assert [e.kind for e in events if isinstance(e, HealthEvent)] == ["source_ok"]
    assert [e.state for e in events if isinstance(e, StateEvent)] == ["normal"]
    assert det.state == "normal"


def test_source_lost_without_alert() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [0.1, 2.0, 2.0])  # two hot windows: history is dropped on recovery
    events = det.set_source_lost(True, clock.next())
    assert [type(e).__name__ for e in events] == ["HealthEvent", "StateEvent"]
    det.set_source_lost(False, clock.next())
    assert _alerts(_feed(det, clock, [2.0, 2.0])) == []


# ---------------------------------------------------------------- settings

def test_update_settings_keeps_the_open_alert() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    det.update_settings(_settings(threshold=3.0, clear_windows=2, trigger_n=7))
    assert det.in_alert and det.state == "anomaly"
    assert _alerts(_feed(det, clock, [2.9, 2.8])) == []  # above the new clear level (2.7)
    alerts = _alerts(_feed(det, clock, [1.0, 1.0]))
    assert [a.type for _, a in alerts] == ["end"] and alerts[0][1].threshold == 3.0


def test_update_settings_keeps_trigger_history() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0])
    det.update_settings(_settings(cooldown_seconds=1.0))
    assert [a.type for _, a in _alerts(_feed(det, clock, [2.0]))] == ["start"]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="trigger_k <= trigger_n"):
        _settings(trigger_k=6, trigger_n=5)
    with pytest.raises(ValueError, match=r"clear_threshold \(2.0\) must not exceed threshold \(1.0\)"):
        _settings(clear_threshold=2.0)


def test_reset_forgets_an_open_alert() -> None:
    det, clock = _detector(), Clock()
    _feed(det, clock, [2.0, 2.0, 2.0])
    det.reset()
    assert det.state == "normal" and not det.in_alert


# ---------------------------------------------------------------- ids and payloads

def test_start_and_end_share_episode_and_ids_are_unique() -> None:
    det = Detector(_settings(cooldown_seconds=0.0, clear_windows=1), "fan-1", "m")  # real UUID factory
    clock = Clock()
    events = _feed(det, clock, [2.0, 2.0, 2.0, 0.0] * 3)
    alerts = [a for _, a in _alerts(events)]
    assert [a.type for a in alerts] == ["start", "end"] * 3
    for start, end in zip(alerts[0::2], alerts[1::2]):
        assert start.episode and start.episode == end.episode
        assert end.started_at_s == start.started_at_s
    ids = [a.id for a in alerts]
    episodes = {a.episode for a in alerts}
    assert len(set(ids)) == 6 and len(episodes) == 3 and not (set(ids) & episodes)
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(uuid_re.match(i) for i in ids)


def _parse_utc(text: str) -> float:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_alert_payload_fields() -> None:
    det, clock = _detector(clear_windows=1), Clock()
    events = _feed(det, clock, [2.0, 2.0, 2.5, 0.0])
    start, end = [a for _, a in _alerts(events)]
    p = start.to_payload()
    assert set(p) == {"id", "type", "machine", "score", "threshold", "started_at", "model", "episode"}
    assert p["type"] == "start" and p["machine"] == "fan-1" and p["model"] == "tiny@1#abcdef12"
    assert p["score"] == 2.5 and p["threshold"] == 1.0
    assert _parse_utc(p["started_at"]) == pytest.approx(T0_S + STEP_S, abs=1e-3)
    q = end.to_payload()
    assert set(q) == set(p) | {"ended_at", "reason"}
    assert q["reason"] == "clear"
    assert q["type"] == "end" and q["episode"] == p["episode"] and q["id"] != p["id"]
    assert _parse_utc(q["ended_at"]) == pytest.approx(clock.t_s, abs=1e-3)
    assert q["started_at"] == p["started_at"]
    assert "clip" in end.with_clip("/var/lib/edge-monitor/clips/x.wav").to_payload()


def test_health_and_state_payloads_are_utc() -> None:
    det, clock = _detector(), Clock()
    events = _feed(det, clock, [None], rms_dbfs=QUIET_DBFS) + _feed(det, clock, [2.0, 2.0, 2.0])
    for _, e in events:
        if isinstance(e, (HealthEvent, StateEvent)):
            _parse_utc(e.to_payload()["at"])
