"""What the operator tools read from the broker, checked once before anything uses it.

Anyone who can publish to the broker can publish anything on a device's topics, retained too: a
``state`` that is a list, a confidence that is a string, a topic with a thousand device names, an
event id of a few KB. So ``tools subscribe`` (its table, recording and store), ``tools dashboard`` and
``tools flash`` take a message only through :class:`Gate`, which admits it when

- the device path in its topic is levels of device-id characters (:data:`edge.protocol.topics.NAME`)
  no longer than :data:`MAX_DEVICE_PATH` in all, because the tools use it as a key and a file cell;
- its payload decodes and matches its kind's JSON Schema (``edge/protocol/schemas/``);
- its strings and collections fit :func:`check_bounds`: the schemas leave some ids, labels and versions
  unbounded, and a value of a few KB costs memory in every view and is refused by a database index.

A refused message is dropped, counted by kind, and reported through :class:`RateLimitedLog`: one
line at once, then at most one every :data:`LOG_EVERY_S` seconds saying how many more were dropped,
so a flood cannot fill the terminal. The tool goes on. Values from messages that reach a log line or
a terminal pass :func:`edge.errors.printable` first, so a newline or an escape sequence cannot forge a line.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from edge.errors import UserError, printable
from edge.protocol.payloads import PayloadError, check, loads, schema
from edge.protocol.topics import AVAILABILITY, CMD, DRIFT, EVENTS, OTA, REPLY, ROLLOUT, STATE, STATS, Target, check_prefix

log = logging.getLogger("tools.inbound")

KINDS = (AVAILABILITY, EVENTS, STATE, STATS, OTA, REPLY, DRIFT)
"""The payload kinds the tools read (``cmd`` is what they write; ``drift`` is what ``tools drift`` writes and the
dashboard reads)."""
MAX_DEVICE_PATH = 128
"""Longest ``[group/]device`` path taken from a topic: two full 64-character levels."""
MAX_TEXT = 256
"""Longest string where the schema sets no ``maxLength`` (ids, labels, versions; a device's own are under 100)."""
MAX_ENTRIES = 256
"""Most entries of an object or array where the schema sets no bound (a model's class scores, the faces in view)."""
MAX_DEVICES = 1000
"""Devices a tool keeps a view of; the one seen longest ago goes first beyond it."""
LOG_EVERY_S = 10.0
"""The most one :class:`RateLimitedLog` says: a line at once, then one per this many seconds."""


def check_device_path(path: str) -> str:
    """A ``[group/]device`` path from a topic, or one :class:`PayloadError` line: levels of letters, digits, ``.``,
    ``_``, ``-`` (no empty level, no wildcard), :data:`MAX_DEVICE_PATH` characters at most."""
    if len(path) > MAX_DEVICE_PATH:
        raise PayloadError(f"device path of {len(path)} characters is longer than {MAX_DEVICE_PATH}")
    try:
        return check_prefix(path, "device path")
    except UserError as exc:
        raise PayloadError(printable(exc)) from None


def check_bounds(kind: str, value: object) -> object:
    """``value`` (already valid against its schema) if its strings and collections are bounded, else one
    :class:`PayloadError` line. A bound the schema sets (``maxLength``, ``maxItems``, ``maxProperties``) stands; where
    it sets none, :data:`MAX_TEXT` and :data:`MAX_ENTRIES` apply. Strings must also be storable text: no NUL
    (PostgreSQL's text and jsonb refuse it), no lone surrogate (``"\\ud800"`` is valid JSON but not UTF-8, so a CSV
    recording could not write it). Walked without recursion, beside the schema."""
    stack: list[tuple[object, dict, str]] = [(value, schema(kind), "")]
    while stack:
        item, node, where = stack.pop()
        node = node if isinstance(node, dict) else {}
        if isinstance(item, str):
            _fits(kind, where, len(item), node.get("maxLength", MAX_TEXT), "characters")
            _storable(kind, where, item)
        elif isinstance(item, dict):
            _fits(kind, where, len(item), node.get("maxProperties", MAX_ENTRIES), "entries")
            properties, other = node.get("properties", {}), node.get("additionalProperties", {})
            for key, child in item.items():
                _fits(kind, where, len(key), MAX_TEXT, "characters in a key")
                _storable(kind, where, key)
                stack.append((child, properties.get(key, other), f"{where}/{key}"))
        elif isinstance(item, list):
            _fits(kind, where, len(item), node.get("maxItems", MAX_ENTRIES), "entries")
            stack.extend((child, node.get("items", {}), f"{where}/{n}") for n, child in enumerate(item))
    return value


def _fits(kind: str, where: str, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise PayloadError(f"invalid {kind} at {_place(where)}: {size} {what}, more than {limit}")


def unstorable(text: str) -> str | None:
    """Why PostgreSQL or a CSV file could not hold ``text`` (a NUL character, a lone surrogate), or None."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "a lone surrogate (not UTF-8)"
    return None


def _storable(kind: str, where: str, text: str) -> None:
    if (why := unstorable(text)) is not None:
        raise PayloadError(f"invalid {kind} at {_place(where)}: {why}")


def _place(where: str) -> str:
    return printable(where.lstrip("/") or "(top)", 80)


def parse_payload(kind: str, body: bytes) -> dict | str:
    """One message body of ``kind`` decoded and checked (schema, then bounds): the plain text of ``availability``,
    the object of every other kind; one :class:`PayloadError` line otherwise."""
    if kind == AVAILABILITY:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise PayloadError("availability is not UTF-8 text") from None
        return check(AVAILABILITY, text)
    return check_bounds(kind, check(kind, loads(body)))


class RateLimitedLog:
    """Says a line at once, then at most one per ``every_s`` (with how many it kept quiet in between)."""

    def __init__(self, say: Callable[[str], None], every_s: float = LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.say, self.every_s, self.clock = say, every_s, clock
        self._next = float("-inf")
        self.quiet = 0

    def __call__(self, line: str) -> None:
        now = self.clock()
        if now < self._next:
            self.quiet += 1
            return
        more = f" (and {self.quiet} more since the last such line)" if self.quiet else ""
        self.say(line + more)
        self.quiet, self._next = 0, now + self.every_s


@dataclass(frozen=True)
class Message:
    """An admitted message: the device path from its topic, its kind and its checked payload."""

    device: str
    kind: str
    payload: dict | str | None


class Gate:
    """The one way the tools take a message: ``admit`` returns it checked, or None (not ours, or dropped).

    Topics outside ``prefix``, outside ``target`` or of another kind are not ours and pass silently (the dashboard
    subscribes to the whole prefix, which carries ``cmd`` too). An empty body is a retained message being cleared,
    not an error. Anything else that fails a check is dropped: counted in :attr:`dropped` by kind, and logged.
    A kind in ``unread`` is taken on its topic alone, its payload None: a tool that only notes that a device spoke
    (the dashboard with a database) need not pay for a schema check per event (about half a millisecond)."""

    def __init__(self, prefix: str, kinds: Iterable[str] = KINDS, target: Target | None = None,
                 unread: Iterable[str] = (), say: Callable[[str], None] = log.warning):
        self.prefix, self.target, self.unread = prefix, target, frozenset(unread)
        self.kinds = frozenset(kinds) | self.unread
        self.dropped: Counter[str] = Counter()
        self._say = RateLimitedLog(say)

    def admit(self, topic: str, body: bytes) -> Message | None:
        if not topic.startswith(self.prefix + "/") or not body:
            return None
        path, _, kind = topic[len(self.prefix) + 1:].rpartition("/")
        if kind not in self.kinds or (self.target is not None and self.target.device_of(self.prefix, topic) is None):
            return None
        try:
            return Message(check_device_path(path), kind, None if kind in self.unread else parse_payload(kind, body))
        except PayloadError as exc:
            self.drop(kind, topic, str(exc))
            return None

    def admit_rollout(self, topic: str, body: bytes) -> tuple[str, dict | None] | None:
        """A rollout's progress, ``<prefix>/rollout/<name>`` (:mod:`tools.rollout`): ``(name, payload)`` checked like
        any message, ``(name, None)`` where its retained message was cleared, or None (not one, or dropped). A topic
        whose last level is a kind is a device's (a device may be named ``rollout``), never a rollout's."""
        levels = topic.split("/")
        if topic[:len(self.prefix) + 1] != self.prefix + "/" or len(levels) != self.prefix.count("/") + 3 \
                or levels[-2] != ROLLOUT or levels[-1] in (*KINDS, CMD):
            return None
        name = levels[-1]
        try:
            check_device_path(name)
            return name, parse_payload(ROLLOUT, body) if body else None
        except PayloadError as exc:
            self.drop(ROLLOUT, topic, str(exc))
            return None

    def drop(self, kind: str, topic: str, reason: str) -> None:
        """Count and (rate-limited) log one refused message."""
        self.dropped[kind] += 1
        self._say(f"dropped a message on {printable(topic, 160)}: {printable(reason)}")

    @property
    def total(self) -> int:
        return sum(self.dropped.values())


class RecentDevices(OrderedDict):
    """Views by device path, at most ``limit`` of them: the one heard from longest ago is evicted first (logged,
    rate-limited), so names published to exhaust a tool's memory cost it a bounded table, not the process."""

    def __init__(self, limit: int = MAX_DEVICES, say: Callable[[str], None] = log.warning):
        super().__init__()
        if limit < 1:
            raise UserError("--max-devices must be at least 1")
        self.limit, self.evicted = limit, 0
        self._say = RateLimitedLog(say)

    def touch(self, device: str, make: Callable[[str], object]) -> tuple[object, list[str]]:
        """The view of ``device`` (made if new), now the most recent; and the devices evicted to make room."""
        view = self.get(device)
        if view is None:
            view = self[device] = make(device)
        else:
            self.move_to_end(device)
        gone = [self.popitem(last=False)[0] for _ in range(len(self) - self.limit)]
        if gone:
            self.evicted += len(gone)
            self._say(f"tracking the {self.limit} most recently seen devices: forgot {printable(gone[0], 140)} "
                      f"({self.evicted} forgotten so far; raise --max-devices for a larger fleet)")
        return view, gone
