"""Persist a threshold set at run time so that it survives a restart.

The value lives in ``<state_dir>/threshold-<machine>.json`` as
``{"threshold": 0.42, "updated_at": "2024-...Z", "source": "mqtt", "config_threshold": null}``.
``config_threshold`` is ``detection.threshold`` from the YAML when the value was set:
a run-time value stands until that YAML value changes. Writes are atomic (temporary
file, fsync, rename, fsync of the folder), so a crash or a power cut leaves either
the old or the new value, never a torn file. The file is created 0600.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from edge_monitor.atomic_file import fsync_dir, write_private_atomic
from edge_monitor.events import utc_iso

_LOGGER = logging.getLogger(__name__)

UNRECORDED: Any = object()
"""``config_threshold`` of a file written before it was recorded."""

THRESHOLD_MAX = 1e9
"""Largest threshold accepted at run time; scores are never this large, so larger values are typos."""


def is_valid_threshold(value: float) -> bool:
    """True for a finite threshold with 0 < value <= THRESHOLD_MAX."""
    return isinstance(value, float) and math.isfinite(value) and 0.0 < value <= THRESHOLD_MAX


class ThresholdStore:
    """The persisted run-time threshold of one machine."""

    def __init__(self, state_dir: Path, machine_id: str) -> None:
        """Store under ``state_dir`` (created on first save) for ``machine_id``."""
        self.path = Path(state_dir) / f"threshold-{machine_id}.json"

    def load(self) -> Optional[float]:
        """The saved threshold, or None when there is none or the file is unusable (logged)."""
        return self.load_record()[0]

    def load_record(self) -> tuple[Optional[float], Any]:
        """(saved threshold or None, the YAML ``detection.threshold`` it was set against, or UNRECORDED)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, UNRECORDED
        except (OSError, UnicodeDecodeError) as exc:
            _LOGGER.warning("ignoring saved threshold %s: cannot read it (%s)", self.path,
                            getattr(exc, "strerror", None) or exc)
            return None, UNRECORDED
        try:
            record = json.loads(text)
            value = float(record["threshold"])
        except (ValueError, KeyError, TypeError, RecursionError):
            _LOGGER.warning("ignoring saved threshold %s: not a JSON object with a numeric 'threshold'", self.path)
            return None, UNRECORDED
        if not is_valid_threshold(value):
            _LOGGER.warning("ignoring saved threshold %s: %r is not in (0, %g]", self.path, value, THRESHOLD_MAX)
            return None, UNRECORDED
        basis = record.get("config_threshold", UNRECORDED)
        if basis is not UNRECORDED and basis is not None and not isinstance(basis, (int, float)):
            basis = UNRECORDED
        return value, (float(basis) if isinstance(basis, (int, float)) else basis)

    def clear(self) -> None:
        """Forget the saved value (the YAML threshold changed and takes over)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fsync_dir(self.path.parent)

    def save(self, value: float, source: str = "mqtt", config_threshold: Any = UNRECORDED) -> None:
        """Atomically replace the saved threshold. Raises ValueError for an invalid value, OSError on disk errors.

        ``config_threshold`` is the YAML ``detection.threshold`` (or None) the value overrides.
        """
        value = float(value)
        if not is_valid_threshold(value):
            raise ValueError(f"threshold {value!r} is not a finite number in (0, {THRESHOLD_MAX:g}]")
        record: dict[str, Any] = {"threshold": value, "updated_at": utc_iso(time.time()), "source": source}
        if config_threshold is not UNRECORDED:
            record["config_threshold"] = config_threshold
        write_private_atomic(self.path, json.dumps(record) + "\n")
