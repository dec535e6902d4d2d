"""``tools demo``: the whole system on one machine, from a fresh checkout.

A local broker (mosquitto, or the embedded one), one device (``edge run`` as its own process, as on a
Pi) watching a sample video of a real face with the shipped bundle, and the subscriber's live table.
It stops cleanly at the end of ``--duration`` or on Ctrl-C: the device publishes ``offline`` and
exits, then the broker stops.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import yaml

from edge.errors import UserError
from edge.model.selfcheck import KNOWN_FACE
from edge.protocol.topics import Target
from tools.broker import local_broker
from tools.subscribe import subscribe

DEVICE_ID = "demo-pi"
SAMPLE_FACE = KNOWN_FACE
"""Eileen Collins' smiling face from scikit-image's public-domain ``data.astronaut()`` (rows 20:290, columns
110:380, resized to 200x200, JPEG quality 85): a 10 KB file, so the demo needs no scikit-image (and its scipy).
The one copy is the device's self-check face, package data of ``edge.model``."""


def write_video(path: Path, frames: int = 40, fps: float = 20.0) -> Path:
    """The astronaut's face moving and changing size across a 640x480 video."""
    face = cv2.imread(str(SAMPLE_FACE))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for k in range(frames):
        side = int(250 + 40 * np.sin(k / 6))
        x, y = 80 + 6 * k % 260, 60 + int(40 * np.cos(k / 8))
        frame = np.full((480, 640, 3), 100, np.uint8)
        frame[y:y + side, x:x + side] = cv2.resize(face, (side, side))
        writer.write(frame)
    writer.release()
    return path


def demo(bundle: Path | None, duration: float | None, out: TextIO = sys.stdout) -> int:
    """Run broker, device and subscriber until ``duration`` seconds pass or Ctrl-C; returns the device's exit code."""
    with tempfile.TemporaryDirectory(prefix="fer-demo-") as tmp:
        folder = Path(tmp)
        video = write_video(folder / "astronaut.avi", frames=120)
        broker = local_broker(folder)
        kind = "mosquitto" if broker.protocol == "5" else "embedded amqtt broker (MQTT 3.1.1; install mosquitto for MQTT 5)"
        print(f"broker: {kind} at {broker.url}", file=out)
        config = {"source": {"uri": str(video), "loop": True, "fps": 20},
                  "publish": {"rate_hz": 2, "stats_interval_s": 2},
                  "mqtt": {"broker": broker.url, "device_id": DEVICE_ID, "protocol": broker.protocol},
                  "spool": {"path": str(folder / "spool.db")},
                  "model": {"dir": str(folder / "models"), "bundle": str(bundle or "")}}
        (folder / "device.yaml").write_text(yaml.safe_dump(config))
        log_path = folder / "device.log"
        with open(log_path, "w") as log:
            # its own session: a terminal's Ctrl-C reaches the subscriber, which then stops the device in order
            device = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(folder / "device.yaml")],
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            print(f"device: {DEVICE_ID} (edge run, pid {device.pid}) on a sample video; Ctrl-C stops the demo", file=out)
            try:
                subscribe(broker.url, Target.parse("*"), duration=duration, out=out, protocol=broker.protocol,
                          running=lambda: device.poll() is None)
            finally:
                if device.poll() is None:
                    device.send_signal(signal.SIGTERM)
                code = device.wait(60)
                broker.stop()
        if code != 0:
            tail = "\n".join(log_path.read_text().splitlines()[-5:])
            raise UserError(f"the device exited with code {code}; its last log lines:\n{tail}")
        print("demo stopped cleanly: the device shut down (exit code 0), the broker stopped", file=out)
        return code
