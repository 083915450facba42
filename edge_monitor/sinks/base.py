"""The protocol every sink implements."""

from __future__ import annotations

from typing import Protocol

from edge_monitor.events import Event


class Sink(Protocol):
    """Receives events from one machine's pipeline. Must not block for long."""

    def handle(self, event: Event) -> None:
        """Deliver (or durably queue) one event."""

    def close(self) -> None:
        """Flush and release resources. Safe to call twice."""
