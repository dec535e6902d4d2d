"""The device's only MQTT code (paho-mqtt 2.x, MQTT 5 or 3.1.1); topics and payloads are in docs/mqtt.md.

Topics under ``<prefix>/<device_id>/``: ``availability`` (retained ``online``/``offline``, the
Last Will, so a crashed or unplugged device reads ``offline``), ``events`` (QoS 1, from the
:class:`~edge.device.spool.Spool`, oldest first), ``state`` (retained), ``stats``, ``cmd`` (commands in,
checked against ``schemas/cmd.json``), ``reply`` (the answer to each command) and ``ota``
(answers of the flash protocol, :mod:`edge.protocol.flash`, :mod:`edge.device.updates`).

Events are never handed to paho directly: a sender thread publishes the spool's oldest rows
(at most ``WINDOW`` unacknowledged at a time) and deletes each row when its PUBACK arrives. After a
reconnect it starts again from the oldest unacknowledged row, so nothing is lost and order holds.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.device.guard import run_guarded
from edge.device.spool import Spool
from edge.errors import printable
from edge.protocol.client import MqttConfig, describe_refusal, make_client
from edge.protocol.homeassistant import discovery
from edge.protocol.payloads import PayloadError, encode, parse
from edge.protocol.topics import AVAILABILITY, CMD, EVENTS, OFFLINE, ONLINE, REPLY, STATE, STATS, device_topic

log = logging.getLogger("edge.device.link")
WINDOW = 20
OUTGOING = 1000
"""Messages paho may hold for sending (in flight or waiting): every command is answered, so a flood of commands
must not grow the outgoing queue without bound; beyond it an answer or stats message is skipped, and an event stays
in the spool for the next round."""


class MqttLink:
    """Publishes the runtime's messages and hands it validated commands (``on_command``, paho's thread)."""

    def __init__(self, cfg: MqttConfig, spool: Spool, on_command: Callable[[dict], None]):
        self.cfg, self.spool, self.on_command = cfg, spool, on_command
        self.host, self.port, _ = cfg.endpoint()
        self.base = cfg.base
        self.connected = False
        self._retained: dict[str, bytes] = {}
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake, self._reset, self._stop = threading.Event(), threading.Event(), threading.Event()
        self.client = make_client(cfg, f"fer-edge-{cfg.device_id}", will=(self.topic(AVAILABILITY), OFFLINE))
        self.client.max_queued_messages_set(OUTGOING)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_publish, self.client.on_message = self._on_publish, self._on_message
        self._sender = threading.Thread(target=self._guarded_sender, name="mqtt-sender", daemon=True)
        self._refused = False
        self._online_at = 0.0
        self._broker = ""
        """The broker's state as last logged: each state is logged once, not once per reconnect attempt."""
        self.failure: str | None = None
        """Why the sender thread died, if it did (the runtime then stops with an error)."""

    def topic(self, kind: str) -> str:
        return device_topic(self.base, kind)

    def start(self) -> None:
        """Connect in the background: the runtime runs (and spools) while the broker is unreachable."""
        log.info("connecting to MQTT broker %s:%d as %s", printable(self.host), self.port, printable(self.base))
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._sender.start()

    def event(self, payload: dict) -> None:
        self.spool.push(self.topic(EVENTS), encode(payload))
        self._wake.set()

    def state(self, payload: dict) -> None:
        """Retained: remembered and published again after each reconnect."""
        self._retained[self.topic(STATE)] = encode(payload)
        self._publish(self.topic(STATE), encode(payload), qos=1, retain=True)

    def publish(self, kind: str, payload: dict) -> None:
        """A message that matters only now (stats, command replies): sent when connected, else skipped."""
        self._publish(self.topic(kind), encode(payload), qos=0 if kind == STATS else 1)

    def _publish(self, topic: str, payload: bytes | str, qos: int, retain: bool = False) -> None:
        if self.connected:
            self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, flush_s: float = 5.0) -> None:
        """Deliver what is spooled (up to ``flush_s``), announce ``offline``, disconnect."""
        end = time.monotonic() + flush_s
        while self.connected and self.spool.pending and time.monotonic() < end:
            self._wake.set()
            time.sleep(0.05)
        if self.spool.pending:
            log.warning("%d events stay spooled for the next start", self.spool.pending)
        self._stop.set()
        self._wake.set()
        self._sender.join(5)
        if self.connected:
            info = self.client.publish(self.topic(AVAILABILITY), OFFLINE, qos=1, retain=True)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:  # else the outgoing queue is full; MQTT 5 lets the online expire
                info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._refused = True
            self._log_broker(f"refused {reason}", logging.ERROR, "MQTT broker %s:%d refused the connection: %s",
                             describe_refusal(reason))
            return
        self._log_broker("connected", logging.INFO, "connected to MQTT broker %s:%d")
        self._refused = False
        client.subscribe(self.topic(CMD), qos=1)
        self._announce_online()
        for topic, payload in self._retained.items():
            client.publish(topic, payload, qos=1, retain=True)
        if self.cfg.homeassistant:
            client.publish(*discovery(self.cfg), qos=1, retain=True)
        self.connected = True
        self._reset.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected = False
        if not self._stop.is_set() and not self._refused:  # a refusal was logged already, as what it is
            self._log_broker("lost", logging.WARNING, "lost the MQTT broker %s:%d (%s): events are spooled "
                             "(%d waiting) until it is back", reason, self.spool.pending)

    def _on_connect_fail(self, client, userdata) -> None:
        """A connection attempt that never reached MQTT (refused port, no route, DNS, TLS). paho calls this from
        inside its ``except OSError`` around the attempt and passes no reason, so the reason is that exception."""
        reason = sys.exc_info()[1] or "connection failed"
        self._log_broker(f"unreachable {reason}", logging.WARNING, "MQTT broker %s:%d is unreachable (%s): retrying, "
                         "events are spooled (%d waiting)", reason, self.spool.pending)

    def _log_broker(self, state: str, level: int, message: str, *args) -> None:
        """Log ``message`` (formatted with host, port and ``args``) if ``state`` differs from the last one logged."""
        if state != self._broker:
            self._broker = state
            log.log(level, message, printable(self.host), self.port,
                    *(a if isinstance(a, (int, float)) else printable(a) for a in args))

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        """Runs on paho's network thread: nothing a message holds may raise out of here.

        A retained message is never obeyed: the broker hands it out again on every (re)connect, so one retained
        ``set_rate`` would run again after each network hiccup, and anyone who could publish once would own the device
        for good. It is left on the broker as it is (clearing it is the operator's call) and logged."""
        if message.retain:
            log.warning("ignored a retained command on %s: commands are never retained (remove it with "
                        "mosquitto_pub -r -n -t TOPIC)", printable(message.topic))
            return
        try:
            command = parse(CMD, message.payload)
        except PayloadError as exc:
            log.warning("refused command on %s: %s", printable(message.topic), printable(exc))
            self.publish(REPLY, {"cmd": None, "ok": False, "error": f"invalid command: {exc}"})
            return
        self.on_command(command)

    def _announce_online(self) -> None:
        """Retained ``online``; with MQTT 5 it expires unless refreshed, so a device that vanished while the
        broker was down (its Last Will lost with the broker's memory) does not read ``online`` forever."""
        properties = None
        if self.cfg.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = int(self.cfg.availability_ttl_s)
        self.client.publish(self.topic(AVAILABILITY), ONLINE, qos=1, retain=True, properties=properties)
        self._online_at = time.monotonic()

    def _guarded_sender(self) -> None:
        run_guarded(self._send_spooled, "MQTT sender thread", lambda reason: setattr(self, "failure", reason))

    def _send_spooled(self) -> None:
        """The sender thread: keep up to WINDOW spooled events in flight, oldest first, delete on PUBACK."""
        inflight: dict[int, int] = {}  # paho message id -> spool seq
        last = 0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._reset.is_set():  # a new connection: resend everything not acknowledged
                self._reset.clear()
                inflight.clear()
                last = 0
            acked = []
            while not self._acks.empty():
                seq = inflight.pop(self._acks.get(), None)
                if seq is not None:
                    acked.append(seq)
            if acked:
                self.spool.ack(acked)
            if self.connected and self.cfg.protocol == "5" and \
                    time.monotonic() - self._online_at > self.cfg.availability_ttl_s / 3:
                self._announce_online()
            if not self.connected or len(inflight) >= WINDOW:
                continue
            for seq, topic, payload in self.spool.after(last, WINDOW - len(inflight)):
                info = self.client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                inflight[info.mid], last = seq, seq
