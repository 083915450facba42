"""Install-time check: does the microphone hear the kind of machine the config names?

A machine-type classifier bundle (``models/machine-type.tflite``: fan, pump,
slider, valve) listens to the first ``machine.type_check_seconds`` of
non-silent audio. When the type with the highest mean window probability is
not ``machine.type`` and that probability reaches
``machine.type_check_min_confidence``, the check emits one ``wrong_machine``
HealthEvent. Then it closes its interpreter: after the check the daemon pays
nothing for it.

``edge-monitor identify`` (``edge_monitor.identify``) runs the same check on demand and prints a
verdict for the engineer who is placing the microphone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from edge_monitor.events import Event, HealthEvent
from edge_monitor.features import StreamingExtractor
from edge_monitor.model import ModelError, ModelRunner, load_model

if TYPE_CHECKING:
    from edge_monitor.config import Config

_LOGGER = logging.getLogger(__name__)

SHIPPED_MODEL_DIRS = (Path(__file__).resolve().parents[1] / "models",      # a source checkout
                      Path(sys.prefix) / "share" / "edge-monitor" / "models")  # pip install (data_files)
"""Where the shipped classifier bundles are: the checkout's ``models/``, or the installed copy."""


def shipped_model(name: str = "machine-type.tflite") -> Path:
    """The shipped bundle ``name`` (the first of ``SHIPPED_MODEL_DIRS`` that has it; the checkout path if none)."""
    for folder in SHIPPED_MODEL_DIRS:
        if (folder / name).is_file():
            return folder / name
    return SHIPPED_MODEL_DIRS[0] / name


DEFAULT_MODEL = shipped_model()
"""The shipped machine-type bundle (``identify`` uses it when nothing else is named)."""

WINDOW_HOP_SECONDS = 0.5
IDENTIFY_TIMEOUT_FACTOR = 3.0  # ``identify`` gives up after this many times --seconds of wall time (plus 10 s)


@dataclasses.dataclass(frozen=True)
class TypeCheckResult:
    """What the check heard: the dominant type, its mean probability, and the verdict."""

    configured: str
    detected: str
    confidence: float                 # mean window probability of ``detected``, 0-1
    probabilities: dict[str, float]   # mean window probability per label
    windows: int
    seconds: float                    # non-silent audio listened to (seconds)
    verdict: str                      # "match", "mismatch", "uncertain" or "unchecked" (type not in the labels)

    def to_json(self) -> dict[str, Any]:
        """JSON form (telemetry ``type_check``, ``identify --json``)."""
        return {"configured": self.configured, "detected": self.detected,
                "confidence": round(self.confidence, 4), "verdict": self.verdict, "windows": self.windows,
                "seconds": round(self.seconds, 1),
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}}

    def sentence(self) -> str:
        """One line for a maintenance engineer."""
        head = f"sounds like: {self.detected} ({self.confidence:.2f}); configured: {self.configured}"
        if self.verdict == "match":
            return f"{head} — ok"
        if self.verdict == "mismatch":
            return f"{head} — check the microphone placement and machine.type"
        if self.verdict == "uncertain":
            return f"{head} — not sure (confidence below the bound); listen longer or move the microphone closer"
        return f"{head} — machine.type is not one of {', '.join(sorted(self.probabilities))}, so it is not compared"


class MachineTypeCheck:
    """Feeds mono audio to a machine-type classifier until enough non-silent sound was heard, then decides once."""

    def __init__(self, runner: ModelRunner, configured_type: str, machine_id: str, *, seconds: float = 30.0,
                 min_confidence: float = 0.6, silence_dbfs: float = -70.0,
                 window_hop_seconds: float = WINDOW_HOP_SECONDS) -> None:
        if runner.bundle.kind != "classifier":
            raise ModelError(f"model {runner.bundle.path}: the machine-type check needs a classifier bundle, "
                             f"not {runner.bundle.kind!r}")
        self.runner: Optional[ModelRunner] = runner
        self.labels = list(runner.bundle.labels)
        self.configured = configured_type
        self.machine_id = machine_id
        self.seconds = float(seconds)
        self.min_confidence = float(min_confidence)
        self.silence_dbfs = float(silence_dbfs)
        spec = runner.bundle.spec
        self.sample_rate = spec.sample_rate
        self._window = spec.frames_per_window
        self._hop = max(1, int(round(window_hop_seconds / spec.hop_seconds)))
        self._extractor = StreamingExtractor(spec)
        self._rows = np.zeros((0, spec.n_features), dtype=np.float32)
        self._prob_sum = np.zeros(len(self.labels), dtype=np.float64)
        self._windows = 0
        self._heard_samples = 0
        self.result: Optional[TypeCheckResult] = None

    @property
    def done(self) -> bool:
        """True once the verdict is in (the interpreter is then closed)."""
        return self.result is not None

    @property
    def heard_seconds(self) -> float:
        """Non-silent audio fed so far (seconds)."""
        return self._heard_samples / self.sample_rate

    def process(self, mono: np.ndarray, t_s: float) -> list[Event]:
        """Feed mono float32 samples starting at UNIX time ``t_s``; returns a ``wrong_machine`` event at most once.

        Blocks quieter than ``silence_dbfs`` are skipped: a stopped machine says nothing about its type.
        """
        if self.done or mono.size == 0:
            return []
        mean_square = float(np.dot(mono, mono)) / mono.size
        if mean_square <= 1e-16 or 10.0 * math.log10(mean_square) < self.silence_dbfs:
            return []
        self._heard_samples += mono.size
        feats = self._extractor.process(mono)
        if feats.shape[0]:
            self._rows = np.concatenate((self._rows, feats))
            self._score_ready_windows()
        if self.heard_seconds >= self.seconds and self._windows:
            return self.finish(t_s + mono.size / self.sample_rate)
        return []

    def _score_ready_windows(self) -> None:
        assert self.runner is not None
        while self._rows.shape[0] >= self._window:
            self._prob_sum += self.runner.probabilities(self._rows[:self._window])
            self._windows += 1
            self._rows = self._rows[self._hop:]

    def finish(self, t_s: float) -> list[Event]:
        """Decide now with what was heard (at least one window), log it, and close the interpreter."""
        if self.done:
            return []
        self.close()
        if not self._windows:
            _LOGGER.warning("%s: machine-type check heard too little sound (%.1f s) to decide", self.machine_id,
                            self.heard_seconds)
            return []
        mean = self._prob_sum / self._windows
        best = int(np.argmax(mean))
        detected, confidence = self.labels[best], float(mean[best])
        if self.configured not in self.labels:
            verdict = "unchecked"
        elif detected == self.configured:
            verdict = "match"
        elif confidence >= self.min_confidence:
            verdict = "mismatch"
        else:
            verdict = "uncertain"
        self.result = TypeCheckResult(self.configured, detected, confidence,
                                      {label: float(p) for label, p in zip(self.labels, mean)},
                                      self._windows, self.heard_seconds, verdict)
        if verdict != "mismatch":
            _LOGGER.info("%s: machine-type check: %s", self.machine_id, self.result.sentence())
            return []
        detail = (f"configured {self.configured} but it sounds like {detected} (confidence {confidence:.2f} over "
                  f"{self.heard_seconds:.0f} s); check the microphone placement and machine.type")
        _LOGGER.warning("%s: wrong machine? %s", self.machine_id, detail)
        return [HealthEvent("wrong_machine", self.machine_id, t_s, detail)]

    def close(self) -> None:
        """Drop the interpreter and buffers (safe to call twice)."""
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        self._rows = self._rows[:0]


def make_type_check(cfg: Config, sample_rate_hz: int, silence_dbfs: float) -> Optional[MachineTypeCheck]:
    """The daemon's check for a Config, or None when it is off or cannot apply (logged). Raises ModelError."""
    m = cfg.machine
    if not m.type_check_model:
        return None
    if m.type == "unknown":
        _LOGGER.info("%s: machine.type is unknown, so the machine-type check is skipped", m.id)
        return None
    try:
        runner = load_model(m.type_check_model)
    except ModelError as exc:
        raise ModelError(f"machine.type_check_model: {exc}") from None
    if runner.bundle.kind != "classifier":
        runner.close()
        raise ModelError(f"machine.type_check_model {m.type_check_model}: a machine-type classifier is needed, "
                         f"but this bundle is a {runner.bundle.kind!r} model")
    if runner.bundle.spec.sample_rate != sample_rate_hz:
        runner.close()
        raise ModelError(f"machine.type_check_model {m.type_check_model}: it expects "
                         f"{runner.bundle.spec.sample_rate} Hz but the machine's model uses {sample_rate_hz} Hz")
    if m.type not in runner.bundle.labels:
        _LOGGER.info("%s: the machine-type check is skipped: %s knows %s, not %r", m.id, m.type_check_model,
                     ", ".join(runner.bundle.labels), m.type)
        runner.close()
        return None
    _LOGGER.info("%s: checking that the first %g s of sound is a %s (model %s)", m.id, m.type_check_seconds,
                 m.type, runner.bundle.ident)
    return MachineTypeCheck(runner, m.type, m.id, seconds=m.type_check_seconds,
                            min_confidence=m.type_check_min_confidence, silence_dbfs=silence_dbfs)
