"""``tools dashboard`` as a real process, in real headless Chromium (Debian's, driven by Playwright):
the login, a device coming online appears, its emotion updates, going offline shows offline; a flash's status;
the timeline from the database. The screenshot is written under the test's tmp folder (path printed).
Then over plain HTTP: the Host allow-list (DNS rebinding), the Origin check, the session cookie, the refusal to
serve beyond loopback without a login; and hostile retained messages and a flood of device names (issue 33)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures.fleet import ROOT, client, event
from fixtures.mqtt import wait_for
from test_tools_mqtt import stats

from tools.access import add_user
from tools.broker import _listening, free_port
from tools.rollout import new_state, progress

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e .[dev] (playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Dashboard:
    """``tools dashboard`` on a free port."""

    def __init__(self, log: Path, *args: str):
        """The installed ``tools`` command, started outside the checkout: the import name ``tools`` resolves as a user's
        does (tf2onnx, installed by [dev], ships a stray top-level ``tools/`` folder that it must not be taken for)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [str(Path(sysconfig.get_path("scripts")) / "tools"), "dashboard", "--port", str(self.port), *args],
                cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or _listening(self.port), 60, "the dashboard to listen")
        assert self.proc.poll() is None, log.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)

    def request(self, method: str, path: str, host: str | None = None, body: str = "",
                headers: dict | None = None) -> http.client.HTTPResponse:
        """One request with the ``Host`` (default ``127.0.0.1:PORT``) and headers given, the body read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", f"127.0.0.1:{self.port}" if host is None else host)
        for name, value in {**(headers or {}), **({"Content-Length": str(len(body))} if method == "POST" else {})}.items():
            conn.putheader(name, value)
        conn.endheaders(body.encode() if body else None)
        response = conn.getresponse()
        response.text = response.read().decode()
        conn.close()
        return response


@pytest.fixture
def users(tmp_path) -> tuple[Path, str]:
    """A users file with ``ops`` and the password ``tools dashboard-user`` gave it."""
    path = tmp_path / "users"
    return path, add_user(path, "ops")


def state(label: str, confidence: float, device: str = "pi-dash") -> dict:
    return {"ts": 1_764_000_000, "device": device, "model": {"id": "tiny@1", "version": "2026.11.24"},
            "overall": {"label": label, "confidence": confidence, "faces": 2}, "tracks": []}


def test_dashboard_shows_devices_live_in_chromium(broker, database, browser, users, tmp_path):
    from playwright.sync_api import expect

    from tools.store import connect, setup

    conn = connect(database)
    setup(conn)  # the timeline comes from the database: give it a minute of events
    conn.execute("INSERT INTO events (event_id, device, ts, label, confidence, scores, track_id, model, model_version) "
                 "SELECT 'e' || i, 'pi-dash', now() - make_interval(secs => i), "
                 "(ARRAY['happy','neutral','surprise'])[1 + i % 3], 0.8, '{}', 1, 'm', 'v1' "
                 "FROM generate_series(0, 90) i")
    conn.commit()
    conn.close()
    dashboard = Dashboard(tmp_path / "dashboard.log", "--broker", broker.url, "--store", database, "--minutes", "5",
                          "--auth-file", str(users[0]))
    publisher = client(broker.port)

    def send(kind: str, payload, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        publisher.publish(f"fer/pi-dash/{kind}", body, qos=1, retain=retain).wait_for_publish(10)

    page = browser.new_page(viewport={"width": 1280, "height": 640})
    try:
        page.goto(dashboard.url)  # the login first: the page leads there
        expect(page).to_have_url(dashboard.url + "login")
        page.fill("input[name=user]", "ops")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        expect(page.locator("#failed")).to_be_visible(timeout=10_000)
        page.fill("input[name=user]", "ops")
        page.fill("input[name=password]", users[1])
        page.click("button[type=submit]")
        expect(page).to_have_url(dashboard.url)
        cookie = next(c for c in page.context.cookies() if c["name"].startswith("fer_dashboard"))
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
        expect(page.locator("#logout")).to_be_visible()
        expect(page.locator("#empty")).to_be_visible()
        row = page.locator('tr[data-device="pi-dash"]')

        send("availability", "online", retain=True)
        send("state", state("happy", 0.81), retain=True)
        send("stats", {**stats("pi-dash", 19.7), "cpu_temp_c": 51.0, "model_version": "2026.11.24"})
        expect(row.locator(".status")).to_have_text("online", timeout=5_000)  # within a few seconds
        expect(row.locator(".emotion")).to_have_text("happy")
        expect(row.locator(".faces")).to_have_text("2")
        expect(row.locator(".fps")).to_have_text("19.7")
        expect(row.locator(".model")).to_have_text("2026.11.24")

        send("state", state("surprise", 0.64), retain=True)
        send("events", event("pi-dash", 1))
        expect(row.locator(".emotion")).to_have_text("surprise", timeout=5_000)
        expect(row.locator(".confidence")).to_have_text("0.64")

        send("ota", {"transfer": "abc123", "status": "incomplete", "missing": "0-2, 7"})
        expect(row.locator(".flash")).to_have_text("flashing: 4 chunks missing", timeout=5_000)
        send("ota", {"transfer": "abc123", "status": "ready", "missing": "0-2"})
        expect(row.locator(".flash")).to_have_text("flashing (ready)", timeout=5_000)
        send("ota", {"transfer": "abc123", "status": "installed", "model_id": "tiny@2", "version": "v2"})
        expect(row.locator(".flash")).to_have_text("installed v2", timeout=5_000)

        # tools rollout's retained progress, as it publishes it: a panel, hidden until there is one
        expect(page.locator("#rollouts-panel")).to_be_hidden()
        plan = new_state("canary-v2", {"name": "fer2013", "version": "v2"}, None, [["pi-dash"], ["pi-hall", "pi-lab"]])
        plan |= {"wave": 1, "phase": "rollback", "status": "rolled_back", "reason": "wave 1: pi-dash answers one class"}
        plan["devices"]["pi-dash"].update(status="rolled_back")
        publisher.publish("fer/rollout/canary-v2", json.dumps(progress(plan)), qos=1, retain=True).wait_for_publish(10)
        rollout = page.locator('tr[data-rollout="canary-v2"]')
        expect(rollout.locator(".status")).to_have_text("rolled back", timeout=5_000)
        expect(rollout.locator(".wave")).to_have_text("2 of 2")
        expect(rollout.locator(".devices")).to_have_text("3: pending 2, rolled back 1")
        expect(rollout.locator(".reason")).to_have_text("wave 1: pi-dash answers one class")

        expect(page.locator('.tl[data-device="pi-dash"] rect').first).to_be_attached(timeout=10_000)
        expect(page.locator("#timeline-source")).to_contain_text("from the database")
        assert page.locator("img, video, canvas").count() == 0  # no images, ever

        send("availability", "offline", retain=True)
        expect(row.locator(".status")).to_have_text("offline", timeout=5_000)
        publisher.publish("fer/pi-hall/availability", "online", qos=1, retain=True).wait_for_publish(10)
        publisher.publish("fer/pi-hall/state", json.dumps({**state("neutral", 0.58), "device": "pi-hall"}), qos=1,
                          retain=True).wait_for_publish(10)
        expect(page.locator('tr[data-device="pi-hall"] .emotion')).to_have_text("neutral", timeout=5_000)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        page.click("#logout button")  # the session ends: the page is the login again
        expect(page).to_have_url(dashboard.url + "login")
    finally:
        page.close()
        publisher.disconnect()
        code = dashboard.stop()
    assert code == 0, dashboard.log.read_text()
    assert "Traceback" not in dashboard.log.read_text()


def test_dashboard_bad_input_is_one_line(broker, tmp_path):
    taken = Dashboard(tmp_path / "first.log", "--broker", broker.url)
    (tmp_path / "shared-users").write_text("ops:scrypt$16384$8$1$c2FsdHNhbHQ=$" + "A" * 44 + "\n")
    (tmp_path / "shared-users").chmod(0o666)
    (tmp_path / "bad-users").write_text("ops:plaintext\n")
    try:
        for args, says in ((["--port", str(taken.port)], "cannot serve on"), (["--port", "0"], "not a TCP port"),
                           (["--store", "mysql://x/y", "--port", str(free_port())], "not a postgresql://"),
                           (["--store", "postgresql://u:s3cret@x/y"], "PGPASSWORD"),
                           (["--host", "0.0.0.0"], "without a login: give --auth-file"),
                           (["--host", "0.0.0.0", "--auth-file", str(tmp_path / "none")], "cannot read --auth-file"),
                           (["--auth-file", str(tmp_path / "shared-users")], "writable by others"),
                           (["--auth-file", str(tmp_path / "bad-users")], "line 1: not a scrypt"),
                           (["--allow-host", "evil.example:80"], "not a host name"),
                           (["--max-devices", "0"], "whole number")):
            done = subprocess.run([sys.executable, "-m", "tools.cli", "dashboard", "--broker", broker.url, *args],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
            assert "s3cret" not in done.stderr
    finally:
        taken.stop()


def test_dashboard_user_writes_only_a_hash_and_prints_the_password_once(tmp_path, capsys):
    from tools.access import read_users, verify_password
    from tools.cli import main

    path = tmp_path / "users"
    assert main(["dashboard-user", "ops", "--auth-file", str(path)]) == 0
    first = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert main(["dashboard-user", "viewer", "--auth-file", str(path)]) == 0
    assert main(["dashboard-user", "ops", "--auth-file", str(path)]) == 0  # a new password replaces the old
    second = capsys.readouterr().out.splitlines()[-1].rsplit(" ", 1)[-1]
    users = read_users(path)
    assert sorted(users) == ["ops", "viewer"] and path.stat().st_mode & 0o777 == 0o600
    assert first not in path.read_text() and second not in path.read_text()
    assert verify_password(second, users["ops"]) and not verify_password(first, users["ops"])
    with pytest.raises(SystemExit) as refused:  # argparse's refusal: one line, status 2
        main(["dashboard-user", "a:b", "--auth-file", str(path)])
    assert refused.value.code == 2 and "is not a name" in capsys.readouterr().err


def test_host_origin_and_session_rules_over_http(broker, users, tmp_path):
    dashboard = Dashboard(tmp_path / "dashboard.log", "--broker", broker.url, "--auth-file", str(users[0]),
                          "--allow-host", "fleet.test")
    port = dashboard.port
    try:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "", f"localhost:{port}x"):
            assert dashboard.request("GET", "/login", host=host).status == 421, host  # DNS rebinding: refused
        for host in (f"localhost:{port}", f"fleet.test:{port}", f"[::1]:{port}", "10.1.2.3"):
            assert dashboard.request("GET", "/login", host=host).status == 200, host
        assert dashboard.request("GET", "/api/fleet").status == 401
        assert dashboard.request("GET", "/events").status == 401
        home = dashboard.request("GET", "/")
        assert home.status == 303 and home.getheader("Location") == "/login"
        login = f"user=ops&password={users[1]}"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        foreign = dashboard.request("POST", "/login", body=login, headers={**form, "Origin": "http://evil.example"})
        assert foreign.status == 403 and foreign.getheader("Set-Cookie") is None  # no login in another site's name
        started = time.monotonic()
        wrong = dashboard.request("POST", "/login", body="user=ops&password=nope", headers=form)
        assert wrong.status == 401 and wrong.getheader("Set-Cookie") is None and time.monotonic() - started >= 1
        right = dashboard.request("POST", "/login", body=login,
                                  headers={**form, "Origin": f"http://127.0.0.1:{port}"})
        cookie = right.getheader("Set-Cookie")
        assert right.status == 303 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = {"Cookie": cookie.split(";")[0]}
        fleet = dashboard.request("GET", "/api/fleet", headers=session)
        assert fleet.status == 200 and json.loads(fleet.text)["login"] is True
        assert fleet.getheader("X-Frame-Options") == "DENY" and "frame-ancestors 'none'" in \
            fleet.getheader("Content-Security-Policy")
        assert dashboard.request("GET", "/api/fleet", headers={"Cookie": "fer_dashboard_%d=forged" % port}).status == 401
        with urllib.request.urlopen(urllib.request.Request(dashboard.url + "events", headers=session), timeout=10) as sse:
            assert sse.headers["Content-Type"] == "text/event-stream"  # the stream works with the session
        assert dashboard.request("POST", "/logout", headers=session).status == 303
        assert dashboard.request("GET", "/api/fleet", headers=session).status == 401  # the session ended
    finally:
        code = dashboard.stop()
    log = dashboard.log.read_text()
    assert code == 0 and "Traceback" not in log, log
    assert users[1] not in log and "failed dashboard login as ops" in log


def test_hostile_messages_and_a_flood_of_names_neither_stop_nor_grow_it(broker, tmp_path):
    """Issue 33: a retained ``state`` of the wrong shape killed the dashboard on every start."""
    retained = [("fer/pi-bad/state", [1, 2]), ("fer/pi-bad1/state", {**state("happy", 0.5), "overall": [1]}),
                ("fer/pi-bad2/state", {**state("happy", 0.5), "overall": {"label": "happy", "confidence": "high",
                                                                          "faces": 1}}),
                ("fer/pi-bad3/stats", {"fps": "fast"}),
                ("fer/pi-bad4/ota", {"transfer": "t", "status": "incomplete", "missing": "0-99999999999999999999"}),
                ("fer/pi\u202ex/availability", "online"), ("fer/" + "n" * 200 + "/availability", "online")]
    publisher = client(broker.port)
    for topic, payload in retained:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        publisher.publish(topic, body, qos=1, retain=True).wait_for_publish(10)
    dashboard = Dashboard(tmp_path / "dashboard.log", "--broker", broker.url, "--max-devices", "3")

    def devices() -> list[dict]:
        return json.loads(dashboard.request("GET", "/api/fleet").text)["devices"]

    try:  # a retained valid state first: once it shows, the dashboard is subscribed and sees what follows live
        publisher.publish("fer/pi-ready/state", json.dumps(state("happy", 0.7)), qos=1, retain=True).wait_for_publish(10)
        wait_for(lambda: any(d["device"] == "pi-ready" for d in devices()), 60, "the dashboard to subscribe")
        for n in range(40):  # more names than it keeps
            publisher.publish(f"fer/flood-{n}/availability", "online", qos=1).wait_for_publish(10)
        publisher.publish("fer/pi-dash/state", json.dumps(state("surprise", 0.6)), qos=1).wait_for_publish(10)
        wait_for(lambda: any(d["device"] == "pi-dash" for d in devices()), 60, "the valid state after the flood")
        assert len(devices()) <= 3 and dashboard.proc.poll() is None
        assert next(d for d in devices() if d["device"] == "pi-dash")["emotion"] == "surprise"
    finally:
        publisher.disconnect()
        code = dashboard.stop()
    log = dashboard.log.read_text()
    assert code == 0 and "Traceback" not in log, log
    assert 1 <= log.count("dropped a message") <= 3 and 1 <= log.count("forgot") <= 3, log
