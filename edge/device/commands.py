"""The device's one command table: each validated ``cmd`` message goes to exactly one handler here.

The MQTT link has already checked the message against ``schemas/cmd.json`` (size, depth, types,
finite numbers), so handlers read fields directly. Every command except the flash messages is
answered on ``reply`` (``ok``, or ``ok: false`` with the reason); flash messages are answered on
``ota`` by the updater. A handler that fails in a way nobody foresaw is answered and logged too:
no command can stop the device from taking the next one.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from edge.device.link import MqttLink
from edge.device.pipeline import Publisher
from edge.device.updates import Updater
from edge.errors import UserError, printable
from edge.model.bundle import Bundle
from edge.protocol.flash import FLASH_COMMANDS
from edge.protocol.topics import OTA, REPLY

log = logging.getLogger("edge.device.commands")
MAX_ERROR_CHARS = 1000
"""A reply's ``error`` is one line of at most this many characters (``schemas/reply.json`` allows 2000)."""


class Device(Protocol):
    """What the commands act on (the runtime provides it)."""

    link: MqttLink
    updater: Updater | None
    publisher: Publisher
    bundle: Bundle

    def load_bundle(self) -> Bundle: ...

    def install(self, bundle: Bundle) -> None: ...

    def publish_stats(self) -> None: ...


def log_update(answer: dict) -> None:
    """A model update's outcome in the device's log too (the operator sees it on the ``ota`` topic)."""
    if answer["status"] == "installed":
        log.info("model update %s installed: %s version %s", printable(answer["transfer"]), printable(answer["model_id"]),
                 printable(answer["version"]))
    elif answer["status"] == "refused":
        log.warning("model update %s refused: %s", printable(answer["transfer"]), printable(answer["reason"]))


class Commands:
    """``reload``, ``set_rate``, ``stats``, ``trust`` and the flash messages, carried out on the runtime's main thread."""

    def __init__(self, runtime: Device):
        self.runtime = runtime
        self.table: dict[str, Callable[[dict], dict | None]] = {
            "reload": self.reload, "set_rate": self.set_rate, "stats": self.stats, "trust": self.trust,
            **dict.fromkeys(FLASH_COMMANDS, self.flash)}

    def __call__(self, command: dict) -> None:
        name = command["cmd"]
        reply = {"cmd": name, "ok": True, **({"id": command["id"]} if "id" in command else {})}
        try:
            extra = self.table[name](command)
            if extra is None:
                return  # answered on the ota topic
            reply.update(extra)
        except UserError as exc:
            log.warning("command %s failed: %s", printable(name), printable(exc))
            reply.update(ok=False, error=str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:  # noqa: BLE001 - the device must keep taking commands
            log.error("command %s failed unexpectedly: %s: %s", printable(name), type(exc).__name__, printable(exc))
            log.debug("command %s", printable(name), exc_info=True)
            reply.update(ok=False, error=f"internal error: {type(exc).__name__}")
        self.runtime.link.publish(REPLY, reply)

    def publish_updates(self, answers: list[dict]) -> None:
        for answer in answers:
            log_update(answer)
            self.runtime.link.publish(OTA, answer)

    def reload(self, command: dict) -> dict:
        runtime = self.runtime
        self.publish_updates(runtime.updater.reload() if runtime.updater else [])
        runtime.install(runtime.load_bundle())
        return {"model": {"id": runtime.bundle.model_id, "version": runtime.bundle.version}}

    def set_rate(self, command: dict) -> dict:
        self.runtime.publisher.rate_hz = float(command["rate_hz"])  # the schema keeps it finite, in (0, 100]
        log.info("publish rate set to %g Hz per track", self.runtime.publisher.rate_hz)
        return {"rate_hz": self.runtime.publisher.rate_hz}

    def stats(self, command: dict) -> dict:
        self.runtime.publish_stats()
        return {}

    def trust(self, command: dict) -> dict:
        """A signed revocation or new key for the device's trust store (docs/ota.md)."""
        if self.runtime.updater is None:
            raise UserError("model updates are off on this device: set model.trusted_keys")
        log.info("trust store: %s", printable(self.runtime.updater.trust(command["statement"])))
        return {}

    def flash(self, command: dict) -> None:
        if self.runtime.updater is None:
            raise UserError("model updates are off on this device: set model.trusted_keys")
        answer = self.runtime.updater.command(command)
        if answer is not None:
            self.publish_updates([answer])
        return None
