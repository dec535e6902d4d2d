"""The operator tools' connection: a paho client from the one factory, received messages queued for the caller.

Flash, subscribe, the dashboard and the demo all connect through :class:`Connection`, built from an
:class:`~edge.protocol.client.MqttConfig` exactly as a device builds its link (same URL rules,
password from ``$MQTT_PASSWORD``, TLS CA/certificate/key, protocol version).

A subscriber that must not lose events (``subscribe --record/--store``) names a ``session``: a fixed
client id whose MQTT 5 session the broker keeps for :data:`SESSION_EXPIRY_S` while the process is
down, queueing its QoS 1 messages; with ``manual_ack`` a message is acknowledged only when the caller
calls :meth:`Connection.ack` after storing it, so one that was delivered but not yet stored when the
process died is delivered again.
"""

from __future__ import annotations

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.errors import UserError
from edge.protocol.client import MqttConfig, describe_refusal, make_client
from edge.protocol.payloads import encode

SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps a named session's queued messages while its subscriber is down."""

def broker_config(url: str, protocol: str = "5", tls_ca: str = "", tls_cert: str = "", tls_key: str = "") -> MqttConfig:
    """The tools' MQTT config from their flags, checked like a device's ``mqtt`` section."""
    cfg = MqttConfig(broker=url, protocol=protocol, tls_ca=tls_ca or "", tls_cert=tls_cert or "", tls_key=tls_key or "",
                     device_id="tools")
    cfg.check()
    return cfg


class Connection:
    """A connected MQTT client whose received messages wait in a queue for the caller's thread.

    Connecting either succeeds or raises one :class:`UserError` line (refused credentials are
    not retried); later drops are reconnected by paho and the subscriptions renewed."""

    def __init__(self, broker: MqttConfig | str, name: str, timeout: float = 10.0, protocol: str = "5",
                 session: str | None = None, manual_ack: bool = False):
        cfg = broker if isinstance(broker, MqttConfig) else broker_config(broker, protocol)
        host, port, _ = cfg.endpoint()
        if session and cfg.protocol != "5":
            raise UserError("a persistent session needs MQTT 5 (session expiry); drop --protocol 3.1.1")
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._filters: list[tuple[str, int]] = []
        self._connack = threading.Event()
        self._reason: mqtt.ReasonCode | None = None
        self.client = make_client(cfg, session or f"{name}-{uuid.uuid4().hex[:8]}")
        self.client.manual_ack_set(manual_ack)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        where = f"{host}:{port}"
        keep: dict = {}
        if session:
            keep["properties"] = Properties(PacketTypes.CONNECT)
            keep["properties"].SessionExpiryInterval = SESSION_EXPIRY_S
            keep["clean_start"] = False
        try:
            self.client.connect(host, port, keepalive=30, **keep)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot reach MQTT broker {where}: {exc}") from None
        self.client.loop_start()
        if not self._connack.wait(timeout):
            self.close()
            raise UserError(f"MQTT broker {where} did not answer within {timeout:g} s")
        if self._reason.is_failure:
            self.close()
            raise UserError(f"MQTT broker {where} refused the connection: {describe_refusal(self._reason)}")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._reason = reason
        if not reason.is_failure:
            for topic_filter, qos in self._filters:
                client.subscribe(topic_filter, qos=qos)
        self._connack.set()

    def subscribe(self, *filters: str, qos: int = 1) -> None:
        self._filters.extend((f, qos) for f in filters)
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=qos)

    def publish(self, topic: str, payload: dict, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, encode(payload), qos=1, retain=retain)

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        """The next message's (topic, payload), or None after ``timeout`` seconds."""
        message = self.receive(timeout)
        return None if message is None else (message.topic, message.payload)

    def receive(self, timeout: float) -> mqtt.MQTTMessage | None:
        """The next message itself (for :meth:`ack`), or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=max(timeout, 0))
        except queue.Empty:
            return None

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """Acknowledge a message received with ``manual_ack`` (in the order received, as MQTT requires)."""
        if message.qos > 0:
            self.client.ack(message.mid, message.qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
