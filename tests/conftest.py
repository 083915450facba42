"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge_monitor.sinks.mqtt import MqttSink


@pytest.fixture
def sinks() -> Iterator[list[MqttSink]]:
    """MQTT sinks made by a test (append them), closed after it."""
    made: list[MqttSink] = []
    yield made
    for sink in made:
        sink.close(timeout_s=2)
