"""The web server on real sockets (HTTP and HTTPS), and the daemon refusing unusable web settings."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
from pathlib import Path

import yaml

from edge_monitor.web.app import MachinePort, WebApp
from edge_monitor.web.auth import Auth
from edge_monitor.web.feedback import FeedbackStore
from edge_monitor.web.server import WebServer
from edge_monitor.web.view import MachineView
from tests.helpers.broker import issue_cert, make_ca
from tests.helpers.daemon import REPO_ROOT, write_config


def _app(tmp_path: Path, password: str = "pw") -> WebApp:
    port = MachinePort(id="fan-1", name="Fan 1", view=MachineView("fan-1"),
                       feedback=FeedbackStore(tmp_path, "fan-1"), threshold=lambda: 1.0,
                       set_threshold=lambda v: "")
    return WebApp([port], Auth(password))


def test_http_round_trip_and_oversized_body(tmp_path: Path) -> None:
    server = WebServer(_app(tmp_path), "127.0.0.1", 0)
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/login")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and b'name="password"' in body
        cookie = resp.getheader("Set-Cookie")
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
        conn.request("POST", "/login", body=b"x" * 70_000,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert conn.getresponse().status == 413
        conn.close()
    finally:
        server.close()


def test_https_with_secure_cookies(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki", "test-ca")
    cert, key = issue_cert(ca, tmp_path / "pki", "localhost", server=True)
    app = _app(tmp_path)
    app.secure_cookies = True
    server = WebServer(app, "127.0.0.1", 0, cert=str(cert), key=str(key))
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(ca.cert))
        conn = http.client.HTTPSConnection("localhost", server.port, context=context, timeout=10)
        conn.request("GET", "/login")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and "; Secure" in resp.getheader("Set-Cookie")
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:  # plain HTTP on the TLS port gets no page
            plain.request("GET", "/login")
            got = plain.getresponse().status
        except (http.client.HTTPException, OSError):
            got = None
        assert got is None
    finally:
        server.close()


def _run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args, str(config)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_check_config_and_run_refuse_a_missing_web_password_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["web"] = {"enabled": True, "host": "0.0.0.0", "port": 1, "password_file": str(tmp_path / "nope")}
    config.write_text(yaml.safe_dump(data))
    checked = _run(config, "check-config")
    assert checked.returncode == 2 and "web.password_file" in checked.stderr and "does not exist" in checked.stderr
    ran = subprocess.run([sys.executable, "-m", "edge_monitor", "run", "--config", str(config)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 2 and "web.password_file" in ran.stderr


def test_check_config_refuses_the_lan_without_a_password(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["web"] = {"enabled": True, "host": "0.0.0.0"}
    config.write_text(yaml.safe_dump(data))
    checked = _run(config, "check-config")
    assert checked.returncode == 2 and "web.password_file: got None" in checked.stderr


def test_a_taken_port_leaves_the_daemon_monitoring_without_the_page(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        config = write_config(tmp_path)
        data = yaml.safe_load(config.read_text())
        data["web"] = {"enabled": True, "port": taken.getsockname()[1]}
        config.write_text(yaml.safe_dump(data))
        ran = subprocess.run([sys.executable, "-m", "edge_monitor", "run", "--config", str(config)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert ran.returncode == 0, ran.stderr
    assert "web page not served: cannot listen on 127.0.0.1" in ran.stderr
    assert "alert start" in ran.stderr  # the demo's fault was still detected
