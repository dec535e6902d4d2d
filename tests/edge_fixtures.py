"""Fixtures for the edge runtime's tests: a real mosquitto that can be stopped and restarted on its port,
a sample video made from scikit-image's astronaut, a subscriber, and the runtime as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

MOSQUITTO = Path("/usr/sbin/mosquitto")
ROOT = Path(__file__).resolve().parents[1]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Mosquitto:
    """A real broker on a fixed free port; persistent, so a subscriber's session survives a restart."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        """With ``users`` (name -> password) anonymous clients are refused."""
        if not MOSQUITTO.exists():
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 "persistence true", f"persistence_location {folder}/", "autosave_interval 1"]
        if users:
            passwords = folder / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines.append(f"password_file {passwords}")
        self.conf.write_text("\n".join(lines + (["user root"] if os.geteuid() == 0 else [])) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def listening() -> bool:
            assert self.proc.poll() is None, f"mosquitto exited with {self.proc.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
            return False
        wait_for(listening, 10, "mosquitto to listen")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


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


def write_video(path: Path, frames: int = 40, fps: float = 20.0) -> Path:
    """The astronaut (public domain) moving and changing size across a 640x480 video."""
    from skimage import data

    face = cv2.cvtColor(data.astronaut()[20:290, 110:380], cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for k in range(frames):
        side = int(250 + 40 * np.sin(k / 6))
        x, y = 80 + 6 * k % 260, 60 + int(40 * np.cos(k / 8))
        frame = np.full((480, 640, 3), 100, np.uint8)
        frame[y:y + side, x:x + side] = cv2.resize(face, (side, side))
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "astronaut.avi")


def device_config(folder: Path, bundle: Path, source: Path, url: str, **sections) -> Path:
    """A config file for a test device; ``sections`` update its sections."""
    cfg = {"source": {"uri": str(source), "loop": True, "fps": 20, "reopen_min_s": 0.2, "reopen_max_s": 1},
           "model": {"bundle": str(bundle)}, "publish": {"rate_hz": 5, "stats_interval_s": 1},
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
