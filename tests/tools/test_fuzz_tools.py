"""Issue 33, item 5: whatever anyone publishes to the broker, ``tools subscribe`` and ``tools dashboard`` keep running
and keep working (Hypothesis over a real mosquitto, both tools as real processes).

Each example publishes a handful of random and hostile messages (random bytes, random JSON, valid payloads of every
kind with one field replaced or removed, NaN, deep nesting, oversized payloads, lone surrogates, odd device names
in the topic, retained or not), then one valid event and one valid state under a fresh id: the subscriber must
record that event and the dashboard must show that state. A longer hunt:
``python -m pytest tests/tools/test_fuzz_tools.py --hypothesis-profile=long``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures.fleet import Subscribe, client, event
from fixtures.mqtt import Mosquitto, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tools_mqtt import state, stats

from tools.broker import _listening, free_port
from tools.inbound import LOG_EVERY_S

VALID = {"events": event("pi-01", 3), "state": state("pi-01"), "stats": stats("pi-01"),
         "ota": {"transfer": "abc", "status": "incomplete", "model_id": "m", "version": "v", "missing": "1-2, 5"},
         "reply": {"cmd": "stats", "ok": True, "id": "x"}, "availability": "online"}
KINDS = [*VALID, "cmd", "", "events/extra"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
    | st.sampled_from(["x" * 300, "=cmd|' /C calc'!A0", "\x1b[2J\n", "\u202e", "a\x00b", "-1", "online"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)


def paths(value, prefix=()) -> list[tuple]:
    """Every path to a node of a JSON value (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw, kind: str):
    """A valid ``kind`` payload with one node replaced by any JSON value, or one key removed."""
    payload = copy.deepcopy(VALID[kind])
    path = draw(st.sampled_from(paths(payload)))
    if not path:
        return draw(json_values)
    parent = payload
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return payload


HOSTILE = [b"", b"NaN", b'{"ts": Infinity}', b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
           b'"\\ud800"', b'{"event_id": "\\ud800"}', b"\xff\xfe\x00", b"x" * (2 * 2**20 + 10),
           json.dumps({**VALID["events"], "event_id": "y" * 5000}).encode(),
           json.dumps({**VALID["state"], "overall": {**VALID["state"]["overall"], "label": "\x00"}}).encode(),
           json.dumps({**VALID["events"], "scores": {str(i): 0.001 for i in range(1000)}}).encode()]


def to_bytes(value) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


payloads = (st.sampled_from(HOSTILE) | st.binary(max_size=200) | json_values.map(to_bytes)
            | st.sampled_from([k for k in VALID if k != "availability"]).flatmap(mutated).map(to_bytes))
names = (st.sampled_from(["pi-01", "kitchen/pi-02", "pi-03"])  # mosquitto itself refuses control characters in topics
         | st.text(st.characters(blacklist_characters="+#\ufffe\uffff", blacklist_categories=("Cs", "Cc")), max_size=70))
messages = st.tuples(st.sampled_from(["fer", "fer", "other"]), names, st.sampled_from(KINDS), payloads, st.booleans())


class Tools:
    """One broker with ``tools subscribe --record`` and ``tools dashboard`` on it, for the whole module."""

    def __init__(self, folder: Path):
        self.started = time.monotonic()
        self.broker = Mosquitto(folder)
        self.broker.start()
        self.record = folder / "rec.jsonl"
        self.subscriber = Subscribe(folder / "sub", "--broker", self.broker.url, "--record", str(self.record))
        self.port = free_port()
        self.dashboard_log = folder / "dashboard.log"
        with open(self.dashboard_log, "w") as out:
            self.dashboard = subprocess.Popen(
                [str(Path(sysconfig.get_path("scripts")) / "tools"), "dashboard", "--port", str(self.port),
                 "--broker", self.broker.url], cwd=folder, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.dashboard.poll() is not None or _listening(self.port), 60, "the dashboard to listen")
        self.publisher = client(self.broker.port)
        self.rounds = 0
        self.alive()  # the subscription is live before the first example

    def publish(self, topic: str, body: bytes, retain: bool = False) -> None:
        self.publisher.publish(topic, body, qos=1, retain=retain).wait_for_publish(30)

    def hostile(self, batch: list[tuple[str, str, str, bytes, bool]]) -> None:
        """Publish a batch as any client could, from a client of its own (the broker may drop it for a message)."""
        rogue = client(self.broker.port)
        try:
            for prefix, name, kind, body, retain in batch:
                try:
                    rogue.publish(f"{prefix}/{name}/{kind}", body, qos=1, retain=retain).wait_for_publish(5)
                except (ValueError, RuntimeError):  # a topic paho will not send, or a client the broker dropped
                    rogue.loop_stop()
                    rogue = client(self.broker.port)
        finally:
            rogue.disconnect()
            rogue.loop_stop()

    def alive(self) -> None:
        """Both tools still run and still take a valid message sent now."""
        self.rounds += 1
        label, tag = f"alive-{self.rounds}", event("fuzz-ok", self.rounds, run="fz")
        assert self.subscriber.running() and self.dashboard.poll() is None, self.dashboard_log.read_text()

        def seen() -> bool:
            self.publish("fer/fuzz-ok/events", json.dumps(tag).encode())
            self.publish("fer/fuzz-ok/state", json.dumps({**state("fuzz-ok"), "overall": {
                "label": label, "confidence": 0.5, "faces": 1}}).encode())
            recorded = self.record.exists() and tag["event_id"] in self.record.read_text()
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/fleet", timeout=10) as answer:
                shown = any(d["device"] == "fuzz-ok" and d["emotion"] == label
                            for d in json.loads(answer.read())["devices"])
            return recorded and shown

        wait_for(seen, 60, "both tools to take a valid message after the hostile ones")

    def close(self) -> tuple[int, int]:
        self.publisher.disconnect()
        self.publisher.loop_stop()
        sub = self.subscriber.stop()
        self.dashboard.terminate()
        dash = self.dashboard.wait(30)
        self.broker.stop()
        return sub, dash


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    running = Tools(tmp_path_factory.mktemp("fuzz-tools"))
    yield running
    codes = running.close()
    logs = running.subscriber.stderr() + running.dashboard_log.read_text()
    assert codes == (0, 0) and "Traceback" not in logs, logs


@settings(max_examples=25)
@given(st.lists(messages, min_size=1, max_size=6))
def test_no_message_stops_subscribe_or_the_dashboard(tools, batch):
    tools.hostile(batch)
    tools.alive()


def test_a_flood_is_counted_and_logged_rate_limited(tools):
    tools.hostile([("fer", f"flood-{n % 7}", "state", b"[%d]" % n, False) for n in range(500)])
    tools.alive()
    allowed = (time.monotonic() - tools.started) / LOG_EVERY_S + 2  # one line at once, then one per LOG_EVERY_S
    for log in (tools.subscriber.stderr(), tools.dashboard_log.read_text()):
        assert 1 <= log.count("dropped a message") <= allowed, log
