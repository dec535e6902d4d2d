"""Watch devices' emotion streams: a live table, a de-duplicated recording, per-minute aggregates.

Devices deliver events at least once (their outage spool resends after a reconnect), so events
are de-duplicated by event id. With ``--share GROUP`` the ``events`` subscription is the MQTT 5
shared subscription ``$share/GROUP/...``: several subscriber processes split a large fleet's
events between them. ``availability``, ``state`` and ``stats`` are small and retained or periodic,
so every process subscribes to them directly and its table stays complete.
"""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TextIO

from edge import CLASS_NAMES
from edge.errors import UserError
from edge.protocol.payloads import decode
from edge.protocol.topics import Target
from tools.mqtt_client import Connection
from tools.recording import Recorder, event_row

SEEN_IDS = 100_000


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
    """Folds the devices' messages into table rows, a recording and minute aggregates."""

    def __init__(self, prefix: str, target: Target, record: Path | None = None, rotate_mb: float | None = None):
        self.prefix, self.target = prefix, target
        self.devices: dict[str, DeviceView] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.aggregates = MinuteAggregates()
        self.recorder = Recorder(record, rotate_mb) if record else None
        self.minutes_path = record.with_name(f"{record.stem}.minutes.csv") if record else None
        self.minutes_file: TextIO | None = None
        self.minutes_writer: csv.DictWriter | None = None

    def handle(self, topic: str, body: bytes) -> None:
        match = self.target.device_of(self.prefix, topic)
        if match is None:
            return
        device, kind = match
        view, payload = self.devices.setdefault(device, DeviceView()), decode(body)
        if kind == "availability":
            view.online = payload.get("status", "?") if isinstance(payload, dict) else payload
        elif not isinstance(payload, dict):
            return
        elif kind == "events":
            self._event(device, view, payload)
        elif kind == "state":
            overall = payload.get("overall") or {}
            view.faces, view.emotion, view.confidence = overall.get("faces"), overall.get("label", ""), overall.get("confidence")
            view.model = (payload.get("model") or {}).get("version") or view.model
        elif kind == "stats":
            view.fps, view.model = payload.get("fps"), payload.get("model_version") or view.model

    def _event(self, device: str, view: DeviceView, event: dict) -> None:
        event_id = str(event.get("event_id"))
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
        if row["ts"] is not None and row["label"]:
            self._minutes(self.aggregates.add(device, row["ts"], row["label"]))

    def _minutes(self, rows: list[dict]) -> None:
        for row in rows:
            top = sorted(CLASS_NAMES, key=lambda c: -row[c])[:2]
            self.devices[row["device"]].last_minute = " ".join(f"{c} {row[c]:.0%}" for c in top if row[c])
            if self.minutes_path:
                if self.minutes_writer is None:
                    self.minutes_file = open(self.minutes_path, "w", newline="")
                    self.minutes_writer = csv.DictWriter(self.minutes_file, list(row))
                    self.minutes_writer.writeheader()
                self.minutes_writer.writerow(row)
                self.minutes_file.flush()

    def close(self) -> None:
        self._minutes(self.aggregates.close_all())
        if self.recorder:
            self.recorder.close()
        if self.minutes_file is not None:
            self.minutes_file.close()

    def table(self) -> str:
        header = ("device", "status", "faces", "emotion", "conf", "fps", "model", "events", "last minute")
        rows = [(d, v.online, _fmt(v.faces), v.emotion, _fmt(v.confidence, "{:.2f}"), _fmt(v.fps, "{:.1f}"), v.model,
                 str(v.events), v.last_minute) for d, v in sorted(self.devices.items())]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        return "\n".join(lines + [f"{sum(v.events for v in self.devices.values())} events, {self.duplicates} duplicates dropped"])


def _fmt(value, pattern: str = "{}") -> str:
    return "" if value is None else pattern.format(value)


def subscribe(broker: str, target: Target, prefix: str = "fer", record: Path | None = None,
              rotate_mb: float | None = None, share: str | None = None, duration: float | None = None,
              out: TextIO = sys.stdout, refresh_s: float = 1.0, protocol: str = "5",
              running: Callable[[], bool] = lambda: True) -> Subscriber:
    """Run until ``duration`` seconds pass, Ctrl-C or ``running()`` turns false; redraw the table on a terminal,
    print it once otherwise."""
    if share and protocol != "5":
        raise UserError("shared subscriptions (--share) need MQTT 5")
    subscriber = Subscriber(prefix, target, record, rotate_mb)
    conn = Connection(broker, "tools-subscribe", protocol=protocol)
    events = target.topic_filter(prefix, "events")
    conn.subscribe(*(target.topic_filter(prefix, k) for k in ("availability", "state", "stats")),
                   f"$share/{share}/{events}" if share else events)
    live, end = out.isatty(), time.monotonic() + duration if duration else float("inf")
    redraw = time.monotonic() if live else float("inf")
    try:
        while time.monotonic() < end and running():
            message = conn.get(min(end, redraw, time.monotonic() + 1) - time.monotonic())
            if message is not None:
                subscriber.handle(*message)
            if live and time.monotonic() >= redraw:
                out.write("\x1b[H\x1b[J" + subscriber.table() + "\n")
                out.flush()
                redraw = time.monotonic() + refresh_s
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
        while (message := conn.get(0)) is not None:
            subscriber.handle(*message)
        subscriber.close()
    if not live:
        out.write(subscriber.table() + "\n")
    return subscriber
