"""Operator side of the devices' trust stores: a signed revocation or a new key, sent to each device's ``cmd``.

The device checks the statement against the keys it trusts, applies it and keeps it across restarts
(:class:`edge.model.trust.TrustStore`); this module signs it with the operator's key, sends it and reports each
device's answer. Rotation: the current key introduces its successor (``tools trust add-key NEW.pub --key OLD.key``)
while the old one is still trusted; revocation then retires the old one (``tools trust revoke OLD_ID --key NEW.key``).
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from edge.errors import printable
from edge.model.trust import revocation, rotation, sign_statement
from edge.protocol.client import MqttConfig
from edge.protocol.payloads import PayloadError
from edge.protocol.topics import CMD, REPLY, Target, device_topic
from tools.flash import resolve_devices
from tools.inbound import parse_payload
from tools.mqtt_client import Connection
from tools.signing import load_private_key


def statement(kind: str, values: list[str], key: Path) -> dict:
    """``revoke`` (values: key ids) or ``add-key`` (values: one public key file), signed with ``key``."""
    body = revocation(values) if kind == "revoke" else rotation(Path(values[0]))
    return sign_statement(load_private_key(key), body)


def send(signed: dict, targets: list[Target], broker: MqttConfig | str, prefix: str = "fer", timeout: float = 20.0,
         protocol: str = "5") -> dict[str, str]:
    """Each target device's answer: ``ok: <what changed>`` or its one-line refusal, or that it did not answer."""
    conn = Connection(broker, "tools-trust", protocol=protocol)
    try:
        devices = resolve_devices(conn, prefix, targets)
        conn.subscribe(*(device_topic(f"{prefix}/{d}", REPLY) for d in devices))
        command = {"cmd": "trust", "id": secrets.token_hex(8), "statement": signed}
        for device in devices:
            conn.publish(device_topic(f"{prefix}/{device}", CMD), command)
        answers = {d: f"no answer within {timeout:g} s (device offline?)" for d in devices}
        pending, deadline = set(devices), time.monotonic() + timeout
        while pending and (message := conn.get(deadline - time.monotonic())) is not None:
            topic, body = message
            device = topic[len(prefix) + 1:].rpartition("/")[0]
            try:
                reply = parse_payload(REPLY, body)
            except PayloadError:
                continue  # not a device's answer (anyone may publish on the broker)
            if device in pending and reply.get("id") == command["id"]:
                answers[device] = "ok" if reply["ok"] else f"refused: {printable(reply.get('error', ''))}"
                pending.discard(device)
        return answers
    finally:
        conn.close()
