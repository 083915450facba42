"""The web page's requests and answers as plain values, and the parsing of what a client sends.

``Request`` and ``Response`` carry no sockets (``server.py`` adds those); ``EventStream``
is the body of a live-score answer. The helpers read cookies, forms and the Host header
and never raise for anything a client sends.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterator
from typing import Callable, Optional

MAX_BODY_BYTES = 64 * 1024
"""Forms are a few hundred bytes; anything larger is refused before it is read."""
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
]
"""Sent with every answer."""


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


def text_response(status: int, text: str) -> Response:
    """A plain-text answer of one line."""
    return Response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header, without its port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def cookie_value(header: str, name: str) -> Optional[str]:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def parse_form(body: bytes) -> dict[str, str]:
    """The fields of a URL-encoded form (the first value of each); empty when it cannot be read."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    try:
        fields = urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=20)
    except ValueError:  # too many fields
        return {}
    return {k: v[0] for k, v in fields.items()}
