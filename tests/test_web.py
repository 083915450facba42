"""The web page without sockets or threads: WebApp.handle on Request values, real stores on disk."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import pytest

from edge_monitor.events import AlertEvent, ClipEvent, HealthEvent, ScoreEvent, StateEvent
from edge_monitor.web.app import MachinePort, Request, Response, WebApp
from edge_monitor.web.auth import COOKIE_NAME, Auth
from edge_monitor.web.charts import score_chart_svg
from edge_monitor.web.feedback import FeedbackStore
from edge_monitor.web.view import MachineView

NOW = 1_800_000_000.0
CLIP_ID = "fan-1-20270115T080000Z-aaaa1111"


class Harness:
    """A WebApp over one machine whose threshold and MQTT publishing are recorded."""

    def __init__(self, tmp_path: Path, password: Optional[str] = "s3cret", name: str = "Fan 1") -> None:
        self.threshold = 1.5
        self.set_calls: list[float] = []
        self.published: list[dict[str, Any]] = []
        self.view = MachineView("fan-1")
        self.clips = tmp_path / "clips"
        self.clips.mkdir(parents=True)
        self.feedback = FeedbackStore(tmp_path / "state", "fan-1")
        port = MachinePort(id="fan-1", name=name, view=self.view, feedback=self.feedback,
                           threshold=lambda: self.threshold, set_threshold=self._set,
                           stats=lambda: {"source": {"dropped_frames": 7}, "mqtt": {"connected": True,
                                                                                   "outbox_depth": 2}},
                           publish_feedback=self._publish, clips_dir=self.clips)
        self.app = WebApp([port], Auth(password, key=b"k" * 32), clock=lambda: NOW)
        self.cookie: Optional[str] = None

    def _set(self, value: float) -> str:
        self.set_calls.append(value)
        self.threshold = value
        return ""

    def _publish(self, payload: dict[str, Any]) -> bool:
        self.published.append(payload)
        return True

    def request(self, method: str, path: str, form: Optional[dict[str, str]] = None, *, ip: str = "127.0.0.1",
                headers: Optional[dict[str, str]] = None, cookie: bool = True) -> Response:
        body = "&".join(f"{k}={v}" for k, v in (form or {}).items()).encode()
        h = {"host": "127.0.0.1:8099", **(headers or {})}
        if cookie and self.cookie:
            h["cookie"] = f"{COOKIE_NAME}={self.cookie}"
        path, _, query = path.partition("?")
        q = dict(p.split("=", 1) for p in query.split("&")) if query else {}
        resp = self.app.handle(Request(method, path, q, h, body, ip))
        for name, value in resp.headers:
            if name == "Set-Cookie":
                self.cookie = value.split(";")[0].split("=", 1)[1]
        return resp

    def csrf(self, page: str = "/") -> str:
        html = self.request("GET", page).body.decode()
        return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)

    def login(self) -> None:
        token = self.csrf("/login")
        resp = self.request("POST", "/login", {"password": "s3cret", "csrf": token})
        assert resp.status == 303 and ("Location", "/") in resp.headers

    def play_alert(self, with_clip: bool = True) -> AlertEvent:
        v = self.view
        v.handle(StateEvent("fan-1", "normal", NOW - 100))
        for i in range(10):
            v.handle(ScoreEvent("fan-1", NOW - 60 + i, 0.5 + (2.5 if 3 <= i <= 6 else 0.0), 1.5, -30.0, 0.2))
        start = AlertEvent("s1", "start", "fan-1", 2.9, 1.5, NOW - 57, episode="ep-1",
                           clip=str(self.clips / f"{CLIP_ID}.wav") if with_clip else None)
        v.handle(start)
        v.handle(StateEvent("fan-1", "anomaly", NOW - 56))
        if with_clip:
            (self.clips / f"{CLIP_ID}.wav").write_bytes(b"RIFF" + bytes(range(40)))
            v.handle(ClipEvent(CLIP_ID, "s1", "ep-1", "fan-1", "x", NOW - 55, 4.0, 16000, 44, "0" * 64, NOW - 59))
        v.handle(AlertEvent("e1", "end", "fan-1", 0.4, 1.5, NOW - 57, ended_at_s=NOW - 53, episode="ep-1",
                            reason="clear"))
        return start


def test_pages_need_a_login_and_a_wrong_password_is_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.request("GET", "/").status == 303
    assert h.request("GET", "/api/fan-1").status == 401
    token = h.csrf("/login")
    wrong = h.request("POST", "/login", {"password": "guess", "csrf": token})
    assert wrong.status == 401 and b"Wrong password" in wrong.body
    assert h.request("GET", "/").status == 303
    h.login()
    page = h.request("GET", "/")
    assert page.status == 200 and b"Fan 1" in page.body and b"outbox 2" in page.body


def test_every_post_needs_the_sessions_csrf_token(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.request("POST", "/login", {"password": "s3cret"}).status == 403  # login form too
    h.login()
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "2"}).status == 403
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "2", "csrf": "0" * 64}).status == 403
    other = Harness(tmp_path / "other")
    other.login()
    stolen = other.csrf()  # another session's token (same key) is not this session's
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "2", "csrf": stolen}).status == 403
    assert h.set_calls == []


def test_a_forged_or_expired_cookie_is_not_a_session(tmp_path: Path) -> None:
    auth = Auth("pw", key=b"x" * 32)
    good = auth.issue(True, NOW)
    assert auth.verify(good, NOW).authenticated
    body, _, sig = good.rpartition(".")
    assert auth.verify(body.replace(".1", ".0") + "." + sig, NOW) is None
    assert auth.verify(good[:-1] + ("0" if good[-1] != "0" else "1"), NOW) is None
    assert auth.verify(good, NOW + 13 * 3600) is None
    assert Auth("pw", key=b"y" * 32).verify(good, NOW) is None


def test_threshold_form_validates_like_threshold_set(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.login()
    token = h.csrf("/machine/fan-1")
    for bad in ("abc", "0", "-1", "nan", "inf", "2e9", ""):
        resp = h.request("POST", "/machine/fan-1/threshold", {"threshold": bad, "csrf": token})
        assert resp.status == 400 and b"refused" in resp.body, bad
    assert h.set_calls == []
    resp = h.request("POST", "/machine/fan-1/threshold", {"threshold": "2.25", "csrf": token})
    assert resp.status == 303 and h.set_calls == [2.25]
    assert b"2.25" in h.request("GET", "/machine/fan-1?m=threshold-ok").body


def test_alert_history_shows_peak_clip_and_feedback_is_stored_and_published(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.play_alert()
    h.login()
    page = h.request("GET", "/machine/fan-1").body.decode()
    assert f'src="/clips/fan-1/{CLIP_ID}.wav"' in page
    assert "3 <small>/ 1.5</small>" in page  # peak 3.0 from the scores, not the start's 2.9
    token = h.csrf("/machine/fan-1")
    resp = h.request("POST", "/machine/fan-1/feedback",
                     {"episode": "ep-1", "verdict": "false_alarm", "note": "door+slammed", "csrf": token})
    assert resp.status == 303
    assert h.published == [{"machine": "fan-1", "episode": "ep-1", "alert_id": "s1", "verdict": "false_alarm",
                            "note": "door slammed", "at": h.published[0]["at"],
                            "started_at": h.published[0]["started_at"], "clip": f"{CLIP_ID}.wav"}]
    saved = json.loads((tmp_path / "state" / "feedback-fan-1.json").read_text())
    assert saved["alerts"]["ep-1"]["verdict"] == "false_alarm"
    assert FeedbackStore(tmp_path / "state", "fan-1").counts() == {"false_alarm": 1, "confirmed": 0}
    assert "1 false alarm(s)" in h.request("GET", "/").body.decode()
    for bad in ({"episode": "nope", "verdict": "confirmed"}, {"episode": "ep-1", "verdict": "maybe"}):
        assert h.request("POST", "/machine/fan-1/feedback", {**bad, "csrf": token}).status == 400
    assert len(h.published) == 1


def test_clips_are_served_only_from_the_clips_folder(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.play_alert()
    (tmp_path / "secret.wav").write_bytes(b"no")
    h.login()
    ok = h.request("GET", f"/clips/fan-1/{CLIP_ID}.wav")
    assert ok.status == 200 and ok.content_type == "audio/wav" and ok.body.startswith(b"RIFF")
    part = h.request("GET", f"/clips/fan-1/{CLIP_ID}.wav", headers={"range": "bytes=4-7"})
    assert part.status == 206 and part.body == bytes(range(4)) and ("Content-Range", "bytes 4-7/44") in part.headers
    for bad in ("../secret.wav", "..%2Fsecret.wav", "secret.wav", f"{CLIP_ID}.txt", "/etc/passwd"):
        assert h.request("GET", f"/clips/fan-1/{bad}").status == 404, bad
    assert h.request("GET", f"/clips/other/{CLIP_ID}.wav").status == 404
    assert Harness(tmp_path / "b").request("GET", f"/clips/fan-1/{CLIP_ID}.wav").status == 401


def test_without_a_password_only_this_computer_is_answered(tmp_path: Path) -> None:
    h = Harness(tmp_path, password=None)
    assert h.request("GET", "/").status == 200
    assert h.request("GET", "/", headers={"host": "evil.example:8099"}).status == 403  # DNS rebinding
    assert h.request("GET", "/", headers={"x-forwarded-for": "10.0.0.9"}).status == 403  # behind a proxy
    assert h.request("GET", "/", ip="10.0.0.9").status == 403
    token = h.csrf("/machine/fan-1")
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "3"}).status == 403
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "3", "csrf": token}).status == 303
    assert h.request("POST", "/machine/fan-1/threshold", {"threshold": "4", "csrf": token},
                     headers={"origin": "http://evil.example"}).status == 403
    assert h.set_calls == [3.0]


def test_metrics_open_on_localhost_and_need_the_password_elsewhere(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.play_alert()
    h.view.handle(HealthEvent("clipping", "fan-1", NOW))
    local = h.request("GET", "/metrics", cookie=False)
    text = local.body.decode()
    assert local.status == 200 and local.content_type.startswith("text/plain; version=0.0.4")
    assert 'edge_monitor_alerts_total{machine="fan-1"} 1' in text
    assert 'edge_monitor_state{machine="fan-1",state="normal"} 0' in text  # the last state seen was anomaly
    assert 'edge_monitor_health_events_total{machine="fan-1",kind="clipping"} 1' in text
    assert 'edge_monitor_dropped_frames_total{machine="fan-1"} 7' in text
    assert 'edge_monitor_outbox_depth{machine="fan-1"} 2' in text
    assert 'edge_monitor_threshold{machine="fan-1"} 1.5' in text
    assert h.request("GET", "/metrics", ip="10.1.1.1", cookie=False).status == 401
    assert h.request("GET", "/metrics", headers={"x-forwarded-for": "10.1.1.1"}, cookie=False).status == 401
    basic = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
    assert h.request("GET", "/metrics", ip="10.1.1.1", headers={"authorization": basic}).status == 200
    wrong = "Basic " + base64.b64encode(b"prometheus:nope").decode()
    assert h.request("GET", "/metrics", ip="10.1.1.1", headers={"authorization": wrong}).status == 401


def test_names_are_escaped(tmp_path: Path) -> None:
    h = Harness(tmp_path, password=None, name="<script>alert(1)</script>")
    body = h.request("GET", "/").body.decode()
    assert "<script>alert(1)" not in body and "&lt;script&gt;alert(1)" in body


def test_health_conditions_start_and_end(tmp_path: Path) -> None:
    v = MachineView("fan-1")
    v.handle(HealthEvent("silence", "fan-1", NOW))
    v.handle(HealthEvent("source_lost", "fan-1", NOW))
    assert v.health_active == {"silence", "source_lost"}
    v.handle(HealthEvent("source_ok", "fan-1", NOW))
    v.handle(HealthEvent("silence_end", "fan-1", NOW))
    assert v.health_active == frozenset() and v.health_counts["silence"] == 1


def test_chart_draws_scores_and_the_threshold_line() -> None:
    points = [(NOW - 3000 + i, 0.5 + (i % 7) * 0.1) for i in range(600)]
    svg = score_chart_svg(points, 1.2, NOW, spans=[(NOW - 2900, NOW - 2800)])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    line = root.find(f"{ns}line[@class='threshold']")
    assert line is not None and line.get("y1") == line.get("y2")
    poly = root.find(f"{ns}polyline[@class='score']")
    ys = [float(p.split(",")[1]) for p in poly.get("points").split()]
    assert all(y > float(line.get("y1")) for y in ys)  # every score below the threshold is drawn below its line
    assert root.find(f"{ns}rect[@class='alert-span']") is not None
    assert "no scores yet" in score_chart_svg([], 1.2, NOW)


def test_an_unreadable_feedback_file_starts_empty_and_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "feedback-fan-1.json").write_text("{not json")
    store = FeedbackStore(tmp_path, "fan-1")
    assert store.counts() == {"false_alarm": 0, "confirmed": 0}
    store.record("ep", "confirmed", "bearing")
    assert FeedbackStore(tmp_path, "fan-1").get("ep")["note"] == "bearing"
    with pytest.raises(ValueError):
        store.record("ep", "confirmed", "x" * 501)


def test_train_feedback_adds_the_false_alarm_clips_to_the_normal_audio(tmp_path: Path) -> None:
    from edge_monitor.cli import add_feedback_normals, build_parser

    state = tmp_path / "state"
    (state / "clips").mkdir(parents=True)
    kept = state / "clips" / "fan-1-20270115T080000Z-aaaa1111.wav"
    kept.write_bytes(b"RIFF")
    elsewhere = tmp_path / "other-clips" / "fan-2-20270115T090000Z-bbbb2222.wav"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"RIFF")
    FeedbackStore(state, "fan-1").record("ep-a", "false_alarm", clip=kept.name)
    FeedbackStore(state, "fan-1").record("ep-b", "confirmed", clip="fan-1-20270115T081000Z-cccc3333.wav")
    FeedbackStore(state, "fan-1").record("ep-c", "false_alarm", clip="fan-1-20270115T082000Z-dddd4444.wav")
    FeedbackStore(state, "fan-2").record("ep-d", "false_alarm", clip=elsewhere.name, clip_path=str(elsewhere))
    args = build_parser().parse_args(["train", "--normal", str(tmp_path / "normal"), "--out", "m.tflite",
                                      "--feedback", str(state)])
    notes = add_feedback_normals(args)
    assert args.normal == [str(tmp_path / "normal")]                   # train-only: never held out
    assert sorted(args.feedback_clips) == sorted([str(kept), str(elsewhere)])  # the confirmed fault is not added
    assert any("ep-c" in n and "deleted" in n for n in notes)
    assert notes[-1].endswith("2 false-alarm clip(s) added to the normal audio")


def test_api_answers_every_machine_at_once_for_the_overview(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.request("GET", "/api").status == 401  # like /api/<machine>: no login page for a script
    h.login()
    h.view.handle(ScoreEvent("fan-1", NOW - 1, 0.75, 1.5, -30.0, 0.2))
    resp = h.request("GET", "/api")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert json.loads(resp.body) == {"machines": [json.loads(h.request("GET", "/api/fan-1").body)]}
