"""The operator tools' MQTT side: broker URLs, device targets, one connection type for flash and subscribe.

Topics are ``<prefix>/[<group>/...]<device>/<kind>`` (kind: availability, events, state, stats,
cmd, ota). A *group* is extra levels in a device's prefix (a device configured with prefix
``fer/kitchen`` is ``kitchen/pi-01`` to the tools), so a target is a device id or a
glob over such paths (``'pi-*'``, ``'kitchen/*'``, ``'*'``). Device ids and group
names are letters, digits, ``.``, ``_``, ``-``: MQTT wildcards (``+``, ``#``) or empty levels would
let a name address other devices' topics, so they are refused.
"""

from __future__ import annotations

import fnmatch
import json
import queue
import re
import threading
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edge.config import NAME, MqttConfig
from edge.errors import UserError

GLOB_LEVEL = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,64}")
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Target:
    """What a user named with --device/--group: a path of levels below the prefix, maybe with globs."""

    text: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        levels = text.split("/")
        if len(levels) > 1 and not set(text) & GLOB_CHARS:
            raise UserError(f"device id {text!r} may not contain '/' (reach devices in a group with a glob: 'kitchen/*')")
        for level in levels:
            if set(level) & GLOB_CHARS:
                ok = GLOB_LEVEL.fullmatch(level) and level not in (".", "..")
            else:
                ok = NAME.fullmatch(level)
            if not ok:
                raise UserError(f"device or group {text!r} is not allowed: names are letters, digits, '.', '_', '-' "
                                f"(globs * ? [ ] allowed; '+', '#', empty levels and paths are not)")
        return cls(text)

    @property
    def is_pattern(self) -> bool:
        return bool(set(self.text) & GLOB_CHARS)

    def topic_filter(self, prefix: str, kind: str) -> str:
        """An MQTT filter for this target's ``kind`` topics (glob levels become ``+``, then matched exactly)."""
        levels = ["+" if set(level) & GLOB_CHARS else level for level in self.text.split("/")]
        return "/".join([prefix, *levels, kind])

    def device_of(self, prefix: str, topic: str) -> tuple[str, str] | None:
        """``(device path, kind)`` for a topic that belongs to this target, else None."""
        if not topic.startswith(prefix + "/"):
            return None
        path, _, kind = topic[len(prefix) + 1:].rpartition("/")
        return (path, kind) if fnmatch.fnmatchcase(path, self.text) and path.count("/") == self.text.count("/") else None


class Connection:
    """A connected MQTT client (5, or 3.1.1 for older brokers) whose received messages wait in a queue for the caller's thread.

    Connecting either succeeds or raises one :class:`UserError` line (refused credentials are
    not retried); later drops are reconnected by paho and the subscriptions renewed."""

    def __init__(self, url: str, name: str, timeout: float = 10.0, protocol: str = "5"):
        # the device's rules: mqtt[s]://[user@]host[:port], password from $MQTT_PASSWORD, protocol "5" or "3.1.1"
        broker = MqttConfig(broker=url, protocol=protocol)
        host, port, tls = broker.endpoint()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._filters: list[str] = []
        self._connack = threading.Event()
        self._reason: mqtt.ReasonCode | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        if tls:
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, msg: self.messages.put((msg.topic, msg.payload))
        where = f"{host}:{port}"
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise UserError(f"cannot reach MQTT broker {where}: {exc}") from None
        self.client.loop_start()
        if not self._connack.wait(timeout):
            self.close()
            raise UserError(f"MQTT broker {where} did not answer within {timeout:g} s")
        if self._reason.is_failure:
            self.close()
            hint = " (check the user name and password)" if self._reason.value in (134, 135) else ""
            raise UserError(f"MQTT broker {where} refused the connection: {self._reason}{hint}")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._reason = reason
        if not reason.is_failure:
            for topic_filter in self._filters:
                client.subscribe(topic_filter, qos=1)
        self._connack.set()

    def subscribe(self, *filters: str) -> None:
        self._filters.extend(filters)
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)

    def publish(self, topic: str, payload: dict) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, json.dumps(payload, separators=(",", ":")), qos=1)

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.messages.get(timeout=max(timeout, 0))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def decode(payload: bytes) -> dict | str:
    """A message body as JSON, or as text for plain payloads such as ``online``/``offline``."""
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")
