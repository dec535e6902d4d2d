"""Watch devices' emotion streams: a live table, a de-duplicated recording, per-minute aggregates.

Devices deliver events at least once (their outage spool resends after a reconnect), so events
are de-duplicated by event id. With ``--share GROUP`` the ``events`` subscription is the MQTT 5
shared subscription ``$share/GROUP/...``: several subscriber processes split a large fleet's
events between them. ``availability``, ``state`` and ``stats`` are small and retained or periodic,
so every process subscribes to them directly and its table stays complete.

Nothing the broker delivered is lost on this side. With ``--record`` or ``--store`` the subscriber
holds a persistent MQTT 5 session (``--session``, by default a name derived from what it writes), so
the broker queues its events while it is down, and it acknowledges each message only after the
recording was written (flushed) or the event sat in the store's local buffer: a subscriber killed
between delivery and acknowledgement gets the message again, and the event id de-duplicates it.
"""

from __future__ import annotations

import csv
import hashlib
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from edge import CLASS_NAMES
from edge.errors import UserError, printable
from edge.protocol.topics import AVAILABILITY, EVENTS, STATE, STATS, Target
from tools.inbound import MAX_DEVICES, Gate, RecentDevices
from tools.mqtt_client import Connection
from tools.recording import Recorder, event_row, spreadsheet_row

if TYPE_CHECKING:
    from tools.store import Store

SEEN_IDS = 100_000
BATCH = 500
"""Messages handled, written and then acknowledged together (one flush per batch, not per message)."""


@dataclass
class DeviceView:
    """One table row: what the newest messages from a device said."""

    online: str = "?"
    faces: int | None = None
    emotion: str = ""
    confidence: float | None = None
    fps: float | None = None
    model: str = ""
    events: int = 0
    last_minute: str = ""


@dataclass
class MinuteAggregates:
    """Emotion counts per device per minute of device time; a minute closes when a later one starts.

    Each device delivers its events in order (spooled ones included), so a device's minute is
    complete once one of its events from a later minute arrives."""

    open: dict[str, tuple[int, Counter]] = field(default_factory=dict)

    def add(self, device: str, ts: float, label: str) -> list[dict]:
        minute = int(ts // 60)
        closed = []
        if device in self.open and self.open[device][0] != minute:
            closed.append(self._row(device, *self.open.pop(device)))
        self.open.setdefault(device, (minute, Counter()))[1][label] += 1
        return closed

    def close(self, device: str) -> list[dict]:
        """Close one device's open minute now (the device is no longer tracked)."""
        return [self._row(device, *self.open.pop(device))] if device in self.open else []

    def close_all(self) -> list[dict]:
        rows = [self._row(d, *v) for d, v in self.open.items()]
        self.open.clear()
        return rows

    @staticmethod
    def _row(device: str, minute: int, counts: Counter) -> dict:
        n = sum(counts.values())
        start = datetime.fromtimestamp(minute * 60, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        return {"minute": start, "device": device, "n": n, **{c: round(counts[c] / n, 4) for c in CLASS_NAMES}}


class Subscriber:
    """Folds the devices' messages into table rows, a recording, a database and minute aggregates.

    Every message passes :class:`tools.inbound.Gate` first: one whose topic or payload is not what the contract
    allows (its JSON Schema, bounded strings) is dropped, counted (``invalid``) and logged, rate-limited, so one
    malformed or hostile publisher can neither stop this process nor stall a database batch or break a
    recording's columns. The table keeps the ``max_devices`` most recently heard devices."""

    def __init__(self, prefix: str, target: Target, record: Path | None = None, rotate_mb: float | None = None,
                 store: Store | None = None, max_devices: int = MAX_DEVICES):
        self.prefix, self.target, self.store = prefix, target, store
        self.gate = Gate(prefix, (AVAILABILITY, EVENTS, STATE, STATS), target)
        self.devices = RecentDevices(max_devices)
        self.recorder = Recorder(record, rotate_mb) if record else None
        self.seen: OrderedDict[str, None] = OrderedDict.fromkeys(self.recorder.recent_ids(SEEN_IDS) if record else [])
        self.duplicates = 0
        self.to_store: list[tuple[str, dict]] = []
        """Events of the messages handled since the last :meth:`flush`, for the store's buffer in one transaction."""
        self.aggregates = MinuteAggregates()
        self.minutes_path = record.with_name(f"{record.stem}.minutes.csv") if record else None
        self.minutes_file: TextIO | None = None
        self.minutes_writer: csv.DictWriter | None = None

    @property
    def invalid(self) -> int:
        """Messages dropped because their topic or payload broke the contract."""
        return self.gate.total

    def handle(self, topic: str, body: bytes) -> None:
        message = self.gate.admit(topic, body)
        if message is None:
            return
        view, gone = self.devices.touch(message.device, lambda _: DeviceView())
        for device in gone:
            self._minutes(self.aggregates.close(device))
        payload = message.payload
        if message.kind == AVAILABILITY:
            view.online = payload
        elif message.kind == EVENTS:
            self._event(message.device, view, payload)
        elif message.kind == STATE:
            overall = payload["overall"]
            view.faces, view.emotion, view.confidence = overall["faces"], overall["label"], overall["confidence"]
            view.model = payload["model"]["version"] or view.model
        elif message.kind == STATS:
            view.fps, view.model = payload["fps"], payload["model_version"] or view.model

    def _event(self, device: str, view: DeviceView, event: dict) -> None:
        event_id = event["event_id"]
        if event_id in self.seen:
            self.duplicates += 1
            return
        self.seen[event_id] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        row = event_row(device, event)
        view.events += 1
        view.model = row["model_version"] or view.model
        if self.recorder:
            self.recorder.write(row)
        if self.store:
            self.to_store.append((device, event))
        self._minutes(self.aggregates.add(device, row["ts"], row["label"]))

    def _minutes(self, rows: list[dict]) -> None:
        for row in rows:
            top = sorted(CLASS_NAMES, key=lambda c: -row[c])[:2]
            if row["device"] in self.devices:
                self.devices[row["device"]].last_minute = " ".join(f"{c} {row[c]:.0%}" for c in top if row[c])
            if self.minutes_path:
                if self.minutes_writer is None:  # appended: a restart adds rows (a minute it splits has two)
                    fresh = not self.minutes_path.exists() or self.minutes_path.stat().st_size == 0
                    self.minutes_file = open(self.minutes_path, "a", newline="")
                    self.minutes_writer = csv.DictWriter(self.minutes_file, list(row))
                    if fresh:
                        self.minutes_writer.writeheader()
                self.minutes_writer.writerow(spreadsheet_row(row))
                self.minutes_file.flush()

    def flush(self) -> None:
        """Make what was handled so far durable; its messages may be acknowledged after this."""
        if self.recorder:
            self.recorder.flush()
        if self.store and self.to_store:
            self.store.put_many(self.to_store)
            self.to_store = []

    def close(self) -> None:
        self.flush()
        self._minutes(self.aggregates.close_all())
        if self.recorder:
            self.recorder.close()
        if self.store:
            self.store.close()
        if self.minutes_file is not None:
            self.minutes_file.close()

    def table(self) -> str:
        header = ("device", "status", "faces", "emotion", "conf", "fps", "model", "events", "last minute")
        rows = [tuple(printable(cell, 64) for cell in (d, v.online, _fmt(v.faces), v.emotion, _fmt(v.confidence, "{:.2f}"),
                                                       _fmt(v.fps, "{:.1f}"), v.model, str(v.events), v.last_minute))
                for d, v in sorted(self.devices.items())]  # printable: a label's escape sequence must not drive the terminal
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        footer = f"{sum(v.events for v in self.devices.values())} events, {self.duplicates} duplicates dropped"
        if self.invalid:
            footer += f", {self.invalid} invalid messages dropped"
        if self.store:
            footer += f"; {self.store.summary()}"
        return "\n".join(lines + [footer])


def _fmt(value, pattern: str = "{}") -> str:
    return "" if value is None else pattern.format(value)


def default_session(target: Target, prefix: str, record: Path | None, store: str | None, share: str | None) -> str:
    """A stable session name for what this subscriber writes, so a restart resumes the same broker session."""
    key = "|".join(map(str, (socket.gethostname(), prefix, target.text, share, record and record.resolve(),
                             store and store.split("@")[-1])))
    return f"fer-sub-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def subscribe(broker: str, target: Target, prefix: str = "fer", record: Path | None = None,
              rotate_mb: float | None = None, share: str | None = None, duration: float | None = None,
              out: TextIO = sys.stdout, refresh_s: float = 1.0, protocol: str = "5",
              running: Callable[[], bool] = lambda: True, store: str | None = None, session: str | None = None,
              buffer: Path | None = None, max_devices: int = MAX_DEVICES) -> Subscriber:
    """Run until ``duration`` seconds pass, Ctrl-C, SIGTERM or ``running()`` turns false; redraw the table on a
    terminal, print it once otherwise."""
    if share and protocol != "5":
        raise UserError("shared subscriptions (--share) need MQTT 5")
    keep = bool(record or store)
    if keep and protocol == "5":
        session = session or default_session(target, prefix, record, store, share)
    elif session:
        raise UserError("--session needs MQTT 5 and something to keep (--record or --store)")
    elif keep:
        print("tools subscribe: with MQTT 3.1.1 the broker keeps no events for this subscriber while it is down",
              file=sys.stderr)
    sink = None
    if store:
        from tools.store import Store, default_buffer

        sink = Store(store, buffer or default_buffer(session or "fer-sub"))
    subscriber = Subscriber(prefix, target, record, rotate_mb, sink, max_devices)
    try:
        conn = Connection(broker, "tools-subscribe", protocol=protocol, session=session, manual_ack=keep)
    except BaseException:
        subscriber.close()
        raise
    if session:
        print(f"tools subscribe: session {session} (the broker keeps its events while it is down)", file=sys.stderr)
    events = target.topic_filter(prefix, "events")
    conn.subscribe(*(target.topic_filter(prefix, k) for k in ("availability", "state", "stats")),
                   f"$share/{share}/{events}" if share else events)
    live, end = out.isatty(), time.monotonic() + duration if duration else float("inf")
    redraw = time.monotonic() if live else float("inf")
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    # SIGINT too sets the event the loop checks at least once a second, rather than raising KeyboardInterrupt
    # wherever the main thread happens to be (inside a lock, a flush or the MQTT client), which can leave the close
    # below waiting on a lock nobody will release
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        while time.monotonic() < end and running() and not stop.is_set():
            message = conn.receive(min(end, redraw, time.monotonic() + 1) - time.monotonic())
            batch = []
            while message is not None:
                batch.append(message)
                subscriber.handle(message.topic, message.payload)
                message = conn.receive(0) if len(batch) < BATCH else None
            subscriber.flush()
            for message in batch:
                conn.ack(message)
            if live and time.monotonic() >= redraw:
                out.write("\x1b[H\x1b[J" + subscriber.table() + "\n")
                out.flush()
                redraw = time.monotonic() + refresh_s
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()  # what is still queued is kept; unacknowledged, the broker sends it again next time
        while (message := conn.get(0)) is not None:
            subscriber.handle(*message)
        subscriber.close()
    if not live:
        out.write(subscriber.table() + "\n")
    return subscriber
