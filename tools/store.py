"""Emotion events into PostgreSQL (``subscribe --store postgresql://...``), nothing lost on the way.

Every event goes into a local SQLite buffer first (the device's own :class:`~edge.device.spool.Spool`),
and only then is its MQTT message acknowledged; a writer thread moves the buffer's oldest rows into
PostgreSQL in batches, one transaction each, and forgets them only after the commit. So a database
restart or outage costs nothing (events wait in the buffer and are retried with backoff), a killed
subscriber loses nothing (the broker redelivers what was not acknowledged, the buffer keeps what
was), and a batch inserted twice (a commit whose answer was lost) changes nothing: the insert is
``ON CONFLICT DO NOTHING`` on the event id.

Schema (created on first use, kept as it is afterwards):

- ``events``: one row per face event; ``event_id`` unique, ``device`` (its path below the prefix),
  ``ts`` (capture time), ``label``, ``confidence``, ``scores`` (jsonb), ``track_id``, ``model``,
  ``model_version``, ``seq``, ``frame``, ``box``, ``stored_at`` (when the row was inserted: the
  end-to-end latency is ``stored_at - ts``).
- ``emotion_minutes``: the per-minute distribution per device, (``device``, ``minute``, ``label``, ``n``).

Where the TimescaleDB extension is available, ``events`` is a hypertable on ``ts`` and
``emotion_minutes`` a continuous aggregate refreshed every minute (real-time, so the current minute
shows too); a hypertable's unique keys must contain its time column, so there the key is
(``event_id``, ``ts``), which a resent event (same payload) still hits. Elsewhere ``events`` is a plain
table with an index on (``device``, ``ts``), and ``emotion_minutes`` a view over it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from edge.device.spool import Spool
from edge.errors import UserError
from edge.protocol.payloads import encode

BUFFER_EVENTS = 2_000_000
"""Events the local buffer holds while the database is away (about 1 KB each); beyond it the oldest go."""
BATCH = 1000
"""Events per database transaction."""
LOCK = 0x6665_7273  # an advisory lock id: two subscribers creating the schema at once must not collide

COLUMNS = """e(event_id text, device text, ts float8, label text, confidence real, scores jsonb, track_id integer,
              model text, model_version text, seq bigint, frame bigint, box integer[])"""
INSERT = f"""
INSERT INTO events (event_id, device, ts, label, confidence, scores, track_id, model, model_version, seq, frame, box)
SELECT event_id, device, to_timestamp(ts), label, confidence, scores, track_id, model, model_version, seq, frame, box
FROM jsonb_to_recordset(%s::jsonb) AS {COLUMNS}
ON CONFLICT DO NOTHING
"""
TABLE = """
CREATE TABLE IF NOT EXISTS events (
    event_id text NOT NULL, device text NOT NULL, ts timestamptz NOT NULL, label text NOT NULL,
    confidence real NOT NULL, scores jsonb NOT NULL, track_id integer NOT NULL, model text NOT NULL,
    model_version text NOT NULL, seq bigint, frame bigint, box integer[],
    stored_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY ({key}))
"""
MINUTES = "SELECT device, {bucket} AS minute, label, count(*) AS n FROM events GROUP BY device, minute, label"
PLAIN = [TABLE.format(key="event_id"),
         "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts DESC)",
         "CREATE OR REPLACE VIEW emotion_minutes AS " + MINUTES.format(bucket="date_trunc('minute', ts)")]
TIMESCALE = [TABLE.format(key="event_id, ts"),
             "SELECT create_hypertable('events', 'ts', if_not_exists => TRUE)",
             "CREATE INDEX IF NOT EXISTS events_device_ts ON events (device, ts DESC)"]
AGGREGATE = [  # continuous aggregates cannot be created inside a transaction
    "CREATE MATERIALIZED VIEW IF NOT EXISTS emotion_minutes WITH (timescaledb.continuous, "
    "timescaledb.materialized_only = false) AS "
    + MINUTES.format(bucket="time_bucket('1 minute', ts)") + " WITH NO DATA",
    "SELECT add_continuous_aggregate_policy('emotion_minutes', start_offset => INTERVAL '1 hour', "
    "end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)"]


def driver():
    """psycopg, or one line saying how to install it (it is only needed with --store)."""
    try:
        import psycopg
    except ImportError:
        raise UserError('--store needs psycopg 3: pip install -e ".[tools]" (or "psycopg[binary]")') from None
    return psycopg


def where(url: str) -> str:
    """The database URL without its password, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or 'localhost'}{f':{parts.port}' if parts.port else ''}{parts.path}"


def check_url(url: str) -> str:
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise UserError(f"--store {url!r} is not a postgresql://[user@]host[:port]/database URL")
    return url


def connect(url: str, timeout: float = 5.0):
    """A psycopg connection, or one UserError line saying which database could not be reached and why."""
    psycopg = driver()
    try:
        return psycopg.connect(check_url(url), connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"cannot use PostgreSQL at {where(url)}: {reason[:300]}") from None


def default_buffer(session: str) -> Path:
    """The local buffer of one subscriber session (it must survive restarts, so not a temporary folder)."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "fer-edge" / f"{session}.buffer.db"


def setup(conn) -> bool:
    """Create the schema if it is not there; True where ``events`` is a TimescaleDB hypertable."""
    psycopg = driver()
    conn.autocommit = True
    exists = conn.execute("SELECT to_regclass('events') IS NOT NULL").fetchone()[0]
    installed = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]
    if exists:
        timescale = bool(installed) and conn.execute(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'events'"
        ).fetchone()[0] > 0
    else:
        timescale = bool(installed)
        if not installed and conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()[0]:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                timescale = True
            except psycopg.Error as exc:  # e.g. not in shared_preload_libraries, or no right to create it
                print(f"tools subscribe: TimescaleDB is available but not usable ({str(exc).strip()[:200]}); "
                      "using plain tables", file=sys.stderr)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        for statement in TIMESCALE if timescale else PLAIN:
            conn.execute(statement)
    if timescale:
        for statement in AGGREGATE:
            conn.execute(statement)
    conn.autocommit = False
    return timescale


class Store:
    """The buffer and the writer thread behind ``--store``; :meth:`put` returns once the event is on local disk."""

    def __init__(self, url: str, buffer: Path, batch: int = BATCH, retry_max_s: float = 5.0):
        self.url, self.batch, self.retry_max_s = url, batch, retry_max_s
        conn = connect(url)  # a wrong URL or password is one line now, not a retry loop later
        try:
            self.timescale = setup(conn)
        except driver().Error as exc:
            conn.close()
            raise UserError(f"cannot create the tables in {where(url)}: {' '.join(str(exc).split())[:300]}") from None
        self.conn = conn
        self.buffer = Spool(buffer, BUFFER_EVENTS)
        self.stored = self.failed = 0
        self.down_since: float | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def put(self, device: str, event: dict) -> None:
        self.buffer.push(device, encode(event))
        self._wake.set()

    def summary(self) -> str:
        state = "database unavailable, " if self.down_since is not None else ""
        return f"{state}{self.stored} stored, {self.buffer.pending} buffered" + \
            (f", {self.failed} refused by the database" if self.failed else "")

    def _run(self) -> None:
        """Move buffered events into the database until stopped; reconnect with backoff while it is away."""
        psycopg = driver()
        delay = 0.2
        while not self._stop.is_set():
            rows = self.buffer.after(0, self.batch)
            if not rows:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.url, connect_timeout=5)
                self._insert(rows)
            except psycopg.OperationalError as exc:
                self._lost(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.down_since is not None:
                away = time.monotonic() - self.down_since
                print(f"tools subscribe: database {where(self.url)} is back after {away:.0f} s", file=sys.stderr)
                self.down_since = None
            delay = 0.2
            self.buffer.ack([seq for seq, _, _ in rows])

    def _insert(self, rows: list[tuple[int, str, bytes]]) -> None:
        """One transaction for the batch; a row the database refuses (a value out of range) is counted and skipped."""
        psycopg = driver()
        from psycopg.types.json import Jsonb

        records = [_record(device, payload) for _, device, payload in rows]
        refused = 0
        try:
            with self.conn.transaction():
                self.conn.execute(INSERT, (Jsonb(records),))
        except (psycopg.DataError, psycopg.IntegrityError):
            for record in records:  # find the bad rows; the others go in one by one
                try:
                    with self.conn.transaction():
                        self.conn.execute(INSERT, (Jsonb([record]),))
                except (psycopg.DataError, psycopg.IntegrityError) as exc:
                    refused += 1
                    print(f"tools subscribe: the database refused event {record['event_id']}: "
                          f"{' '.join(str(exc).split())[:200]}", file=sys.stderr)
        self.stored += len(records) - refused
        self.failed += refused

    def _lost(self, exc: Exception) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        if self.down_since is None:
            self.down_since = time.monotonic()
            print(f"tools subscribe: database {where(self.url)} unavailable ({' '.join(str(exc).split())[:200]}); "
                  f"events wait in the local buffer and are retried", file=sys.stderr)

    def close(self, drain_s: float = 10.0) -> None:
        """Give the writer up to ``drain_s`` to empty the buffer; what remains is stored on the next start."""
        end = time.monotonic() + drain_s
        while self.buffer.pending and time.monotonic() < end and self._thread.is_alive():
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        if self.buffer.pending:
            print(f"tools subscribe: {self.buffer.pending} events stay in the local buffer for the next start",
                  file=sys.stderr)
        self.buffer.close()
        if self.conn is not None:
            self.conn.close()


def _record(device: str, payload: bytes) -> dict:
    """A buffered event as the row ``INSERT`` reads (the device path from the topic, the model split in two)."""
    event = json.loads(payload)
    model = event.get("model") or {}
    return {"event_id": event["event_id"], "device": device, "ts": event["ts"], "label": event["label"],
            "confidence": event["confidence"], "scores": event["scores"], "track_id": event["track_id"],
            "model": model.get("id"), "model_version": model.get("version"), "seq": event.get("seq"),
            "frame": event.get("frame"), "box": event.get("box")}


def timeline(conn, minutes: int) -> dict[str, list[dict]]:
    """Per device, the last ``minutes`` minutes' label counts: ``{device: [{"minute": epoch, "counts": {...}}]}``."""
    rows = conn.execute("SELECT device, extract(epoch FROM minute)::float8, label, n FROM emotion_minutes "
                        "WHERE minute >= date_trunc('minute', now()) - make_interval(mins => %s) "
                        "ORDER BY device, minute", (minutes,)).fetchall()
    conn.rollback()  # a read: end the transaction so the next call sees new rows
    found: dict[str, dict[float, dict]] = {}
    for device, minute, label, n in rows:
        found.setdefault(device, {}).setdefault(minute, {})[label] = n
    return {d: [{"minute": m, "counts": c} for m, c in sorted(v.items())] for d, v in found.items()}
