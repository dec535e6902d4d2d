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

Whoever can publish to the broker cannot stop or exhaust it: every message passes :class:`tools.inbound.Gate`
(schema, bounded strings, checked device names; a bad one is dropped, counted and logged, rate-limited) and at most
``--max-devices`` devices are tracked. Whoever can reach the port meets :mod:`tools.access`: a Host allow-list
(DNS rebinding), an Origin check, and with ``--auth-file`` a login and a session cookie; without one it serves on
loopback only. Connections are capped (:data:`MAX_CONNECTIONS`) and time out (:data:`REQUEST_TIMEOUT_S`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs

from edge import CLASS_NAMES
from edge.errors import UserError, printable
from edge.protocol.topics import AVAILABILITY, DRIFT, EVENTS, OTA, STATE, STATS
from tools.access import Login, check_allowed_host, host_allowed, is_ip, is_loopback, origin_allowed, read_users
from tools.inbound import MAX_DEVICES, Gate, Message, RateLimitedLog, RecentDevices
from tools.mqtt_client import Connection

log = logging.getLogger("tools.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
PAGE, LOGIN_PAGE = STATIC / "dashboard.html", STATIC / "login.html"
"""The pages, found beside this module, not through ``importlib.resources``: tf2onnx installs a stray top-level
``tools/`` folder, and where it is present the name ``tools`` can resolve to that folder instead of this package."""
PUSH_S = 0.3
"""Coalescing window of the page's updates."""
KEEPALIVE_S = 15.0
"""An SSE comment this often, so proxies and the browser keep an idle stream open."""
MAX_CONNECTIONS = 64
"""Open connections (each a thread; a page holds one for its event stream); beyond it a new one is closed at once."""
REQUEST_TIMEOUT_S = 30.0
"""A connection that sends nothing, or reads nothing of its stream, for this long is closed."""
MAX_ROLLOUTS = 20
"""Rollouts the page shows (their retained progress): the ones updated last."""
MAX_FORM_BYTES = 4096
FAILED_LOGIN_S = 1.0
"""How long a wrong password waits for its answer."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: with it the browser posts the login form with Origin: null
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
                               "'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"}


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
    drift: dict | None = None
    stamp: int = field(default=0, repr=False)


class FleetView:
    """The devices' current views and, without a database, their recent per-minute label counts.

    Bounded whatever is published: messages pass :class:`tools.inbound.Gate` (schema, bounded strings, device names
    checked), at most ``max_devices`` views are kept (the one heard from longest ago is forgotten, and the pages
    told), and each device's counts cover only the last ``minutes`` minutes of this server's clock and the
    contract's classes."""

    def __init__(self, prefix: str, minutes: int, count_events: bool = True, max_devices: int = MAX_DEVICES):
        """``count_events``: keep per-minute counts here (not needed when a database has them)."""
        self.prefix, self.minutes, self.count_events = prefix, minutes, count_events
        self.gate = Gate(prefix, (AVAILABILITY, STATE, STATS, OTA, DRIFT), unread=() if count_events else (EVENTS,))
        self.devices = RecentDevices(max_devices)
        self.removed: OrderedDict[str, int] = OrderedDict()
        """Forgotten devices and the version that forgot them, so a page drops their rows."""
        self.counts: dict[str, dict[int, Counter]] = {}
        self.rollouts: OrderedDict[str, dict] = OrderedDict()
        """Each rollout's newest progress (:meth:`_rollout`), by name."""
        self.rollouts_stamp = 0
        self.version = 0
        self.changed = threading.Condition()

    def handle(self, topic: str, body: bytes, now: float) -> None:
        rollout = self.gate.admit_rollout(topic, body)
        if rollout is not None:
            self._rollout(*rollout)
            return
        message = self.gate.admit(topic, body)
        if message is None:
            return
        with self.changed:
            view, gone = self.devices.touch(message.device, DeviceView)
            for device in gone:
                self._forget(device)
            self.removed.pop(message.device, None)
            view.last_seen = now
            self._apply(view, message, now)
            self.version += 1
            view.stamp = self.version
            self.changed.notify_all()

    def _rollout(self, name: str, progress: dict | None) -> None:
        """Keep the newest progress of each rollout (``tools rollout``'s retained message; None: cleared), the
        :data:`MAX_ROLLOUTS` updated last, each with the count of its devices in each status, not the list."""
        with self.changed:
            self.rollouts.pop(name, None)
            if progress is not None:
                summary = {k: v for k, v in progress.items() if k != "devices"}
                self.rollouts[name] = summary | {"counts": dict(Counter(d["status"] for d in progress["devices"])),
                                                 "devices": len(progress["devices"])}
                while len(self.rollouts) > MAX_ROLLOUTS:
                    self.rollouts.popitem(last=False)
            self.version += 1
            self.rollouts_stamp = self.version
            self.changed.notify_all()

    def _apply(self, view: DeviceView, message: Message, now: float) -> None:
        """Fold one checked message into its device's view (the schema guarantees every field read here)."""
        payload = message.payload
        if message.kind == AVAILABILITY:
            view.online = payload
        elif message.kind == STATE:
            overall = payload["overall"]
            view.emotion, view.confidence, view.faces = overall["label"], overall["confidence"], overall["faces"]
            view.model = payload["model"]["version"] or view.model
        elif message.kind == STATS:
            view.fps, view.cpu_temp_c = payload["fps"], payload["cpu_temp_c"]
            view.model = payload["model_version"] or view.model
        elif message.kind == OTA:
            view.flash = {k: payload[k] for k in ("transfer", "status", "version", "reason") if k in payload} | \
                {"missing": missing_chunks(payload.get("missing", "")), "at": now}
        elif message.kind == DRIFT:  # `tools drift`'s retained alert
            view.drift = {"drifting": payload["drifting"], "score": payload["score"], "at": payload["ts"]}
        elif payload is not None:  # an event, read where this process keeps the counts
            self._count(message.device, payload, now)

    def _count(self, device: str, event: dict, now: float) -> None:
        """Count an event in its minute, if that minute is on the timeline (by this server's clock) and its label
        one of the classes the page draws: what a publisher sends cannot grow the counts beyond that."""
        minute, current = int(event["ts"] // 60), int(now // 60)
        if event["label"] not in CLASS_NAMES or not current - self.minutes < minute <= current + 1:
            return
        minutes = self.counts.setdefault(device, {})
        minutes.setdefault(minute, Counter())[event["label"]] += 1
        for old in [m for m in minutes if m <= current - self.minutes]:
            del minutes[old]

    def _forget(self, device: str) -> None:
        self.counts.pop(device, None)
        self.version += 1
        self.removed[device] = self.version
        while len(self.removed) > self.devices.limit:
            self.removed.popitem(last=False)

    def snapshot(self, since: int = 0) -> tuple[int, list[dict], list[str], list[dict] | None]:
        """(version, the views changed after ``since``, the devices forgotten after it, every rollout's progress if
        any changed after it, else None)."""
        with self.changed:
            return (self.version, [asdict(v) for v in self.devices.values() if v.stamp > since],
                    [d for d, v in self.removed.items() if v > since],
                    list(self.rollouts.values()) if self.rollouts_stamp > since else None)

    def timeline(self) -> dict[str, list[dict]]:
        """Per device, the label counts of each of the last minutes this process has seen events for."""
        start = int(time.time() // 60) - self.minutes
        with self.changed:
            return {d: [{"minute": m * 60, "counts": dict(c)} for m, c in sorted(minutes.items()) if m > start]
                    for d, minutes in self.counts.items()}


def missing_chunks(ranges: str) -> int:
    """How many chunks an ``ota`` answer's ``missing`` ranges name (``"3-17, 20"``: 16), counted without listing
    them: the page shows the number, not which."""
    runs = (part.partition("-") for part in ranges.split(",") if part.strip())
    return sum(int(last or first) - int(first) + 1 for first, _, last in runs)


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


@dataclass
class Access:
    """What a request must bring (:mod:`tools.access`): a Host this dashboard answers to, no foreign Origin, and a
    session where users are configured. ``cookie`` carries the port: cookies ignore ports, and two dashboards on one
    host must not overwrite each other's session."""

    names: set[str]
    login: Login | None
    cookie: str
    say: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log.warning))


class Server(ThreadingHTTPServer):
    """The standard library's threaded server with a cap on open connections (each is a thread)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once rather than one more thread
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_handler(fleet: FleetView, timelines: Timelines, stop: threading.Event,
                 access: Access) -> type[BaseHTTPRequestHandler]:
    page, login_page = PAGE.read_bytes(), LOGIN_PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def log_message(self, format: str, *args) -> None:  # the terminal is for errors, not every request
            pass

        def end_headers(self) -> None:
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if not self._admitted(path):
                return
            if path in ("/", "/index.html"):
                self._send(page, "text/html; charset=utf-8")
            elif path == "/login" and access.login:
                self._send(login_page, "text/html; charset=utf-8")
            elif path == "/login":
                self._redirect("/")
            elif path == "/api/fleet":
                version, devices, _, rollouts = fleet.snapshot()
                self._json({"version": version, "now": time.time(), "devices": devices, "rollouts": rollouts or [],
                            "classes": list(CLASS_NAMES), "minutes": fleet.minutes, "login": access.login is not None})
            elif path == "/api/timeline":
                self._json({"now": time.time(), "minutes": fleet.minutes, **timelines.get()})
            elif path == "/events":
                self._stream()
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if not self._admitted(path):
                return
            if path == "/login" and access.login:
                self._login()
            elif path == "/logout" and access.login:
                access.login.end(self._session())
                self._redirect("/login", cookie=f"{access.cookie}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict")
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _admitted(self, path: str) -> bool:
            """Host, Origin, then session (:class:`Access`); a refused request is answered here."""
            host = self.headers.get("Host")
            if not host_allowed(host, access.names):
                self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "this dashboard does not answer to that host name",
                                "Reach it by its IP address or localhost, or start it with --allow-host NAME.")
                return False
            if not origin_allowed(self.headers.get("Origin"), host):
                self.send_error(HTTPStatus.FORBIDDEN, "cross-origin request refused")
                return False
            if access.login is None or path == "/login" or access.login.valid(self._session()):
                return True
            if path in ("/", "/index.html"):
                self._redirect("/login")
            else:
                self.send_error(HTTPStatus.UNAUTHORIZED, "log in first")
            return False

        def _session(self) -> str | None:
            try:
                morsel = SimpleCookie(self.headers.get("Cookie", "")).get(access.cookie)
            except CookieError:
                return None
            return morsel.value if morsel else None

        def _login(self) -> None:
            """Check a posted user name and password; a session cookie and the page if right, the form again (after
            :data:`FAILED_LOGIN_S`) if not."""
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or int(length) > MAX_FORM_BYTES:
                self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length.isdigit() else HTTPStatus.LENGTH_REQUIRED)
                return
            try:
                form = parse_qs(self.rfile.read(int(length)).decode("utf-8", "replace"), max_num_fields=4)
            except ValueError:
                self.send_error(HTTPStatus.BAD_REQUEST, "not a login form")
                return
            user, password = (form.get(key, [""])[0] for key in ("user", "password"))
            if access.login.check(user, password):
                cookie = f"{access.cookie}={access.login.start()}; Path=/; HttpOnly; SameSite=Strict"
                self._redirect("/", cookie=cookie)
                return
            access.say(f"failed dashboard login as {printable(user, 64)} from {self.client_address[0]}")
            time.sleep(FAILED_LOGIN_S)
            self._send(login_page.replace(b'<p id="failed" hidden>', b'<p id="failed">'), "text/html; charset=utf-8",
                       HTTPStatus.UNAUTHORIZED)

        def _redirect(self, where: str, cookie: str | None = None) -> None:
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", where)
            if cookie:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: dict) -> None:
            self._send(json.dumps(value, allow_nan=False).encode(), "application/json")

        def _stream(self) -> None:
            """Server-Sent Events: ``devices`` messages with the views changed (and the devices forgotten) since the
            last one."""
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
                    version, devices, removed, rollouts = fleet.snapshot(seen)
                    if devices or removed or rollouts is not None:
                        data = json.dumps({"now": time.time(), "devices": devices, "removed": removed,
                                           **({"rollouts": rollouts} if rollouts is not None else {})}, allow_nan=False)
                        self.wfile.write(f"event: devices\ndata: {data}\n\n".encode())
                    else:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    seen = version
                    stop.wait(PUSH_S)
            except OSError:
                pass  # the page was closed, or stopped reading for REQUEST_TIMEOUT_S

    return Handler


def access_for(host: str, port: int, auth_file: Path | None, allow_hosts: Iterable[str]) -> Access:
    """The access rules of a dashboard served on ``host``; refuses (one line) to serve beyond this machine without a
    login."""
    login = Login(read_users(auth_file)) if auth_file else None
    if login is None and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without a login: give --auth-file FILE (make it with "
                        "`tools dashboard-user NAME --auth-file FILE`), or serve on 127.0.0.1")
    names = {check_allowed_host(name) for name in allow_hosts}
    if not is_ip(host):
        names.add(check_allowed_host(host))  # the name it was told to serve on
    return Access(names, login, f"fer_dashboard_{port}")


def serve(broker: str, port: int, host: str = "127.0.0.1", store: str | None = None, prefix: str = "fer",
          protocol: str = "5", minutes: int = 10, auth_file: Path | None = None, allow_hosts: Iterable[str] = (),
          max_devices: int = MAX_DEVICES) -> None:
    """Serve the page until Ctrl-C or SIGTERM."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a TCP port (1-65535)")
    if minutes < 1:
        raise UserError("--minutes must be at least 1")
    access = access_for(host, port, auth_file, allow_hosts)
    fleet = FleetView(prefix, minutes, count_events=not store, max_devices=max_devices)
    timelines = Timelines(fleet, store)
    stop = threading.Event()
    try:
        server = Server((host, port), make_handler(fleet, timelines, stop, access))
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from None
    conn = Connection(broker, "tools-dashboard", protocol=protocol)
    conn.subscribe(f"{prefix}/#")
    web = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    web.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    users = f"; log in as one of the {len(access.login.users)} users of {auth_file}" if access.login else ""
    print(f"dashboard on http://{host}:{server.server_address[1]}/ (Ctrl-C to stop{users})", file=sys.stderr, flush=True)
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
