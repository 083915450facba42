"""``/metrics`` in the Prometheus text exposition format (version 0.0.4), written by hand: no dependency."""

from __future__ import annotations

import math
from typing import Any, Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("normal", "anomaly", "degraded", "unknown")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Optional[float]) -> str:
    if value is None:
        return "NaN"
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v) if not v.is_integer() else str(int(v))


class MetricsText:
    """Collects samples family by family and renders them."""

    def __init__(self) -> None:
        """No families yet."""
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, str], value: Optional[float]) -> None:
        """One sample of the family ``name`` (``gauge`` or ``counter``)."""
        family = self._families.setdefault(name, (kind, help_text, []))
        shown = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        family[2].append(f"{name}{{{shown}}} {_num(value)}")

    def render(self) -> str:
        """The whole exposition."""
        out = []
        for name, (kind, help_text, samples) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def machine_metrics(text: MetricsText, machine: str, state: str, score: Optional[float], threshold: float,
                    alerts_total: int, health_counts: dict[str, int], inference_ms: Optional[float],
                    source_stats: dict[str, Any], mqtt: Optional[dict[str, Any]],
                    feedback: dict[str, int]) -> None:
    """Every sample of one machine."""
    m = {"machine": machine}
    text.add("edge_monitor_score", "gauge", "Anomaly score of the latest window.", m, score)
    text.add("edge_monitor_threshold", "gauge", "Threshold in force.", m, threshold)
    for s in STATES:
        text.add("edge_monitor_state", "gauge", "1 for the machine's current state.", {**m, "state": s},
                 1 if state == s else 0)
    text.add("edge_monitor_alerts_total", "counter", "Alert episodes started since the daemon started.", m,
             alerts_total)
    for kind, count in sorted(health_counts.items()):
        text.add("edge_monitor_health_events_total", "counter", "Health events since start, by kind.",
                 {**m, "kind": kind}, count)
    text.add("edge_monitor_dropped_frames_total", "counter", "Audio frames the capture ring had to drop.", m,
             int(source_stats.get("dropped_frames", 0)))
    text.add("edge_monitor_inference_milliseconds", "gauge", "Feature and inference time of the latest window.",
             m, inference_ms)
    if mqtt is not None:
        text.add("edge_monitor_mqtt_connected", "gauge", "1 while connected to the broker.", m,
                 1 if mqtt.get("connected") else 0)
        text.add("edge_monitor_outbox_depth", "gauge", "Alerts waiting in the outbox for the broker.", m,
                 mqtt.get("outbox_depth", 0))
    for verdict, count in sorted(feedback.items()):
        text.add("edge_monitor_feedback_alerts", "gauge", "Alerts people marked, by verdict.",
                 {**m, "verdict": verdict}, count)

