"""``tools dashboard``: a live web page of the fleet, served from this process.

Design: a server-side subscriber (:class:`tools.mqtt_client.Connection`) folds every device's
``availability``, ``state``, ``stats``, ``ota`` and ``events`` messages into one view per device,
and the page gets a snapshot, then each change, as **Server-Sent Events** from the standard
library's HTTP server. Why this and not MQTT over WebSockets from the browser: the page only ever
listens, which is what SSE is (the browser's ``EventSource`` reconnects by itself, and it is plain
HTTP through any proxy); the broker needs no WebSocket listener; the broker's credentials and TLS
files stay on the server instead of being handed to every browser; and nothing beyond the
standard library is needed. Changes are coalesced (at most a few pushes a second per page), so a
fleet of hundreds of devices publishing several events a second does not flood the page.

The per-device emotion timeline (label counts per minute, the last ``--minutes``) comes from the
``emotion_minutes`` view of ``--store``'s database when given, so it covers the time before the
dashboard started, else from the events this process has seen. No images: none leave the devices.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from edge import CLASS_NAMES
from edge.errors import UserError
from edge.protocol.payloads import decode
from edge.protocol.topics import AVAILABILITY, EVENTS, OTA, STATE, STATS
from tools.mqtt_client import Connection

PUSH_S = 0.3
"""Coalescing window of the page's updates."""
KEEPALIVE_S = 15.0
"""An SSE comment this often, so proxies and the browser keep an idle stream open."""


@dataclass
class DeviceView:
    """What the page shows for one device (``last_seen``: server time of its newest message)."""

    device: str
    online: str = "?"
    emotion: str = ""
    confidence: float | None = None
    faces: int | None = None
    fps: float | None = None
    cpu_temp_c: float | None = None
    model: str = ""
    last_seen: float = 0.0
    flash: dict | None = None
    stamp: int = field(default=0, repr=False)


class FleetView:
    """The devices' current views and, without a database, their recent per-minute label counts."""

    def __init__(self, prefix: str, minutes: int, count_events: bool = True):
        """``count_events``: keep per-minute counts here (not needed when a database has them)."""
        self.prefix, self.minutes, self.count_events = prefix, minutes, count_events
        self.devices: dict[str, DeviceView] = {}
        self.counts: dict[str, dict[int, Counter]] = {}
        self.version = 0
        self.changed = threading.Condition()

    def handle(self, topic: str, body: bytes, now: float) -> None:
        if not topic.startswith(self.prefix + "/"):
            return
        device, _, kind = topic[len(self.prefix) + 1:].rpartition("/")
        if not device or kind not in (AVAILABILITY, STATE, STATS, OTA, EVENTS):
            return
        payload = decode(body) if kind != EVENTS or self.count_events else {}
        with self.changed:
            view = self.devices.get(device) or self.devices.setdefault(device, DeviceView(device))
            view.last_seen = now
            if kind == AVAILABILITY:
                view.online = payload if isinstance(payload, str) else "?"
            elif not isinstance(payload, dict):
                return
            elif kind == STATE:
                overall = payload.get("overall") or {}
                view.emotion, view.confidence, view.faces = overall.get("label", ""), overall.get("confidence"), \
                    overall.get("faces")
                view.model = (payload.get("model") or {}).get("version") or view.model
            elif kind == STATS:
                view.fps, view.cpu_temp_c = payload.get("fps"), payload.get("cpu_temp_c")
                view.model = payload.get("model_version") or view.model
            elif kind == OTA:
                view.flash = {k: payload.get(k) for k in ("transfer", "status", "version", "reason", "missing")
                              if payload.get(k) is not None} | {"at": now}
            elif isinstance(payload.get("ts"), (int, float)) and isinstance(payload.get("label"), str):
                minute = int(payload["ts"] // 60)
                self.counts.setdefault(device, {}).setdefault(minute, Counter())[payload["label"]] += 1
                for old in [m for m in self.counts[device] if m <= minute - self.minutes]:
                    del self.counts[device][old]
            self.version += 1
            view.stamp = self.version
            self.changed.notify_all()

    def snapshot(self, since: int = 0) -> tuple[int, list[dict]]:
        """(version, the views changed after ``since``)."""
        with self.changed:
            return self.version, [asdict(v) for v in self.devices.values() if v.stamp > since]

    def timeline(self) -> dict[str, list[dict]]:
        """Per device, the label counts of each of the last minutes this process has seen events for."""
        start = int(time.time() // 60) - self.minutes
        with self.changed:
            return {d: [{"minute": m * 60, "counts": dict(c)} for m, c in sorted(minutes.items()) if m > start]
                    for d, minutes in self.counts.items()}


class Timelines:
    """The timeline source: the database when there is one (its connection reopened after an outage)."""

    def __init__(self, fleet: FleetView, store: str | None):
        self.fleet, self.url, self.lock, self.conn = fleet, store, threading.Lock(), None
        if store:
            from tools.store import connect

            self.conn = connect(store)  # unreachable at start: one line, not a page full of errors

    def get(self) -> dict:
        if not self.url:
            return {"source": "events seen by the dashboard", "devices": self.fleet.timeline()}
        from tools.store import connect, driver, timeline

        with self.lock:
            try:
                self.conn = self.conn if self.conn is not None and not self.conn.closed else connect(self.url)
                return {"source": "database", "devices": timeline(self.conn, self.fleet.minutes)}
            except UserError as exc:
                return {"source": "database", "devices": {}, "error": str(exc)}
            except driver().Error as exc:  # the database went away: say so on the page, reconnect next time
                if self.conn is not None:
                    self.conn.close()
                return {"source": "database", "devices": {}, "error": f"database unavailable: {str(exc).strip()[:200]}"}


def make_handler(fleet: FleetView, timelines: Timelines, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    page = resources.files("tools").joinpath("static", "dashboard.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # the terminal is for errors, not every request
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(page, "text/html; charset=utf-8")
            elif path == "/api/fleet":
                version, devices = fleet.snapshot()
                self._json({"version": version, "now": time.time(), "devices": devices, "classes": list(CLASS_NAMES),
                            "minutes": fleet.minutes})
            elif path == "/api/timeline":
                self._json({"now": time.time(), "minutes": fleet.minutes, **timelines.get()})
            elif path == "/events":
                self._stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: dict) -> None:
            self._send(json.dumps(value, allow_nan=False).encode(), "application/json")

        def _stream(self) -> None:
            """Server-Sent Events: ``devices`` messages with the views changed since the last one."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0
            try:
                while not stop.is_set():
                    with fleet.changed:
                        if fleet.version == seen:
                            fleet.changed.wait(KEEPALIVE_S)
                    version, devices = fleet.snapshot(seen)
                    if devices:
                        data = json.dumps({"now": time.time(), "devices": devices}, allow_nan=False)
                        self.wfile.write(f"event: devices\ndata: {data}\n\n".encode())
                    else:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    seen = version
                    stop.wait(PUSH_S)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the page was closed

    return Handler


def serve(broker: str, port: int, host: str = "127.0.0.1", store: str | None = None, prefix: str = "fer",
          protocol: str = "5", minutes: int = 10) -> None:
    """Serve the page until Ctrl-C or SIGTERM."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port (1-65535)")
    if minutes < 1:
        raise UserError("--minutes must be at least 1")
    fleet = FleetView(prefix, minutes, count_events=not store)
    timelines = Timelines(fleet, store)
    stop = threading.Event()
    try:
        server = ThreadingHTTPServer((host, port), make_handler(fleet, timelines, stop))
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None
    server.daemon_threads = True
    conn = Connection(broker, "tools-dashboard", protocol=protocol)
    conn.subscribe(f"{prefix}/#")
    web = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    web.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"dashboard on http://{host}:{server.server_address[1]}/ (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while not stop.is_set():
            message = conn.get(0.5)
            if message is not None:
                fleet.handle(*message, time.time())
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        with fleet.changed:
            fleet.changed.notify_all()
        server.shutdown()
        server.server_close()
        conn.close()
