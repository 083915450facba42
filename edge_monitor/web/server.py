"""The web page's HTTP(S) server: ``http.server`` threads around ``WebApp``.

It runs on its own threads (one to accept, one per connection, at most
``MAX_CONNECTIONS``), never on a pipeline thread. A slow or stuck client holds one
connection thread until ``REQUEST_TIMEOUT_SECONDS``, nothing more.
"""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import ssl
import threading
import urllib.parse
from typing import Any, Optional

from edge_monitor.web.app import MAX_BODY_BYTES, Request, WebApp

_LOGGER = logging.getLogger(__name__)

MAX_CONNECTIONS = 16
"""Connections served at once; more are closed at once (a phone and a laptop need three or four)."""
REQUEST_TIMEOUT_SECONDS = 15.0


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edge-monitor"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_SECONDS

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_PUT(self) -> None:  # noqa: N802
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        app: WebApp = self.server.app  # type: ignore[attr-defined]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.send_error(413 if length > 0 else 400)
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(self.path)
        try:
            query = {k: v[0] for k, v in urllib.parse.parse_qs(split.query[:2000], max_num_fields=20).items()}
        except ValueError:  # too many fields: none of the pages takes more than one
            query = {}
        req = Request(method=self.command, path=split.path, query=query,
                      headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                      client_ip=self.client_address[0])
        resp = app.handle(req)
        if resp.stream is not None:
            self._send_stream(resp)
            return
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def _send_stream(self, resp: Any) -> None:
        """Headers, then each chunk as it comes, until the stream ends or the client goes; then close."""
        stream = resp.stream
        self.close_connection = True
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Connection", "close")
            for name, value in resp.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.flush()
            for chunk in stream:
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:  # the browser closed the page or the network went: nothing to tell anyone
            pass
        finally:
            stream.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if _LOGGER.isEnabledFor(logging.DEBUG):
            _LOGGER.debug("web: %s %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: WebApp, tls: Optional[ssl.SSLContext]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self.tls = tls
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.tls is not None:  # the handshake then happens on the connection's own thread
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        _LOGGER.debug("web: connection from %s failed", client_address, exc_info=True)


class WebServer:
    """Serves a WebApp on host:port (HTTPS with a cert and key) from its own threads."""

    def __init__(self, app: WebApp, host: str, port: int, *, cert: Optional[str] = None,
                 key: Optional[str] = None) -> None:
        """Bind now (OSError if the port is taken); serve after ``start()``."""
        context = None
        if cert and key:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
        self.tls = context is not None
        self._server = _Server((host, port), app, context)
        self._thread: Optional[threading.Thread] = None

    @property
    def app(self) -> WebApp:
        """The site it serves."""
        return self._server.app

    @property
    def port(self) -> int:
        """The port it listens on (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="web", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (live streams end too) and close the socket. Safe to call twice."""
        self._server.app.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self._server.server_close()
