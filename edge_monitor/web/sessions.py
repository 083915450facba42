"""Who may use the web page: sessions, their cookies, CSRF checks, login and logout, and trusted proxies.

Every POST needs the session's CSRF token; every page but the login form needs a
logged-in session when a password is configured. Without a password the page answers
this computer only: requests naming another host (DNS rebinding) or arriving through
a proxy (``X-Forwarded-For``) are refused.
"""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from typing import Optional, Union

from edge_monitor.web.auth import COOKIE_NAME, Session
from edge_monitor.web.http_types import MAX_BODY_BYTES, Request, Response, cookie_value, host_name, parse_form
from edge_monitor.web.pages import Pages

_LOGGER = logging.getLogger("edge_monitor.web.app")  # the web page's log name

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_local(req: Request) -> bool:
    """Whether the request comes from this computer (its own socket address)."""
    return req.client_ip in ("127.0.0.1", "::1") or req.client_ip.startswith("127.")


def is_forwarded(req: Request) -> bool:
    """Whether the request says it came through a proxy."""
    return "x-forwarded-for" in req.headers or "forwarded" in req.headers


class Sessions(Pages):
    """The session of each request, the checks on who may ask what, and the login page."""

    secure_cookies: bool
    trusted_proxies: tuple[Union[ipaddress.IPv4Network, ipaddress.IPv6Network], ...]

    def _refuse_without_password(self, req: Request) -> Optional[Response]:
        """A 403 for a request from elsewhere than this computer when no password is set, else None."""
        if self.auth.login_required:
            return None
        if is_forwarded(req) or not is_local(req):
            return self._text(403, "This page has no password, so it answers this computer only. "
                                   "Set web.password_file to reach it through a proxy or the network.")
        if host_name(req.headers.get("host", "")) not in _LOCAL_HOSTS:
            return self._text(403, "Host header is not this computer (web.password_file is not set)")
        return None

    def _session(self, req: Request) -> tuple[Session, Optional[str]]:
        """The request's session and, when it had none, the cookie of the fresh one issued for it."""
        session = self.auth.verify(cookie_value(req.headers.get("cookie", ""), COOKIE_NAME), self.clock())
        if session is not None:
            return session, None
        new_cookie = self.auth.issue(False, self.clock())
        session = self.auth.verify(new_cookie, self.clock())
        assert session is not None
        return session, new_cookie

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

    def _post_form(self, req: Request, session: Session) -> tuple[dict[str, str], Optional[Response]]:
        """A POST's form, or the refusal of a POST too large, from another site or without the CSRF token."""
        if len(req.body) > MAX_BODY_BYTES:
            return {}, self._text(413, "request too large")
        form = parse_form(req.body)
        origin = req.headers.get("origin")
        if origin and urllib.parse.urlsplit(origin).netloc.lower() != req.headers.get("host", "").lower():
            return form, self._text(403, "cross-site request refused")
        if not self.auth.csrf_ok(session, form.get("csrf")):
            return form, self._text(403, "missing or wrong CSRF token; reload the page and try again")
        return form, None

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

    def _logout(self, req: Request) -> Response:
        fresh = self.auth.issue(False, self.clock())
        return Response(303, headers=[("Location", "/login"), ("Set-Cookie", self._cookie_header(fresh, req))])
