"""Topic names: ``<prefix>/[<group>/...]<device>/<kind>``, and the targets operators address.

A *group* is extra levels in a device's prefix (a device configured with prefix ``fer/kitchen`` is
``kitchen/pi-01`` to the tools), so a target is a device id or a glob over such paths (``'pi-*'``,
``'kitchen/*'``, ``'*'``). Device ids and group names are letters, digits, ``.``, ``_``, ``-``: MQTT
wildcards (``+``, ``#``) or empty levels would let a name address other devices' topics.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from edge.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Device ids, bundle names and topic levels."""

AVAILABILITY, EVENTS, STATE, STATS, CMD, REPLY, OTA = "availability", "events", "state", "stats", "cmd", "reply", "ota"
KINDS = (AVAILABILITY, EVENTS, STATE, STATS, CMD, REPLY, OTA)
DRIFT = "drift"
"""The operator side's drift alert (``tools drift``, retained): not a device kind, so not in :data:`KINDS`."""
ROLLOUT = "rollout"
"""The level of a rollout's progress, ``<prefix>/rollout/<name>`` (``tools rollout``, retained): not a device's."""
ONLINE, OFFLINE = "online", "offline"
"""The retained ``availability`` payloads (plain text; ``offline`` is also the Last Will)."""

GLOB_LEVEL = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,64}")
GLOB_CHARS = set("*?[")


def check_name(text: str, what: str = "device id") -> str:
    """``text`` if it is a valid single topic level, else one line saying why not."""
    if not isinstance(text, str) or not NAME.fullmatch(text):
        raise UserError(f"{what} {text!r} is not allowed: use 1-64 letters, digits, '.', '_', '-' "
                        "(no '/', '+', '#', no empty name)")
    return text


def check_prefix(prefix: str, what: str = "topic prefix") -> str:
    """A topic prefix: levels of :data:`NAME` joined by ``/``."""
    if not isinstance(prefix, str) or not all(NAME.fullmatch(level) for level in prefix.split("/")):
        raise UserError(f"{what} {prefix!r}: levels of letters, digits, '.', '_', '-' joined by '/'")
    return prefix


def device_topic(base: str, kind: str) -> str:
    """``<prefix>/<device>/<kind>`` for a device's ``base`` (``<prefix>/<device>``)."""
    return f"{base}/{kind}"


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
