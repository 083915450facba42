"""A durable, bounded queue of alert messages in SQLite (WAL mode).

Every alert is committed here before it is handed to the MQTT client and
removed only when the broker has acknowledged it (PUBACK). Entries carry a
monotonically increasing sequence number (SQLite ``AUTOINCREMENT`` never
reuses one, even after deletes or a restart), so pending alerts are always
replayed in the order they were raised.

One process at a time: the outbox holds an exclusive ``flock`` on
``<file>.lock`` while it is open, so two daemons configured with the same
file fail loudly instead of double-publishing.

The database is created 0600 whatever the umask (SQLite gives its ``-wal`` and
``-shm`` files the database's mode), and an existing one is tightened to 0600.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS alerts ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " payload TEXT NOT NULL,"
    " created_at_s REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class OutboxError(Exception):
    """The outbox file cannot be opened or used."""


@dataclasses.dataclass(frozen=True)
class OutboxEntry:
    """One pending alert: its sequence number, alert id and JSON payload."""

    seq: int
    id: str
    payload: str


class Outbox:
    """Durable FIFO of alert payloads, bounded to ``max_alerts`` (the oldest are dropped beyond). Thread-safe."""

    def __init__(self, path: Path, max_alerts: int) -> None:
        """Open (or create) the outbox at ``path``. Raises OutboxError if another process holds it."""
        if max_alerts < 1:
            raise ValueError(f"max_alerts must be >= 1, got {max_alerts}")
        self.path = Path(path)
        self.max_alerts = int(max_alerts)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_file_lock(self.path.with_name(self.path.name + ".lock"))
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._depth = self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        self._dropped_total = self._counter("dropped")
        if self._depth:
            _LOGGER.info("outbox %s holds %d unacknowledged alert(s) from a previous run", self.path, self._depth)

    def _open(self) -> sqlite3.Connection:
        """Connect, and move a corrupt file aside rather than refusing to start."""
        try:
            return _connect(self.path)
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            _LOGGER.error("outbox %s is unreadable (%s); moved it to %s and starting an empty one",
                          self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            try:
                return _connect(self.path)
            except sqlite3.DatabaseError as exc2:
                raise OutboxError(f"cannot create outbox {self.path}: {exc2}") from None

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def add(self, alert_id: str, payload: str) -> int:
        """Commit one alert and return its sequence number.

        An alert id already in the outbox is not stored twice (its existing
        sequence number is returned). When the outbox is full, the oldest
        entries are dropped, counted and logged.
        """
        with self._lock:
            db = self._db
            with db:
                cur = db.execute(
                    "INSERT OR IGNORE INTO alerts (id, payload, created_at_s) VALUES (?, ?, ?)",
                    (alert_id, payload, time.time()))
                if cur.rowcount == 0:
                    return int(db.execute("SELECT seq FROM alerts WHERE id = ?", (alert_id,)).fetchone()[0])
                assert cur.lastrowid is not None  # a row was inserted
                seq = int(cur.lastrowid)
                excess = self._depth + 1 - self.max_alerts
                if excess > 0:
                    dropped = db.execute(
                        "DELETE FROM alerts WHERE seq IN (SELECT seq FROM alerts ORDER BY seq LIMIT ?)",
                        (excess,)).rowcount
                    db.execute(
                        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (dropped,))
                else:
                    dropped = 0
            self._depth += 1 - dropped
            self._dropped_total += dropped
        if dropped:
            _LOGGER.warning("outbox full (%d alerts): dropped the %d oldest; %d dropped in total",
                            self.max_alerts, dropped, self._dropped_total)
        return seq

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[OutboxEntry]:
        """Up to ``limit`` entries with a sequence number above ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, payload FROM alerts WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()
        return [OutboxEntry(int(seq), alert_id, payload) for seq, alert_id, payload in rows]

    def remove(self, seq: int) -> bool:
        """Delete an acknowledged entry. False when it was already gone (dropped or removed)."""
        with self._lock:
            with self._db:
                removed = self._db.execute("DELETE FROM alerts WHERE seq = ?", (seq,)).rowcount
            self._depth -= removed
        return bool(removed)

    @property
    def depth(self) -> int:
        """Number of alerts waiting for a PUBACK."""
        return self._depth

    @property
    def dropped_total(self) -> int:
        """Alerts dropped because the outbox was full, over the file's whole life."""
        return self._dropped_total

    def close(self) -> None:
        """Close the database and release the file lock. Safe to call twice."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.close()
            finally:
                self._db = None  # type: ignore[assignment]
                os.close(self._lock_fd)


FILE_MODE = 0o600


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if it does not exist, and make it 0600 if it does (alert payloads are private)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        try:
            os.chmod(side, FILE_MODE)
        except FileNotFoundError:
            pass


def _connect(path: Path) -> sqlite3.Connection:
    """Open the database in WAL mode with full fsync and create the tables."""
    _private_file(path)
    # Autocommit mode; transactions are opened explicitly with `with db:`.
    db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed alert survives a power cut, not only a crash of the process.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
        db.execute("SELECT COUNT(*) FROM alerts").fetchone()
    except BaseException:
        db.close()
        raise
    # `with db:` needs the sqlite3 module's own transaction handling.
    db.isolation_level = "DEFERRED"
    return db


def _acquire_file_lock(lock_path: Path) -> int:
    """Take an exclusive, non-blocking flock on ``lock_path``; raise OutboxError if another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxError(
            f"outbox {lock_path.with_suffix('')} is already in use by another process "
            "(two daemons configured for the same machine or outbox_path?)") from None
    return fd

