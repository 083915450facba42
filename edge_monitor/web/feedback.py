"""People's verdicts on alerts ("false alarm" / "confirmed fault"), kept in the state folder.

One JSON file per machine, ``<state_dir>/feedback-<machine>.json``:
``{"version": 1, "alerts": {EPISODE: {"verdict": ..., "note": ..., "at": ..., "alert_id": ..., "clip": ...}}}``.
Writes are atomic (temporary file, fsync, rename), so a power cut leaves the old or the
new file, never a torn one. A later verdict on the same alert replaces the earlier one.
``edge-monitor train --feedback STATE_DIR`` reads these files (the false alarms' clips).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

from edge_monitor.atomic_file import write_private_atomic
from edge_monitor.events import utc_iso

_LOGGER = logging.getLogger(__name__)

VERDICTS = ("false_alarm", "confirmed")
"""``false_alarm``: the machine was fine; ``confirmed``: it was a real fault."""
MAX_NOTE_CHARS = 500
MAX_ENTRIES = 10_000
"""Oldest verdicts are dropped beyond this (the file stays small on a Pi's SD card)."""


class FeedbackError(ValueError):
    """A verdict that cannot be accepted (one sentence)."""


class FeedbackStore:
    """The verdicts on one machine's alerts. Thread-safe (the web server's threads share it)."""

    def __init__(self, state_dir: Path, machine_id: str) -> None:
        """Read ``<state_dir>/feedback-<machine_id>.json`` if it exists (an unreadable one is logged and kept)."""
        self.path = Path(state_dir) / f"feedback-{machine_id}.json"
        self.machine_id = machine_id
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            _LOGGER.error("%s: cannot read the alert feedback %s (%s); starting empty, the file is kept until "
                          "the next verdict replaces it", self.machine_id, self.path, exc)
            return {}
        alerts = data.get("alerts") if isinstance(data, dict) else None
        if not isinstance(alerts, dict):
            return {}
        return {str(k): v for k, v in alerts.items() if isinstance(v, dict) and v.get("verdict") in VERDICTS}

    def get(self, episode: str) -> Optional[dict[str, Any]]:
        """The verdict on one alert episode, or None."""
        with self._lock:
            entry = self._entries.get(episode)
            return dict(entry) if entry else None

    def counts(self) -> dict[str, int]:
        """How many alerts were marked each way: ``{"false_alarm": N, "confirmed": M}``."""
        with self._lock:
            out = {v: 0 for v in VERDICTS}
            for entry in self._entries.values():
                out[entry["verdict"]] += 1
            return out

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every verdict by episode (a copy)."""
        with self._lock:
            return {k: dict(v) for k, v in self._entries.items()}

    def record(self, episode: str, verdict: str, note: str = "", *, alert_id: str = "",
               clip: Optional[str] = None, clip_path: Optional[str] = None,
               now_s: Optional[float] = None) -> dict[str, Any]:
        """Store a verdict (replacing an earlier one) and return the entry. FeedbackError refuses; OSError on disk."""
        if verdict not in VERDICTS:
            raise FeedbackError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        note = note.strip()
        if len(note) > MAX_NOTE_CHARS:
            raise FeedbackError(f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS}")
        if any(not c.isprintable() and c not in "\n\t" for c in note):
            raise FeedbackError("the note holds control characters")
        entry = {"verdict": verdict, "note": note, "at": utc_iso(time.time() if now_s is None else now_s),
                 "alert_id": alert_id, "clip": clip, "clip_path": clip_path}
        with self._lock:
            entries = dict(self._entries)
            entries.pop(episode, None)
            entries[episode] = entry
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._write(entries)
            self._entries = entries
        return dict(entry)

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"version": 1, "machine": self.machine_id, "alerts": entries}, indent=1)
        write_private_atomic(self.path, text)


def false_alarm_clips(state_dir: Path) -> tuple[list[Path], list[str]]:
    """The clips of every alert marked a false alarm in ``state_dir`` (all machines), and what is missing.

    Returns (existing WAV paths, sorted; one sentence per false alarm whose clip is gone).
    A clip is looked for where it was written, then in ``<state_dir>/clips``.
    """
    found: set[Path] = set()
    missing: list[str] = []
    for path in sorted(Path(state_dir).glob("feedback-*.json")):
        machine = path.stem[len("feedback-"):]
        for episode, entry in FeedbackStore(path.parent, machine).entries().items():
            if entry["verdict"] != "false_alarm":
                continue
            name = entry.get("clip")
            candidates = [Path(p) for p in (entry.get("clip_path"),) if p]
            if name:
                candidates.append(Path(state_dir) / "clips" / Path(name).name)
            clip = next((c for c in candidates if c.is_file()), None)
            if clip is None:
                missing.append(f"{machine}: the false alarm {episode} has no clip "
                               + ("(clips were off)" if not name else f"({name} was deleted by the clip retention)"))
            else:
                found.add(clip)
    return sorted(found), missing
