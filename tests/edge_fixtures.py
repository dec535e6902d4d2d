"""Fixtures for the edge runtime's tests: a real mosquitto that can be stopped and restarted on its port,
a sample video made from scikit-image's astronaut, a subscriber, and the runtime as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

import tools.broker
from tools.demo import write_video

ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Mosquitto(tools.broker.Mosquitto):
    """The project's mosquitto runner; a test that needs it is skipped where it is not installed."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        if tools.broker.mosquitto_binary() is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        super().__init__(folder, users)


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path)
    b.start()
    yield b
    if b.proc.poll() is None:
        b.stop()


class Subscriber:
    """Collects every message under a prefix (persistent QoS 1 session: nothing is missed across restarts)."""

    def __init__(self, port: int, *topics: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics or ("fer/#", "homeassistant/#")])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "test subscriber could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def payloads(self, kind: str) -> list:
        with self.lock:
            found = [p for t, p, _ in self.messages if t.endswith("/" + kind)]
        return [p.decode() if kind == "availability" else json.loads(p) for p in found]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker.port)
    yield sub
    sub.close()


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "astronaut.avi")


def device_config(folder: Path, bundle: Path, source: Path, url: str, **sections) -> Path:
    """A config file for a test device; ``sections`` update its sections."""
    cfg = {"source": {"uri": str(source), "loop": True, "fps": 20, "reopen_min_s": 0.2, "reopen_max_s": 1},
           "model": {"bundle": str(bundle), "dir": str(folder / "models"), "trusted_keys": []},
           "publish": {"rate_hz": 5, "stats_interval_s": 1},
           "mqtt": {"broker": url, "device_id": "pi-test", "keepalive_s": 5, "reconnect_max_s": 1},
           "spool": {"path": str(folder / "spool.db")}, "log_level": "debug"}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = folder / "device.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Device:
    """``edge run`` as a real process, its log in a file."""

    def __init__(self, config: Path, *args: str):
        self.log_path = config.with_suffix(".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config), *args],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.log.close()
        return code
