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
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge.device.spool import Spool
from edge.errors import UserError, printable
from edge.protocol.payloads import MAX_PAYLOAD_BYTES, PayloadError, encode
from tools.inbound import MAX_ENTRIES, MAX_TEXT, RateLimitedLog, check_device_path, unstorable

log = logging.getLogger("tools.store")

BUFFER_EVENTS = 2_000_000
"""Events the local buffer holds while the database is away (about 1 KB each); beyond it the oldest go."""
BATCH = 1000
"""Events per database transaction."""
LOCK = 0x6665_7273  # an advisory lock id: two subscribers creating the schema at once must not collide
INTEGER = {"track_id": 2**31 - 1, "seq": 2**63 - 1, "frame": 2**63 - 1}
"""The largest value of each whole-number column (``integer``, ``bigint``); ``box`` is ``integer[]``."""
TS_RANGE = (0.0, 32_503_680_000.0)
"""Capture times the table takes: 1970 to the year 3000 (``to_timestamp`` refuses far beyond)."""
ROW_ERRORS = {"22", "23", "54"}
"""SQLSTATE classes that condemn a row, not the database: data exception, integrity constraint, program limit
exceeded (an index row too large: psycopg files that one under OperationalError, which is not an outage)."""
RETRY_ERRORS = {"08", "40", "53", "57", "58", "XX"}
"""SQLSTATE classes that say nothing about the rows (connection, rollback, resources, operator, system): retry."""
PASSWORD_IN_URL = ("--store URL carries a password, which every `ps` shows: put it in $PGPASSWORD, ~/.pgpass, or a "
                   "password file named by $PGPASSFILE (mode 600), and give postgresql://[user@]host[:port]/database")

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
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":?"
    return printable(f"{parts.scheme}://{parts.hostname or 'localhost'}{port}{parts.path}")


def check_url(url: str) -> str:
    """``url`` if it is a postgresql:// URL without a password (in its user part or as ``?password=``), else one
    line that does not repeat the password. The same rule as the broker's URL (``mqtt.broker``)."""
    try:
        parts = urlsplit(url)
        secret = parts.password is not None or "password" in parse_qs(parts.query)
    except ValueError:  # an unclosed IPv6 bracket
        raise UserError("--store is not a postgresql://[user@]host[:port]/database URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise UserError(f"--store {where(url)!r} is not a postgresql://[user@]host[:port]/database URL")
    if secret:
        raise UserError(PASSWORD_IN_URL)
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
                log.warning("TimescaleDB is available but not usable (%s); using plain tables", _reason(exc))
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        for statement in TIMESCALE if timescale else PLAIN:
            conn.execute(statement)
    if timescale:
        for statement in AGGREGATE:
            conn.execute(statement)
    conn.autocommit = False
    return timescale


class Buffer(Spool):
    """The device's spool, with a batch in one transaction each way: ``push_many`` for a subscriber batch, ``ack``
    for a committed database batch (the spool's own ``ack`` commits each row alone, a thousand commits per batch
    that the subscriber's pushes wait behind)."""

    def push_many(self, rows: list[tuple[str, bytes]]) -> None:
        if not rows:
            return
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO events (topic, payload) VALUES (?, ?)", rows)
            self._count += len(rows)
            excess = self._count - self.max_events
            if excess > 0:
                self._count -= excess
                self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))

    def ack(self, seqs: list[int]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._count -= self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs]).rowcount


@dataclass
class Row:
    """One buffered event on its way to the table: its place in the buffer and the record ``INSERT`` reads."""

    seq: int
    event_id: str
    record: dict


class Store:
    """The buffer and the writer thread behind ``--store``; :meth:`put` returns once the event is on local disk.

    The writer tells a bad row from a bad database. A row that breaks the table's rules (checked here first: the
    event's schema and bounds, the columns' ranges; then whatever PostgreSQL still refuses, such as an index row too
    large or a constraint an administrator added) is refused alone: logged (rate-limited), counted in ``failed`` and
    forgotten, while the rest of its batch goes in. Anything else (the connection, a restart, a full disk, a
    deadlock) is an outage: nothing is forgotten, and the batch is retried with backoff. A row leaves the buffer only
    when its transaction committed or it was refused, so every storable event is stored exactly once."""

    def __init__(self, url: str, buffer: Path, batch: int = BATCH, retry_max_s: float = 5.0):
        self.url, self.batch, self.retry_max_s = url, batch, retry_max_s
        conn = connect(url)  # a wrong URL or password is one line now, not a retry loop later
        try:
            self.timescale = setup(conn)
        except driver().Error as exc:
            conn.close()
            raise UserError(f"cannot create the tables in {where(url)}: {' '.join(str(exc).split())[:300]}") from None
        self.conn = conn
        self.buffer = Buffer(buffer, BUFFER_EVENTS)
        self.stored = self.failed = 0
        self.down_since: float | None = None
        self._say_refused = RateLimitedLog(log.warning)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def put(self, device: str, event: dict) -> None:
        self.put_many([(device, event)])

    def put_many(self, events: list[tuple[str, dict]]) -> None:
        """Buffer ``(device, event)`` pairs in one local transaction (one commit per subscriber batch, not per event:
        a per-event SQLite commit cost about half a millisecond, the subscriber's largest cost under load)."""
        self.buffer.push_many([(device, encode(event)) for device, event in events])
        self._wake.set()

    def summary(self) -> str:
        state = "database unavailable, " if self.down_since is not None else ""
        return f"{state}{self.stored} stored, {self.buffer.pending} buffered" + \
            (f", {self.failed} refused" if self.failed else "")

    def _run(self) -> None:
        """Move buffered events into the database until stopped; reconnect with backoff while it is away."""
        psycopg = driver()
        delay = 0.2
        while not self._stop.is_set():
            rows = self._checked(self.buffer.after(0, self.batch))
            if rows is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if rows:
                    if self.conn is None or self.conn.closed:
                        self.conn = psycopg.connect(self.url, connect_timeout=5)
                    self._store(rows)
            except psycopg.Error as exc:
                self._lost(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.down_since is not None:
                away = time.monotonic() - self.down_since
                log.warning("database %s is back after %.0f s", where(self.url), away)
                self.down_since = None
            delay = 0.2

    def _checked(self, buffered: list[tuple[int, str, bytes]]) -> list[Row] | None:
        """The buffered events that may go to the database (None: the buffer is empty); the others are refused now,
        before they cost a transaction."""
        if not buffered:
            return None
        rows = []
        for seq, device, payload in buffered:
            try:
                record = _record(device, payload)
            except PayloadError as exc:
                self._refuse(seq, _event_id(payload), str(exc))
                continue
            rows.append(Row(seq, record["event_id"], record))
        return rows

    def _store(self, rows: list[Row]) -> None:
        """Insert ``rows`` in one transaction; where one of them is at fault, split the batch until that row is
        alone and refuse it. Raises :class:`psycopg.Error` for whatever is not a row's fault (an outage)."""
        psycopg = driver()
        parts, doubtful, committed = [rows], [], False
        while parts:
            part = parts.pop()
            try:
                self._insert(part)
                committed = True
            except psycopg.Error as exc:
                if not self._row_fault(exc):
                    raise
                if len(part) > 1:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]  # the older half first
                elif (exc.sqlstate or "")[:2] in ROW_ERRORS:
                    self._refuse(part[0].seq, part[0].event_id, _reason(exc))
                else:
                    doubtful.append((part[0], exc))
        if doubtful and not committed:
            raise doubtful[0][1]  # no row went in: the table or our rights are at fault, not these rows
        for row, exc in doubtful:  # others went in beside them: it is these rows
            self._refuse(row.seq, row.event_id, _reason(exc))

    def _row_fault(self, exc: Exception) -> bool:
        """Whether the database refused what it was given (a row may be at fault), as opposed to an outage."""
        psycopg = driver()
        state = getattr(exc, "sqlstate", None)
        return not (isinstance(exc, psycopg.InterfaceError) or self.conn is None or self.conn.broken
                    or state is None or state[:2] in RETRY_ERRORS)

    def _insert(self, rows: list[Row]) -> None:
        """One transaction for ``rows``; forgotten from the buffer once it committed."""
        from psycopg.types.json import Jsonb

        with self.conn.transaction():
            cursor = self.conn.execute(INSERT, (Jsonb([row.record for row in rows]),))
        self.stored += max(cursor.rowcount, 0)  # a resent event (already stored) is not counted twice
        self.buffer.ack([row.seq for row in rows])

    def _refuse(self, seq: int, event_id: str, reason: str) -> None:
        """Forget one event that can never be stored, with one (rate-limited) line saying why."""
        self.failed += 1
        self.buffer.ack([seq])
        self._say_refused(f"refused event {printable(event_id, 80)} ({self.failed} so far), the others go on: "
                          f"{printable(reason)}")

    def _lost(self, exc: Exception) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database %s unavailable (%s); events wait in the local buffer and are retried",
                        where(self.url), _reason(exc))

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
            log.warning("%d events stay in the local buffer for the next start", self.buffer.pending)
        self.buffer.close()
        if self.conn is not None:
            self.conn.close()


def _reason(exc: Exception) -> str:
    """A database error as one short line."""
    return printable(" ".join(str(exc).split()) or type(exc).__name__)


def _event_id(payload: bytes) -> str:
    """The event id of a buffered payload for a message, whatever the payload is."""
    try:
        return str(json.loads(payload).get("event_id"))
    except (ValueError, AttributeError):
        return "(unreadable)"


def _record(device: str, payload: bytes) -> dict:
    """A buffered event as the row ``INSERT`` reads (the device path from the topic, the model split in two), or one
    PayloadError line. The subscriber's gate checked its schema and bounds before it was buffered; what is checked
    again here is what the table needs, field by field (the generic schema walk cost the writer more than the
    database did): the fields there at all with their types, bounded strings without NUL or lone surrogates, finite
    numbers, the columns' ranges (a buffer written by an older version, or damaged, must not stop the writer)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes is larger than the limit of {MAX_PAYLOAD_BYTES}")
    try:
        event = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"not JSON: {printable(exc, 120)}") from None
    check_device_path(device)
    try:
        model, box, scores = event["model"], event["box"], event["scores"]
        record = {"event_id": event["event_id"], "device": device, "ts": event["ts"], "label": event["label"],
                  "confidence": event["confidence"], "scores": scores, "track_id": event["track_id"],
                  "model": model["id"], "model_version": model["version"], "seq": event["seq"],
                  "frame": event["frame"], "box": box}
        for key in ("event_id", "label", "model", "model_version"):
            _text(key, record[key])
        if not isinstance(scores, dict) or not 0 < len(scores) <= MAX_ENTRIES:
            raise PayloadError("scores is not an object of 1 to 256 class scores")
        for name, value in scores.items():
            _text("a class name", name)
            _number(f"score {printable(name, 40)}", value, 0.0, 1.0)
        _number("confidence", record["confidence"], 0.0, 1.0)
        _number("ts", record["ts"], *TS_RANGE)
        for key, top in INTEGER.items():
            if type(record[key]) is not int or not 0 <= record[key] <= top:
                raise PayloadError(f"{key} {printable(record[key], 40)} is outside what the column takes (0 to {top})")
        if not isinstance(box, list) or len(box) != 4 or \
                not all(type(v) is int and 0 <= v <= INTEGER["track_id"] for v in box):
            raise PayloadError(f"box {printable(box, 80)} has a value outside what the column takes")
    except (KeyError, TypeError) as exc:
        raise PayloadError(f"not an event as the table needs it ({printable(exc, 80)})") from None
    return record


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _text(what: str, value: object) -> None:
    if not isinstance(value, str):
        raise PayloadError(f"{what} is not a string")
    if len(value) > MAX_TEXT:
        raise PayloadError(f"{what} of {len(value)} characters, more than {MAX_TEXT}")
    if (why := unstorable(value)) is not None:
        raise PayloadError(f"{what} has {why}")


def _number(what: str, value: object, low: float, high: float) -> None:
    if type(value) not in (int, float) or not low <= value <= high:  # NaN and the infinities fail the comparison
        raise PayloadError(f"{what} {printable(value, 40)} is not a number from {low:g} to {high:g}")


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
