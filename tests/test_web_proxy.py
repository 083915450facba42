"""web.trusted_proxies: X-Forwarded-Proto and X-Forwarded-For believed only from the proxies named."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pytest

from edge_monitor.config import ConfigError, parse_config
from edge_monitor.web.app import MachinePort, Request, Response, WebApp
from edge_monitor.web.auth import Auth
from edge_monitor.web.feedback import FeedbackStore
from edge_monitor.web.view import MachineView

BASE = "machine: {id: fan-1}\nmodel: {path: m.tflite}\n"


def _app(tmp_path: Path, proxies: tuple[str, ...] = (), secure: bool = False) -> WebApp:
    port = MachinePort(id="fan-1", name="Fan 1", view=MachineView("fan-1"), feedback=FeedbackStore(tmp_path, "fan-1"),
                       threshold=lambda: 1.0, set_threshold=lambda v: "")
    return WebApp([port], Auth("pw", key=b"k" * 32), secure_cookies=secure, trusted_proxies=proxies)


def _get(app: WebApp, ip: str, headers: Optional[dict[str, str]] = None) -> Response:
    return app.handle(Request("GET", "/login", {}, {"host": "gw.example.lan", **(headers or {})}, b"", ip))


def _cookie(resp: Response) -> str:
    return next(v for k, v in resp.headers if k == "Set-Cookie")


HTTPS = {"x-forwarded-proto": "https", "x-forwarded-for": "192.168.7.20"}


def test_forwarded_proto_is_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert "Secure" not in _cookie(_get(app, "127.0.0.1", HTTPS))
    assert "Secure" in _cookie(_get(_app(tmp_path, secure=True), "127.0.0.1"))  # TLS from the daemon itself


@pytest.mark.parametrize(("proxies", "ip", "headers", "secure"), [
    (("127.0.0.1",), "127.0.0.1", HTTPS, True),
    (("127.0.0.1",), "127.0.0.1", {"x-forwarded-proto": "http"}, False),
    (("127.0.0.1",), "127.0.0.1", {"x-forwarded-proto": "HTTPS, http"}, True),   # first hop as the proxy said it
    (("127.0.0.1",), "127.0.0.1", {}, False),
    (("127.0.0.1",), "10.1.0.7", HTTPS, False),                                # not the proxy: a client could lie
    (("10.1.0.0/24",), "10.1.0.7", HTTPS, True),
    (("10.1.0.0/24",), "::ffff:10.1.0.7", HTTPS, True),                        # IPv4 on a dual-stack socket
    (("10.1.0.0/24",), "10.1.1.7", HTTPS, False),
    (("fd00::/64",), "fd00::5", HTTPS, True),
    (("fd00::/64",), "not-an-ip", HTTPS, False),
])
def test_secure_cookies_behind_a_trusted_https_proxy(tmp_path: Path, proxies: tuple[str, ...], ip: str,
                                                    headers: dict[str, str], secure: bool) -> None:
    cookie = _cookie(_get(_app(tmp_path, proxies), ip, headers))
    assert ("; Secure" in cookie) is secure, cookie
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_login_log_names_the_forwarded_client_only_from_a_trusted_proxy(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    import re

    for proxies, expected in ((("127.0.0.1",), "web: wrong password from 192.168.7.20 (via 127.0.0.1)"),
                              ((), "web: wrong password from 127.0.0.1")):
        app = _app(tmp_path, proxies)
        first = _get(app, "127.0.0.1", HTTPS)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', first.body.decode()).group(1)
        cookie = _cookie(first).split(";")[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge_monitor.web.app"):
            resp = app.handle(Request("POST", "/login", {}, {"host": "gw.example.lan", "cookie": cookie,
                                                             "x-forwarded-for": "10.9.9.9, 192.168.7.20"},
                                      f"password=guess&csrf={token}".encode(), "127.0.0.1"))
        assert resp.status == 401
        assert [r.getMessage() for r in caplog.records] == [expected]


def test_trusted_proxies_in_the_config() -> None:
    cfg = parse_config(BASE + "web: {trusted_proxies: [127.0.0.1, '10.1.0.0/24', '::1']}\n", "m.yaml")
    assert cfg.web.trusted_proxies == ("127.0.0.1", "10.1.0.0/24", "::1")
    assert parse_config(BASE, "m.yaml").web.trusted_proxies == ()
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "web:\n  trusted_proxies: [127.0.0.1, proxy.lan, 10.0.0.0/33]\n", "m.yaml")
    assert info.value.problems == [
        f"m.yaml:4: web.trusted_proxies.{i}: got {bad!r}; expected an IP address or network of a reverse proxy, "
        "such as 127.0.0.1 or 10.1.0.0/24 (host names are not accepted)" for i, bad in ((1, "proxy.lan"),
                                                                                      (2, "10.0.0.0/33"))]
