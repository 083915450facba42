"""Sessions in a signed cookie, CSRF tokens, and the page's password.

A session cookie is ``<issued_s>.<nonce>.<auth>.<signature>``: the signature is an
HMAC-SHA256 over the rest with a key drawn at start-up, so a restart logs everyone
out and nothing secret is ever stored. ``auth`` is 1 after a good password (or when
no password is configured, on localhost only). Every visitor gets a session, even
before logging in, so the login form carries a CSRF token too. The CSRF token of a
session is an HMAC of its nonce; a login issues a new nonce (no session fixation).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import secrets
import time
from typing import Optional

COOKIE_NAME = "em_session"
SESSION_SECONDS = 12 * 3600.0
"""A login lasts a working shift."""


@dataclasses.dataclass(frozen=True)
class Session:
    """A verified session."""

    nonce: str
    issued_s: float
    authenticated: bool


class Auth:
    """Issues and checks session cookies and CSRF tokens; checks the password."""

    def __init__(self, password: Optional[str], key: Optional[bytes] = None) -> None:
        """``password`` None: no login (only allowed on localhost, see config). ``key``: for tests."""
        self._password = password.encode("utf-8") if password is not None else None
        self._key = key or os.urandom(32)

    @property
    def login_required(self) -> bool:
        """True when a password is configured."""
        return self._password is not None

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self, authenticated: bool, now_s: Optional[float] = None) -> str:
        """A new session cookie value."""
        issued = int(time.time() if now_s is None else now_s)
        body = f"{issued}.{secrets.token_urlsafe(16)}.{1 if authenticated or not self.login_required else 0}"
        return f"{body}.{self._sign(body)}"

    def verify(self, cookie: Optional[str], now_s: Optional[float] = None) -> Optional[Session]:
        """The session a cookie value stands for, or None when forged, malformed or expired."""
        if not cookie or len(cookie) > 200:
            return None
        body, _, sig = cookie.rpartition(".")
        if not body or not hmac.compare_digest(self._sign(body), sig):
            return None
        parts = body.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] not in ("0", "1"):
            return None
        issued = float(parts[0])
        now = time.time() if now_s is None else now_s
        if not issued - 60.0 <= now <= issued + SESSION_SECONDS:
            return None
        authenticated = parts[2] == "1" or not self.login_required
        return Session(nonce=parts[1], issued_s=issued, authenticated=authenticated)

    def csrf_token(self, session: Session) -> str:
        """The CSRF token every form of this session carries."""
        return self._sign(f"csrf.{session.nonce}")

    def csrf_ok(self, session: Optional[Session], token: Optional[str]) -> bool:
        """True when ``token`` belongs to ``session``."""
        return session is not None and bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")

    def password_ok(self, given: str) -> bool:
        """Constant-time password check (always False without a configured password)."""
        if self._password is None:
            return False
        return hmac.compare_digest(hashlib.sha256(self._password).digest(),
                                   hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest())

    def basic_ok(self, header: Optional[str]) -> bool:
        """An ``Authorization: Basic`` header with the password (any user name), for Prometheus scrapers."""
        if not header or not header.startswith("Basic ") or self._password is None:
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        return self.password_ok(decoded.partition(":")[2])
