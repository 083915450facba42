"""The web page's requests and answers, without sockets or threads (``server.py`` adds those).

``WebApp.handle(Request) -> Response`` is the whole site: login, the overview, a page
per machine, clips, the threshold form, feedback, a small JSON API the page polls,
and ``/metrics``. Every POST needs the session's CSRF token; every page but the login
form needs a logged-in session when a password is configured. Without a password the
page answers this computer only: requests naming another host (DNS rebinding) or
arriving through a proxy (``X-Forwarded-For``) are refused.

This module routes each request; the work is done by its parts: ``http_types``
(requests, answers, parsing), ``sessions`` (sessions, CSRF, login, proxies),
``pages`` (HTML, JSON, chart, metrics) and ``actions`` (forms, live stream, clips).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Callable

from edge_monitor.web import metrics as prom
from edge_monitor.web.actions import (
    CLIP_ID,
    EVENT_CHECK_SECONDS,
    EVENT_KEEPALIVE_SECONDS,
    EVENT_STREAM_SECONDS,
    MAX_EVENT_STREAMS,
    Actions,
)
from edge_monitor.web.auth import Auth, Session
from edge_monitor.web.http_types import (
    MAX_BODY_BYTES,
    SECURITY_HEADERS,
    EventStream,
    Request,
    Response,
)
from edge_monitor.web.pages import MESSAGES, STATIC_DIR, VERDICT_TEXT, MachinePort, esc
from edge_monitor.web.sessions import Sessions, is_forwarded, is_local
from edge_monitor.web.spectrogram import SpectrogramCache

__all__ = [
    "CLIP_ID", "EVENT_CHECK_SECONDS", "EVENT_KEEPALIVE_SECONDS", "EVENT_STREAM_SECONDS", "MAX_BODY_BYTES",
    "MAX_EVENT_STREAMS", "MESSAGES", "STATIC_DIR", "VERDICT_TEXT", "EventStream", "MachinePort", "Request",
    "Response", "WebApp", "esc",
]

_LOGGER = logging.getLogger(__name__)


class WebApp(Actions, Sessions):
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
        resp.headers.extend(SECURITY_HEADERS)
        return resp

    def _handle(self, req: Request) -> Response:
        refused = self._refuse_without_password(req)
        if refused is not None:
            return refused
        session, new_cookie = self._session(req)
        resp = self._route(req, session, is_local(req) and not is_forwarded(req))
        if new_cookie is not None and not any(h[0] == "Set-Cookie" for h in resp.headers):
            resp.headers.append(("Set-Cookie", self._cookie_header(new_cookie, req)))
        return resp

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
            form, refused = self._post_form(req, session)
            if refused is not None:
                return refused
        elif method != "GET":
            return self._text(405, "method not allowed")
        if path == "/login":
            return self._login(req, session, form)
        if not session.authenticated:
            if method == "GET" and not path.startswith(("/api", "/clips/")):
                return Response(303, headers=[("Location", "/login")])
            return self._text(401, "log in first")
        if path == "/logout" and method == "POST":
            return self._logout(req)
        if path == "/" and method == "GET":
            return self._page("edge-monitor", self._overview(session), session)
        if path == "/api" and method == "GET":  # the overview polls every machine in one request
            return Response(200, json.dumps({"machines": [self.machine_json(p) for p in self.machines.values()]})
                            .encode(), "application/json", [("Cache-Control", "no-store")])
        parts = path.strip("/").split("/")
        if len(parts) >= 2 and parts[0] in ("machine", "api", "clips"):
            return self._route_machine(req, session, form, parts)
        return self._text(404, "not found")

    def _route_machine(self, req: Request, session: Session, form: dict[str, str], parts: list[str]) -> Response:
        """``/machine/ID/...``, ``/api/ID[/events]`` and ``/clips/ID/...``."""
        method = req.method
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
