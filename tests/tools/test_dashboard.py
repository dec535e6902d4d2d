"""``tools dashboard`` as a real process, in real headless Chromium (Debian's, driven by Playwright):
a device coming online appears, its emotion updates, going offline shows offline; a flash's status;
the timeline from the database. The screenshot is written under the test's tmp folder (path printed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.fleet import ROOT, client, event
from fixtures.mqtt import wait_for

from tools.broker import _listening, free_port

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
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tools.cli", "dashboard", "--port", str(self.port), *args],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or _listening(self.port), 60, "the dashboard to listen")
        assert self.proc.poll() is None, log.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


def test_dashboard_shows_devices_live_in_chromium(broker, database, browser, tmp_path):
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
    dashboard = Dashboard(tmp_path / "dashboard.log", "--broker", broker.url, "--store", database, "--minutes", "5")
    publisher = client(broker.port)

    def send(kind: str, payload, retain: bool = False) -> None:
        body = payload if isinstance(payload, str) else json.dumps(payload)
        publisher.publish(f"fer/pi-dash/{kind}", body, qos=1, retain=retain).wait_for_publish(10)

    def state(label: str, confidence: float) -> dict:
        return {"ts": 1_764_000_000, "device": "pi-dash", "model": {"id": "tiny@1", "version": "2026.11.24"},
                "overall": {"label": label, "confidence": confidence, "faces": 2}, "tracks": []}

    page = browser.new_page(viewport={"width": 1280, "height": 640})
    try:
        page.goto(dashboard.url)
        expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
        expect(page.locator("#empty")).to_be_visible()
        row = page.locator('tr[data-device="pi-dash"]')

        send("availability", "online", retain=True)
        send("state", state("happy", 0.81), retain=True)
        send("stats", {"fps": 19.7, "cpu_temp_c": 51.0, "model_version": "2026.11.24"})
        expect(row.locator(".status")).to_have_text("online", timeout=5_000)  # within a few seconds
        expect(row.locator(".emotion")).to_have_text("happy")
        expect(row.locator(".faces")).to_have_text("2")
        expect(row.locator(".fps")).to_have_text("19.7")
        expect(row.locator(".model")).to_have_text("2026.11.24")

        send("state", state("surprise", 0.64), retain=True)
        send("events", event("pi-dash", 1))
        expect(row.locator(".emotion")).to_have_text("surprise", timeout=5_000)
        expect(row.locator(".confidence")).to_have_text("0.64")

        send("ota", {"transfer": "abc123", "status": "ready", "missing": [0, 1, 2]})
        expect(row.locator(".flash")).to_have_text("flashing (ready)", timeout=5_000)
        send("ota", {"transfer": "abc123", "status": "installed", "model_id": "tiny@2", "version": "v2"})
        expect(row.locator(".flash")).to_have_text("installed v2", timeout=5_000)

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
    finally:
        page.close()
        publisher.disconnect()
        code = dashboard.stop()
    assert code == 0, dashboard.log.read_text()
    assert "Traceback" not in dashboard.log.read_text()


def test_dashboard_bad_input_is_one_line(broker, tmp_path):
    taken = Dashboard(tmp_path / "first.log", "--broker", broker.url)
    try:
        for args, says in ((["--port", str(taken.port)], "cannot serve on"), (["--port", "0"], "not a TCP port"),
                           (["--store", "mysql://x/y", "--port", str(free_port())], "not a postgresql://")):
            done = subprocess.run([sys.executable, "-m", "tools.cli", "dashboard", "--broker", broker.url, *args],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    finally:
        taken.stop()
