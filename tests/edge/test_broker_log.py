"""A device's log says what the broker is doing once per change, with the reason, not once per retry.

The link runs against a real mosquitto that is down, then up, then down again; paho retries every
second, and each retry that ends like the one before must add nothing to the log.
"""

from __future__ import annotations

import logging
import threading

from fixtures.mqtt import Mosquitto, wait_for

from edge.device.link import MqttLink
from edge.device.spool import Spool
from edge.protocol.client import MqttConfig


class Counting:
    """Wraps one of the link's paho callbacks to count its calls (the retries the log must not repeat)."""

    def __init__(self, client, name: str):
        self.calls, self.lock = 0, threading.Lock()
        wrapped = getattr(client, name)

        def counted(*args):
            wrapped(*args)
            with self.lock:
                self.calls += 1
        setattr(client, name, counted)


def link_to(port: int, tmp_path, **mqtt) -> MqttLink:
    cfg = MqttConfig(broker=f"mqtt://127.0.0.1:{port}", device_id="pi-log", keepalive_s=2, reconnect_max_s=1, **mqtt)
    cfg.check()
    return MqttLink(cfg, Spool(tmp_path / "spool.db", 100), on_command=lambda command: None)


def broker_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.device.link" and "MQTT broker" in r.getMessage()]


def test_unreachable_connected_lost_each_logged_once_with_the_reason(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.device.link")
    broker = Mosquitto(tmp_path)  # its port is chosen; nothing listens there until start()
    link = link_to(broker.port, tmp_path)
    failures = Counting(link.client, "on_connect_fail")
    link.start()
    try:
        wait_for(lambda: failures.calls >= 3, 30, "three failed connection attempts")
        broker.start()
        wait_for(lambda: link.connected, 30, "the connection")
        down = failures.calls
        broker.stop()
        wait_for(lambda: failures.calls >= down + 3, 30, "three failed reconnection attempts")
    finally:
        link.stop(flush_s=0)
    lines = broker_lines(caplog)
    kinds = [next(k for k in ("is unreachable", "connected to", "lost the") if k in line) for line in lines[1:]]
    assert lines[0].startswith("connecting to MQTT broker") and kinds == ["is unreachable", "connected to", "lost the",
                                                                          "is unreachable"], lines
    assert "Connection refused" in lines[1] and f"127.0.0.1:{broker.port}" in lines[1]


def test_a_refusing_broker_is_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.device.link")
    broker = Mosquitto(tmp_path, users={"ops": "right"})
    broker.start()
    link = link_to(broker.port, tmp_path)  # anonymous: refused at every attempt
    attempts = Counting(link.client, "on_connect")
    link.start()
    try:
        wait_for(lambda: attempts.calls >= 3, 30, "three refused attempts")
    finally:
        link.stop(flush_s=0)
        broker.stop()
    refusals = [line for line in broker_lines(caplog) if "refused the connection" in line]
    assert len(refusals) == 1 and "Not authorized" in refusals[0], broker_lines(caplog)
    assert not [line for line in broker_lines(caplog) if "lost the" in line or "unreachable" in line]
