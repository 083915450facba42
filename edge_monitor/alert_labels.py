"""Which fault a classifier's alert is about: the alert label with the most probability.

A classifier bundle scores a window by the summed probability of its alert labels
(``ModelRunner.classify``). When the detector opens an alert, ``AlertLabeler`` names it by the
alert label with the largest probability over the windows that triggered it; at the end, over
the whole episode. Pure: it sees the events and the probabilities, nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np

from edge_monitor.events import AlertEvent, Event


class AlertLabeler:
    """Names classifier alerts; ``alert_idx`` are the alert labels' positions in the model's labels."""

    def __init__(self, labels: Sequence[str], alert_labels: Sequence[str]) -> None:
        self.alert_labels = list(alert_labels)
        self.alert_idx = np.array([list(labels).index(a) for a in alert_labels], dtype=np.intp)
        self._recent: list[np.ndarray] = []           # alert-label probabilities of the last trigger_n windows
        self._episode: Optional[np.ndarray] = None     # summed over the open alert

    def label(self, events: list[Event], probs: Optional[np.ndarray], trigger_n: int) -> list[Event]:
        """``events`` with the winning alert label on alert starts and ends (``probs``: this window's, or None)."""
        if probs is not None:
            alert_probs = probs[self.alert_idx]
            self._recent = (self._recent + [alert_probs])[-trigger_n:]
            if self._episode is not None:
                self._episode = self._episode + alert_probs
        out: list[Event] = []
        for event in events:
            if isinstance(event, AlertEvent) and self.alert_idx.size:
                if event.type == "start":
                    self._episode = np.sum(self._recent, axis=0) if self._recent else np.zeros(self.alert_idx.size)
                if self._episode is not None:
                    event = dataclasses.replace(event, label=self.alert_labels[int(np.argmax(self._episode))])
                if event.type == "end":
                    self._episode = None
            out.append(event)
        return out
