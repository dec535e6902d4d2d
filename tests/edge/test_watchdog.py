"""``edge run`` speaks systemd's notify protocol: READY=1, WATCHDOG=1 only while frames flow, STOPPING=1.

The test plays systemd: it binds the datagram socket that ``$NOTIFY_SOCKET`` names and reads what a
real ``edge run`` process sends there.
"""

from __future__ import annotations

import socket

import pytest
from fixtures.mqtt import Device, device_config, wait_for

from edge.device.watchdog import Notifier


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: collects every datagram."""

    def __init__(self, path):
        self.path, self.states = path, []
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)

    def received(self) -> list[str]:
        try:
            while True:
                self.states.append(self.socket.recv(4096).decode())
        except BlockingIOError:
            return self.states


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    fake = FakeSystemd(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(fake.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # feed every 0.2 s
    yield fake
    fake.socket.close()


def test_ready_then_watchdog_while_frames_flow_then_stopping(tmp_path, tiny_bundle, video, broker, systemd):
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url))
    try:
        wait_for(lambda: systemd.received().count("WATCHDOG=1") >= 3, 60, "three watchdog feeds")
    finally:
        assert device.stop() == 0
    states = systemd.received()
    assert states[0] == "READY=1" and states[-1] == "STOPPING=1", states
    assert set(states[1:-1]) == {"WATCHDOG=1"}, states


def test_no_watchdog_while_the_camera_gives_no_frames(tmp_path, tiny_bundle, broker, systemd):
    device = Device(device_config(tmp_path, tiny_bundle, "9", broker.url))  # there is no /dev/video9
    try:
        wait_for(lambda: "(attempt 3)" in device.text(), 60, "three failed attempts to open the camera")
    finally:
        assert device.stop() == 0
    assert systemd.received() == ["READY=1", "STOPPING=1"]


def test_outside_systemd_nothing_is_sent_and_a_foreign_watchdog_is_ignored():
    assert Notifier({}).interval is None and Notifier({}).notify("READY=1") is None
    foreign = {"NOTIFY_SOCKET": "@fer-edge-test", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier(foreign).interval is None
    abstract = Notifier({"NOTIFY_SOCKET": "@fer-edge-test", "WATCHDOG_USEC": "1000000"})
    assert abstract.address == "\0fer-edge-test" and abstract.interval == 0.5
