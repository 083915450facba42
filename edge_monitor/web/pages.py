"""The web page's HTML and data: what each machine shows, how pages are laid out, the JSON and metrics.

``MachinePort`` is what the page may read and do on one machine. ``Pages`` renders the
overview, a machine's page with its alerts table, the JSON the page polls, the score
chart and ``/metrics``; ``WebApp`` (``app.py``) builds on it.
"""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path
from typing import Any, Callable, Optional

from edge_monitor.events import utc_iso
from edge_monitor.features import FeatureSpec
from edge_monitor.threshold_store import THRESHOLD_MAX
from edge_monitor.web import metrics as prom
from edge_monitor.web.auth import Auth, Session
from edge_monitor.web.charts import score_chart_svg
from edge_monitor.web.feedback import MAX_NOTE_CHARS, VERDICTS, FeedbackStore
from edge_monitor.web.http_types import Response, text_response
from edge_monitor.web.view import HISTORY_SECONDS, AlertRecord, MachineView

STATIC_DIR = Path(__file__).resolve().parent / "static"
VERDICT_TEXT = {"false_alarm": "false alarm", "confirmed": "confirmed fault"}
MESSAGES = {
    "threshold-ok": "Threshold changed and saved.",
    "threshold-unsaved": "Threshold applied, but it could not be saved (see the daemon's log).",
    "feedback-ok": "Feedback saved and published on MQTT.",
    "feedback-local": "Feedback saved; it was not published (MQTT is off or not connected).",
}


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


class Pages:
    """The HTML pages, the polled JSON, the chart and the metrics of the site's machines."""

    machines: dict[str, MachinePort]
    auth: Auth
    clock: Callable[[], float]

    # ------------------------------------------------------------ helpers

    def _text(self, status: int, text: str) -> Response:
        return text_response(status, text)

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
