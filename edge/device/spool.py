"""The outage queue: every event is written here first and deleted only once the broker acknowledged it.

Writing every event to disk first (not only while offline) gives one delivery path with one order:
the MQTT link always sends the oldest unacknowledged rows, so events produced during an outage,
or before a power cut, are delivered in order once the broker is back. The queue is bounded by
``spool.max_events``: beyond it the oldest events are deleted and counted (``dropped``, reported
in ``stats``), because the newest emotions matter most when the outage ends. Delivery is at least
once: an event whose acknowledgement was lost is sent again, so subscribers de-duplicate by event id.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from edge.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('dropped', 0);
"""


class Spool:
    """A bounded FIFO of (topic, payload) rows in SQLite, safe to use from several threads."""

    def __init__(self, path: str | Path, max_events: int):
        self.max_events = max_events
        if Path(path).is_dir():
            raise UserError(f"spool.path {path} is a folder: name a file (e.g. {Path(path) / 'spool.db'})")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # appends without rewriting the file: cheap, survives power loss
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot use spool.path {path}: {exc}") from None
        self._lock = threading.Lock()
        self._count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]  # counting per push would scan

    def push(self, topic: str, payload: bytes) -> None:
        """Append one event; at the bound, delete (and count) the oldest."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO events (topic, payload) VALUES (?, ?)", (topic, payload))
            self._count += 1
            excess = self._count - self.max_events
            if excess > 0:
                self._count -= excess
                self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))

    def after(self, seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` rows with a sequence number above ``seq``, oldest first."""
        with self._lock:
            return self._db.execute("SELECT seq, topic, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit)).fetchall()

    def ack(self, seqs: list[int]) -> None:
        """Forget rows the broker has acknowledged."""
        with self._lock:
            self._count -= self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs]).rowcount

    @property
    def pending(self) -> int:
        return self._count

    @property
    def dropped(self) -> int:
        """Events deleted at the bound since the spool file was created."""
        with self._lock:
            return self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
