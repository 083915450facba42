"""Persist a threshold set at run time so that it survives a restart.

The value lives in ``<state_dir>/threshold-<machine>.json`` as
``{"threshold": 0.42, "updated_at": "2024-...Z", "source": "mqtt"}``. Writes are
atomic (temporary file, fsync, rename, fsync of the folder), so a crash or a
power cut leaves either the old or the new value, never a torn file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from edge_monitor.events import utc_iso

_LOGGER = logging.getLogger(__name__)

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
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            _LOGGER.warning("ignoring saved threshold %s: cannot read it (%s)", self.path, exc.strerror)
            return None
        try:
            value = float(json.loads(text)["threshold"])
        except (ValueError, KeyError, TypeError):
            _LOGGER.warning("ignoring saved threshold %s: not a JSON object with a numeric 'threshold'", self.path)
            return None
        if not is_valid_threshold(value):
            _LOGGER.warning("ignoring saved threshold %s: %r is not in (0, %g]", self.path, value, THRESHOLD_MAX)
            return None
        return value

    def save(self, value: float, source: str = "mqtt") -> None:
        """Atomically replace the saved threshold. Raises ValueError for an invalid value, OSError on disk errors."""
        value = float(value)
        if not is_valid_threshold(value):
            raise ValueError(f"threshold {value!r} is not a finite number in (0, {THRESHOLD_MAX:g}]")
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"threshold": value, "updated_at": utc_iso(time.time()), "source": source})
        fd, tmp_name = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            raise
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
