"""The live score as server-sent events (/api/<machine>/events), with polling as the fallback."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

from edge_monitor.events import ScoreEvent, StateEvent
from edge_monitor.web.app import MAX_EVENT_STREAMS
from edge_monitor.web.server import WebServer
from tests.test_web import NOW, Harness


def _data(chunk: bytes) -> dict:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
    return json.loads(chunk[len(b"data: "):])


def test_stream_sends_the_api_json_at_each_new_score(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.login()
    h.view.handle(ScoreEvent("fan-1", NOW - 1, 0.75, 1.5, -30.0, 0.2))
    resp = h.request("GET", "/api/fan-1/events")
    assert resp.status == 200 and resp.content_type.startswith("text/event-stream")
    assert ("Cache-Control", "no-store") in resp.headers and ("X-Accel-Buffering", "no") in resp.headers
    chunks = iter(resp.stream)
    try:
        assert next(chunks) == b"retry: 3000\n\n"
        first = _data(next(chunks))
        assert first == json.loads(h.request("GET", "/api/fan-1").body)  # the same object the page polls
        assert first["score"] == 0.75
        h.view.handle(ScoreEvent("fan-1", NOW - 0.5, 2.25, 1.5, -30.0, 0.2))
        assert _data(next(chunks))["score"] == 2.25
        h.view.handle(StateEvent("fan-1", "anomaly", NOW))
        assert _data(next(chunks))["state"] == "anomaly"
        h.threshold = 3.0
        assert _data(next(chunks))["threshold"] == 3.0
    finally:
        resp.stream.close()


def test_streams_are_limited_and_a_closed_one_frees_its_slot(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.login()
    open_streams = [h.request("GET", "/api/fan-1/events") for _ in range(MAX_EVENT_STREAMS)]
    assert all(r.status == 200 for r in open_streams)
    refused = h.request("GET", "/api/fan-1/events")
    assert refused.status == 503 and refused.stream is None and b"polls instead" in refused.body
    assert h.request("GET", "/api/fan-1").status == 200  # polling still answers
    open_streams[0].stream.close()
    open_streams[0].stream.close()  # twice is harmless and frees one slot only
    again = h.request("GET", "/api/fan-1/events")
    assert again.status == 200
    assert h.request("GET", "/api/fan-1/events").status == 503
    for r in open_streams[1:] + [again]:
        r.stream.close()


def test_stream_needs_a_login_and_ends_when_the_server_stops(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    anonymous = h.request("GET", "/api/fan-1/events")
    assert anonymous.status == 401 and anonymous.stream is None
    assert h.request("GET", "/api/nope/events").status in (401, 404)
    h.login()
    assert h.request("GET", "/api/nope/events").status == 404
    resp = h.request("GET", "/api/fan-1/events")
    h.app.stopping.set()
    assert list(resp.stream) == [b"retry: 3000\n\n"]  # ends at once, without waiting for a score
    resp.stream.close()


def test_stream_over_a_real_socket_and_closing_the_server_ends_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, password=None)
    h.view.handle(ScoreEvent("fan-1", NOW - 1, 0.5, 1.5, -30.0, 0.2))
    server = WebServer(h.app, "127.0.0.1", 0)
    server.start()
    closed = False
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/fan-1/events", headers={"Host": "127.0.0.1"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        assert resp.getheader("Content-Length") is None and resp.getheader("Connection") == "close"
        assert resp.readline() == b"retry: 3000\n" and resp.readline() == b"\n"
        assert json.loads(resp.readline()[len(b"data: "):])["score"] == 0.5
        assert resp.readline() == b"\n"
        h.view.handle(ScoreEvent("fan-1", NOW, 1.25, 1.5, -30.0, 0.2))
        assert json.loads(resp.readline()[len(b"data: "):])["score"] == 1.25
        ended = threading.Event()

        def drain() -> None:
            resp.read()  # returns when the server ends the stream and closes the connection
            ended.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        server.close()
        closed = True
        reader.join(10)
        assert ended.is_set()
        conn.close()
    finally:
        if not closed:
            server.close()
