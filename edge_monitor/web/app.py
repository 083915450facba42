"""The web page's requests and answers, without sockets or threads (``server.py`` adds those).

``WebApp.handle(Request) -> Response`` is the whole site: login, the overview, a page
per machine, clips, the threshold form, feedback, a small JSON API the page polls,
and ``/metrics``. Every POST needs the session's CSRF token; every page but the login
form needs a logged-in session when a password is configured. Without a password the
page answers this computer only: requests naming another host (DNS rebinding) or
arriving through a proxy (``X-Forwarded-For``) are refused.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import json
import logging
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from edge_monitor.events import utc_iso
from edge_monitor.features import FeatureSpec
from edge_monitor.threshold_store import THRESHOLD_MAX, is_valid_threshold
from edge_monitor.web import metrics as prom
from edge_monitor.web.auth import COOKIE_NAME, Auth, Session
from edge_monitor.web.charts import score_chart_svg
from edge_monitor.web.feedback import MAX_NOTE_CHARS, VERDICTS, FeedbackError, FeedbackStore
from edge_monitor.web.spectrogram import SpectrogramCache, SpectrogramError, marks_in_clip, placeholder_svg
from edge_monitor.web.view import HISTORY_SECONDS, AlertRecord, MachineView

_LOGGER = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 64 * 1024
"""Forms are a few hundred bytes; anything larger is refused before it is read."""
CLIP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}-[0-9]{8}T[0-9]{6}Z-[0-9A-Za-z]{1,8}$")
"""A clip id as the clip recorder names clips; nothing else is ever opened."""
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
]
VERDICT_TEXT = {"false_alarm": "false alarm", "confirmed": "confirmed fault"}
MESSAGES = {
    "threshold-ok": "Threshold changed and saved.",
    "threshold-unsaved": "Threshold applied, but it could not be saved (see the daemon's log).",
    "feedback-ok": "Feedback saved and published on MQTT.",
    "feedback-local": "Feedback saved; it was not published (MQTT is off or not connected).",
}
MAX_EVENT_STREAMS = 4
"""Live-score streams served at once; beyond that a page polls (the server has 16 connections in all)."""
EVENT_STREAM_SECONDS = 600.0
"""A stream ends after this long and the browser reconnects (its session is checked again)."""
EVENT_CHECK_SECONDS = 0.2
"""How often a stream looks for a new score (the pipeline takes no lock and signals nothing)."""
EVENT_KEEPALIVE_SECONDS = 15.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request."""

    method: str
    path: str                     # without the query string
    query: dict[str, str]
    headers: dict[str, str]       # lower-case names
    body: bytes
    client_ip: str


@dataclasses.dataclass
class Response:
    """One HTTP answer."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    stream: Optional[EventStream] = None
    """Sent after the headers, chunk by chunk, until it ends or the client goes (no Content-Length)."""


class EventStream:
    """Server-sent events of one machine's live data; ``close()`` (always called by the server) frees its slot."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None]) -> None:
        """Stream ``chunks``; ``release`` is called once, on close."""
        self._chunks = chunks
        self._release: Optional[Callable[[], None]] = release

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """End the stream and free its slot. Safe to call twice."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclasses.dataclass
class MachinePort:
    """What the page may read and do on one machine (the daemon wires it to the Machine and its sinks)."""

    id: str
    name: str
    view: MachineView
    feedback: FeedbackStore
    threshold: Callable[[], float]                        # the threshold in force
    set_threshold: Callable[[float], str]                 # apply + persist + announce; "" or a warning; ValueError
    stats: Callable[[], dict[str, Any]] = lambda: {}      # {"source": {...}, "mqtt": {...} or None}
    publish_feedback: Callable[[dict[str, Any]], bool] = lambda payload: False
    clips_dir: Optional[Path] = None
    hop_seconds: float = 0.5
    spec: FeatureSpec = dataclasses.field(default_factory=FeatureSpec)  # the model's features (spectrograms)


def esc(value: Any) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value), quote=True)


def _time(ts: Optional[float]) -> str:
    if ts is None:
        return "—"
    return utc_iso(ts).replace("T", " ").replace("Z", " UTC")


def _score(v: Optional[float]) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.4g}"


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class WebApp:
    """Every page and endpoint of the gateway's site."""

    def __init__(self, machines: list[MachinePort], auth: Auth, *, secure_cookies: bool = False,
                 clock: Callable[[], float] = time.time, trusted_proxies: Sequence[str] = ()) -> None:
        """Serve ``machines``; ``secure_cookies`` when served over HTTPS.

        ``trusted_proxies`` (addresses or CIDR networks, as ``web.trusted_proxies``): requests
        from these carry a believable ``X-Forwarded-Proto`` (``https``: Secure cookies) and
        ``X-Forwarded-For`` (the client named in the log). From anywhere else both are ignored.
        """
        self.machines = {m.id: m for m in machines}
        self.auth = auth
        self.secure_cookies = secure_cookies
        self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self.clock = clock
        self.spectrograms = SpectrogramCache()
        self.stopping = threading.Event()
        """Set when the server closes: live streams end."""
        self._streams = threading.BoundedSemaphore(MAX_EVENT_STREAMS)

    # ------------------------------------------------------------ dispatch

    def handle(self, req: Request) -> Response:
        """Answer one request. Never raises for anything a client sends."""
        try:
            resp = self._handle(req)
        except Exception:  # noqa: BLE001 - a bug in one page must not take the server down
            _LOGGER.exception("web: %s %s failed", req.method, req.path)
            resp = self._text(500, "internal error (see the daemon's log)")
        resp.headers.extend(_SECURITY_HEADERS)
        return resp

    def _handle(self, req: Request) -> Response:
        local = req.client_ip in ("127.0.0.1", "::1") or req.client_ip.startswith("127.")
        forwarded = "x-forwarded-for" in req.headers or "forwarded" in req.headers
        if not self.auth.login_required:
            if forwarded or not local:
                return self._text(403, "This page has no password, so it answers this computer only. "
                                       "Set web.password_file to reach it through a proxy or the network.")
            if _host_name(req.headers.get("host", "")) not in _LOCAL_HOSTS:
                return self._text(403, "Host header is not this computer (web.password_file is not set)")
        session = self.auth.verify(_cookie(req.headers.get("cookie", ""), COOKIE_NAME), self.clock())
        new_cookie = None
        if session is None:
            new_cookie = self.auth.issue(False, self.clock())
            session = self.auth.verify(new_cookie, self.clock())
            assert session is not None
        resp = self._route(req, session, local and not forwarded)
        if new_cookie is not None and not any(h[0] == "Set-Cookie" for h in resp.headers):
            resp.headers.append(("Set-Cookie", self._cookie_header(new_cookie, req)))
        return resp

    def _from_trusted_proxy(self, req: Request) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(req.client_ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted_proxies)

    def https(self, req: Request) -> bool:
        """Whether the browser reached the page over HTTPS: served so, or said so by a trusted proxy."""
        if self.secure_cookies:
            return True
        proto = req.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https" and self._from_trusted_proxy(req)

    def client(self, req: Request) -> str:
        """The client's address for the log: the proxy's ``X-Forwarded-For`` client when it is trusted."""
        forwarded = req.headers.get("x-forwarded-for", "")
        if forwarded and self._from_trusted_proxy(req):
            last = forwarded.split(",")[-1].strip()  # the address the trusted proxy itself saw
            if last:
                return f"{last[:64]} (via {req.client_ip})"
        return req.client_ip

    def _cookie_header(self, value: str, req: Request) -> str:
        return (f"{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Lax"
                + ("; Secure" if self.https(req) else ""))

    def _route(self, req: Request, session: Session, local: bool) -> Response:
        path, method = req.path, req.method
        if path.startswith("/static/") and method == "GET":
            return self._static(path[len("/static/"):])
        if path == "/metrics" and method == "GET":
            if local or session.authenticated or self.auth.basic_ok(req.headers.get("authorization")):
                return Response(200, self.metrics().encode(), prom.CONTENT_TYPE)
            return Response(401, b"authentication required\n", "text/plain; charset=utf-8",
                            [("WWW-Authenticate", 'Basic realm="edge-monitor"')])
        form: dict[str, str] = {}
        if method == "POST":
            if len(req.body) > MAX_BODY_BYTES:
                return self._text(413, "request too large")
            form = _form(req.body)
            origin = req.headers.get("origin")
            if origin and urllib.parse.urlsplit(origin).netloc.lower() != req.headers.get("host", "").lower():
                return self._text(403, "cross-site request refused")
            if not self.auth.csrf_ok(session, form.get("csrf")):
                return self._text(403, "missing or wrong CSRF token; reload the page and try again")
        elif method != "GET":
            return self._text(405, "method not allowed")
        if path == "/login":
            return self._login(req, session, form)
        if not session.authenticated:
            if method == "GET" and not path.startswith(("/api", "/clips/")):
                return Response(303, headers=[("Location", "/login")])
            return self._text(401, "log in first")
        if path == "/logout" and method == "POST":
            fresh = self.auth.issue(False, self.clock())
            return Response(303, headers=[("Location", "/login"), ("Set-Cookie", self._cookie_header(fresh, req))])
        if path == "/" and method == "GET":
            return self._page("edge-monitor", self._overview(session), session)
        if path == "/api" and method == "GET":  # the overview polls every machine in one request
            return Response(200, json.dumps({"machines": [self.machine_json(p) for p in self.machines.values()]})
                            .encode(), "application/json", [("Cache-Control", "no-store")])
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] in ("machine", "api", "clips"):
            port = self.machines.get(parts[1])
            if port is None:
                return self._text(404, "no such machine")
            rest = "/".join(parts[2:])
            if parts[0] == "api" and rest == "" and method == "GET":
                return Response(200, json.dumps(self.machine_json(port)).encode(), "application/json",
                                [("Cache-Control", "no-store")])
            if parts[0] == "api" and rest == "events" and method == "GET":
                return self._event_stream(port)
            if parts[0] == "clips" and method == "GET":
                return self._clip(port, rest, req.headers.get("range"))
            if parts[0] == "machine":
                if rest == "" and method == "GET":
                    return self._page(port.name, self._machine_page(port, session, req.query.get("m")), session)
                if rest == "chart.svg" and method == "GET":
                    return Response(200, self.chart(port).encode(), "image/svg+xml", [("Cache-Control", "no-store")])
                if rest.startswith("spectrogram/") and method == "GET":
                    return self._spectrogram(port, rest[len("spectrogram/"):])
                if rest == "alerts" and method == "GET":
                    return Response(200, self._alerts_table(port, session).encode())
                if rest == "threshold" and method == "POST":
                    return self._set_threshold(port, session, form)
                if rest == "feedback" and method == "POST":
                    return self._feedback(port, session, form)
        return self._text(404, "not found")

    # ------------------------------------------------------------ helpers

    def _text(self, status: int, text: str) -> Response:
        return Response(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _static(self, name: str) -> Response:
        types = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
        if name not in types:
            return self._text(404, "not found")
        return Response(200, (STATIC_DIR / name).read_bytes(), types[name], [("Cache-Control", "max-age=300")])

    def _page(self, title: str, body: str, session: Session, status: int = 200) -> Response:
        nav = ""
        if session.authenticated:
            nav = ('<nav><a href="/">All machines</a>'
                   + (f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
                      f'value="{esc(self.auth.csrf_token(session))}"><button type="submit">Log out</button></form>'
                      if self.auth.login_required else "")
                   + "</nav>")
        doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
               f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
               f'<link rel="stylesheet" href="/static/app.css"></head><body><header><h1>{esc(title)}</h1>{nav}'
               f'</header><main>{body}</main><script src="/static/app.js"></script></body></html>')
        return Response(status, doc.encode(), headers=[("Cache-Control", "no-store")])

    def _csrf_field(self, session: Session) -> str:
        return f'<input type="hidden" name="csrf" value="{esc(self.auth.csrf_token(session))}">'

    # ------------------------------------------------------------ login

    def _login(self, req: Request, session: Session, form: dict[str, str]) -> Response:
        if not self.auth.login_required:
            return Response(303, headers=[("Location", "/")])
        error = ""
        if req.method == "POST":
            if self.auth.password_ok(form.get("password", "")):
                fresh = self.auth.issue(True, self.clock())
                _LOGGER.info("web: login from %s", self.client(req))
                return Response(303, headers=[("Location", "/"), ("Set-Cookie", self._cookie_header(fresh, req))])
            _LOGGER.warning("web: wrong password from %s", self.client(req))
            error = '<p class="error" id="login-error">Wrong password.</p>'
        body = (f'{error}<form method="post" action="/login" class="login">{self._csrf_field(session)}'
                '<label>Password <input type="password" name="password" id="password" autocomplete="current-password" '
                'autofocus></label> <button type="submit" id="login">Log in</button></form>')
        return self._page("edge-monitor: log in", body, session, 401 if error else 200)

    # ------------------------------------------------------------ data

    def machine_json(self, port: MachinePort) -> dict[str, Any]:
        """What the page polls: score, state, threshold, counts, health, MQTT."""
        v = port.view
        stats = port.stats()
        mqtt = stats.get("mqtt")
        return {
            "machine": port.id, "state": v.state, "score": v.last_score, "score_at": v.last_score_at_s,
            "threshold": port.threshold(), "alerts_total": v.alerts_total, "clips": len(v.clips),
            "health": sorted(v.health_active), "dropped_frames": int(stats.get("source", {}).get("dropped_frames", 0)),
            "mqtt": None if mqtt is None else {"connected": bool(mqtt.get("connected")),
                                               "outbox_depth": int(mqtt.get("outbox_depth", 0))},
            "feedback": port.feedback.counts(),
        }

    def chart(self, port: MachinePort) -> str:
        """The last hour's score chart of one machine (SVG)."""
        now = self.clock()
        spans = [(a.started_at_s, a.ended_at_s if a.ended_at_s is not None else now)
                 for a in port.view.alerts() if (a.ended_at_s or now) >= now - HISTORY_SECONDS]
        return score_chart_svg(port.view.score_arrays(now - HISTORY_SECONDS), port.threshold(), now, spans)

    def metrics(self) -> str:
        """The Prometheus exposition of every machine."""
        text = prom.MetricsText()
        for port in self.machines.values():
            v = port.view
            stats = port.stats()
            prom.machine_metrics(text, port.id, v.state, v.last_score, port.threshold(), v.alerts_total,
                                 v.health_counts, v.last_inference_ms, stats.get("source", {}), stats.get("mqtt"),
                                 port.feedback.counts())
        return text.render()

    # ------------------------------------------------------------ pages

    def _status_block(self, port: MachinePort) -> str:
        d = self.machine_json(port)
        health = ", ".join(h.replace("_", " ") for h in d["health"]) or "ok"
        mqtt = d["mqtt"]
        mqtt_text = ("off" if mqtt is None else
                     f'{"connected" if mqtt["connected"] else "not connected"}, outbox {mqtt["outbox_depth"]}')
        fb = d["feedback"]
        return (f'<dl class="status"><dt>State</dt><dd><span class="state state-{esc(d["state"])}" '
                f'data-field="state">{esc(d["state"])}</span></dd>'
                f'<dt>Score now</dt><dd data-field="score">{_score(d["score"])}</dd>'
                f'<dt>Threshold</dt><dd data-field="threshold">{_score(d["threshold"])}</dd>'
                f'<dt>Health</dt><dd data-field="health">{esc(health)}</dd>'
                f'<dt>Dropped frames</dt><dd data-field="dropped_frames">{d["dropped_frames"]}</dd>'
                f'<dt>MQTT</dt><dd data-field="mqtt">{esc(mqtt_text)}</dd>'
                f'<dt>Alerts</dt><dd><span data-field="alerts_total">{d["alerts_total"]}</span> since start; '
                f'marked: <span class="fb-false">{fb["false_alarm"]} false alarm(s)</span>, '
                f'<span class="fb-confirmed">{fb["confirmed"]} confirmed fault(s)</span></dd></dl>')

    def _overview(self, session: Session) -> str:
        cards = []
        for port in self.machines.values():
            cards.append(f'<section class="card" data-machine="{esc(port.id)}" data-poll="2">'
                         f'<h2><a href="/machine/{esc(port.id)}">{esc(port.name)}</a> '
                         f'<small>{esc(port.id)}</small></h2>{self._status_block(port)}'
                         f'<img class="chart" src="/machine/{esc(port.id)}/chart.svg" alt="score over the last hour" '
                         'width="600" height="140"></section>')
        return "".join(cards) or "<p>No machines.</p>"

    def _machine_page(self, port: MachinePort, session: Session, message_code: Optional[str],
                      error: str = "") -> str:
        message = MESSAGES.get(message_code or "", "")
        note = (f'<p class="message" id="message">{esc(message)}</p>' if message else "") + \
               (f'<p class="error" id="error">{esc(error)}</p>' if error else "")
        threshold_form = (
            f'<form method="post" action="/machine/{esc(port.id)}/threshold" class="threshold">'
            f'{self._csrf_field(session)}<label>Threshold <input name="threshold" id="threshold-input" '
            f'value="{port.threshold():.6g}" inputmode="decimal" size="10"></label> '
            '<button type="submit" id="threshold-set">Set</button> <small>A number in (0, '
            f'{THRESHOLD_MAX:g}]; saved in the state folder and announced on threshold/state, as with '
            'threshold/set.</small></form>')
        return (f'{note}<section class="card" data-machine="{esc(port.id)}" '
                f'data-poll="{max(0.5, port.hop_seconds):g}" data-live="1">{self._status_block(port)}'
                f'<img class="chart" src="/machine/{esc(port.id)}/chart.svg" alt="score over the last hour" '
                f'width="600" height="140">{threshold_form}</section>'
                f'<section id="alerts"><h2>Alerts</h2><div id="alerts-table">{self._alerts_table(port, session)}'
                '</div></section>')

    def _alerts_table(self, port: MachinePort, session: Session) -> str:
        records = port.view.alerts()
        if not records:
            return '<p class="empty">No alerts since the daemon started.</p>'
        rows = []
        for a in records:
            rows.append(self._alert_row(port, session, a))
        return ('<table class="alerts"><thead><tr><th>Start</th><th>End</th><th>Peak score</th><th>Label</th>'
                '<th>Clip</th><th>Feedback</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")

    def _alert_row(self, port: MachinePort, session: Session, a: AlertRecord) -> str:
        if a.clip_id is not None:
            clip = (f'<audio controls preload="metadata" src="/clips/{esc(port.id)}/{esc(a.clip_id)}.wav"></audio>'
                    f' <a href="/clips/{esc(port.id)}/{esc(a.clip_id)}.wav" download>download</a>'
                    f'<br><img class="spectrogram" loading="lazy" '
                    f'src="/machine/{esc(port.id)}/spectrogram/{esc(a.clip_id)}.png" alt="log-mel spectrogram of '
                    f'the clip" title="log-mel spectrogram: time left to right, {port.spec.fmin:g}-'
                    f'{port.spec.fmax_hz:g} Hz bottom to top, louder brighter; white lines: the alert\'s start '
                    'and end">')
        else:
            clip = "being written…" if a.clip_pending else "—"
        end = _time(a.ended_at_s) if a.ended_at_s is not None else "ongoing"
        if a.reason:
            end += f" ({a.reason})"
        verdict = port.feedback.get(a.episode)
        shown = ""
        if verdict:
            shown = (f'<p class="verdict verdict-{esc(verdict["verdict"])}">{esc(VERDICT_TEXT[verdict["verdict"]])}'
                     + (f': {esc(verdict["note"])}' if verdict["note"] else "") + "</p>")
        buttons = "".join(f'<button type="submit" name="verdict" value="{v}">{esc(VERDICT_TEXT[v])}</button>'
                          for v in VERDICTS)
        form = (f'<form method="post" action="/machine/{esc(port.id)}/feedback" class="feedback">'
                f'{self._csrf_field(session)}<input type="hidden" name="episode" value="{esc(a.episode)}">'
                f'<input name="note" placeholder="note (optional)" maxlength="{MAX_NOTE_CHARS}"> {buttons}</form>')
        return (f'<tr id="alert-{esc(a.episode)}" class="alert-row"><td>{esc(_time(a.started_at_s))}</td>'
                f'<td>{esc(end)}</td><td>{_score(port.view.peak_score(a))} <small>/ {_score(a.threshold)}</small></td>'
                f'<td>{esc(a.label or "—")}</td><td class="clip">{clip}</td><td>{shown}{form}</td></tr>')

    # ------------------------------------------------------------ actions

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


def _cookie(header: str, name: str) -> Optional[str]:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    try:
        fields = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=20)
    except ValueError:  # too many fields
        return {}
    return {k: v[0] for k, v in fields.items()}
