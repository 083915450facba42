"""sd_notify client against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_monitor import sdnotify


def _receive(sock: socket.socket) -> bytes:
    """One datagram, failing the test rather than hanging if none arrives."""
    sock.settimeout(10.0)
    return sock.recv(4096)


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a file path, advertised through NOTIFY_SOCKET."""
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, advertised as ``@name`` like systemd does."""
    name = f"edge-monitor-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


@pytest.mark.timeout(30)
def test_helpers_send_exact_datagrams_to_a_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert _receive(path_socket) == b"READY=1"
    assert sdnotify.status("listening to fan-1") is True
    assert _receive(path_socket) == b"STATUS=listening to fan-1"
    assert sdnotify.watchdog() is True
    assert _receive(path_socket) == b"WATCHDOG=1"
    assert sdnotify.reloading() is True
    assert _receive(path_socket) == b"RELOADING=1"
    assert sdnotify.stopping() is True
    assert _receive(path_socket) == b"STOPPING=1"


@pytest.mark.timeout(30)
def test_abstract_socket_and_multi_line_notify(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=up") is True
    assert _receive(abstract_socket) == b"READY=1\nSTATUS=up"


@pytest.mark.timeout(30)
def test_status_is_kept_on_one_line_and_utf8(path_socket: socket.socket) -> None:
    assert sdnotify.status("source lost\nretrying in 2 s — ok") is True
    assert _receive(path_socket) == "STATUS=source lost retrying in 2 s — ok".encode()


def test_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.notify("STATUS=x") is False


def test_missing_socket_returns_false_without_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False


def test_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False


def test_watchdog_interval_for_this_process() -> None:
    env = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval_s(env) == pytest.approx(20.0)
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1500000"}) == pytest.approx(1.5)


def test_watchdog_interval_off_or_for_another_process() -> None:
    assert sdnotify.watchdog_interval_s({}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert sdnotify.watchdog_interval_s({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"}) is None


def test_watchdog_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == pytest.approx(30.0)
