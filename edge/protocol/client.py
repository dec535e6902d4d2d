"""The one MQTT client factory, built from one MQTT config, for the device and every operator tool.

In the manner of Home Assistant's ``MqttClientSetup``: whoever talks to the broker gets its paho
client from :func:`make_client`, so protocol version, credentials (user name in the URL or config,
password only from the environment), TLS (CA, client certificate and key) and reconnect backoff are
set up one way, and refusals are described one way (:func:`describe_refusal`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from edge.errors import UserError
from edge.protocol.topics import check_name, check_prefix
from edge.validate import choice, positive

log = logging.getLogger("edge.protocol.client")

PROTOCOLS = ("5", "3.1.1")
AUTH_REFUSALS = {4, 5, 134, 135}
"""CONNACK reason codes of MQTT 3.1.1 (4, 5) and 5 (134 bad user name or password, 135 not authorized)."""


@dataclass
class MqttConfig:
    """Where the broker is and how to talk to it: the device's ``mqtt`` section; the tools build one from flags."""

    broker: str = "mqtt://localhost:1883"
    """``mqtt[s]://[user@]host[:port]``; mqtts uses TLS (port 8883 by default)."""
    device_id: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "edge")
    prefix: str = "fer"
    protocol: str = "5"
    """``5`` or ``3.1.1``."""
    username: str = ""
    password_env: str = "MQTT_PASSWORD"
    """Name of the environment variable holding the password (never the password itself)."""
    tls_ca: str = ""
    """CA file for mqtts:// (empty: the system's CAs)."""
    tls_cert: str = ""
    tls_key: str = ""
    keepalive_s: int = 15
    reconnect_max_s: float = 30.0
    availability_ttl_s: float = 300.0
    """MQTT 5: the retained ``online`` expires this long after the device last refreshed it (every third of
    it), so a device that vanished while the broker was down does not read ``online`` forever."""
    homeassistant: bool = False
    """Publish Home Assistant MQTT discovery so the device's overall emotion appears as a sensor."""
    discovery_prefix: str = "homeassistant"

    def check(self) -> None:
        choice(self, "protocol", PROTOCOLS)
        positive(self, "keepalive_s", "reconnect_max_s", "availability_ttl_s")
        check_name(self.device_id, "config mqtt.device_id")
        check_prefix(self.prefix, "config mqtt.prefix")
        check_name(self.discovery_prefix, "config mqtt.discovery_prefix")
        for key in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise UserError(f"config mqtt.{key} {path!r} is not a readable file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UserError("config mqtt.tls_cert and mqtt.tls_key go together (a client certificate needs its key)")
        self.endpoint()

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) of :attr:`broker`; a user name in the URL goes to :attr:`username`."""
        bad = f"mqtt.broker {self.broker!r} is not mqtt[s]://[user@]host[:port] (passwords go in ${self.password_env})"
        try:
            parts = urlsplit(self.broker if "://" in self.broker else f"mqtt://{self.broker}")
            hostname = parts.hostname
        except ValueError:  # an unclosed IPv6 bracket
            raise UserError(bad) from None
        try:
            port = parts.port
        except ValueError:
            raise UserError(f"mqtt.broker {self.broker!r} has a bad port") from None
        if parts.scheme not in ("mqtt", "mqtts") or not hostname or parts.password or parts.path not in ("", "/"):
            raise UserError(bad)
        port = port or (8883 if parts.scheme == "mqtts" else 1883)
        if parts.username:
            self.username = unquote(parts.username)
        return hostname, port, parts.scheme == "mqtts"

    @property
    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (plain MQTT is only safe there)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_refusal(reason) -> str:
    """A CONNACK refusal in words, with what to check when it is about credentials."""
    hint = " (check the user name and the password variable)" if getattr(reason, "value", None) in AUTH_REFUSALS else ""
    return f"{reason}{hint}"


def make_client(cfg: MqttConfig, client_id: str, will: tuple[str, str] | None = None) -> mqtt.Client:
    """A configured, unconnected paho client; ``will`` is a retained QoS 1 (topic, payload) Last Will."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311)
    host, _, tls = cfg.endpoint()
    if cfg.username and not tls and not is_loopback(host):
        log.warning("mqtt.broker %s sends the user name and password for %s unencrypted across the network: use "
                    "mqtts:// (the shipped broker configuration serves TLS on 8883, docs/security.md)", cfg.broker,
                    cfg.username)
    if will:
        client.will_set(will[0], will[1], qos=1, retain=True)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    if tls:
        try:
            client.tls_set(ca_certs=cfg.tls_ca or None, certfile=cfg.tls_cert or None, keyfile=cfg.tls_key or None)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UserError(f"cannot set up TLS for {cfg.broker}: {exc}") from None
    client.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_s)))
    client.suppress_exceptions = True  # a callback that raises is logged; it never kills paho's network thread
    return client
