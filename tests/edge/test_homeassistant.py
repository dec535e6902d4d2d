"""Home Assistant discovery (one device, several entities) and the retained state published on change only."""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pytest

from edge import CLASS_NAMES
from edge.device import pipeline
from edge.device.config import PublishConfig, TrackingConfig
from edge.device.pipeline import Analysis, Publisher
from edge.device.sources import Frame
from edge.device.tracking import Tracker
from edge.model.detect import Face
from edge.protocol.client import MqttConfig
from edge.protocol.homeassistant import discovery
from edge.protocol.payloads import check

STATE = {"ts": 1764000000.1, "device": "kitchen.pi", "model": {"id": "fer@1", "version": "2026.11.24"},
         "overall": {"label": "happy", "confidence": 0.734, "faces": 2},
         "tracks": [{"id": 3, "label": "happy", "confidence": 0.81, "box": [212, 96, 118, 118]}]}


def test_discovery_is_one_device_with_its_entities():
    topic, payload = discovery(MqttConfig(device_id="kitchen.pi", prefix="fer/home", discovery_prefix="ha"))
    config = json.loads(payload)
    assert topic == "ha/device/kitchen_pi/config"
    assert config["origin"]["name"] == "fer-edge" and config["device"]["identifiers"] == ["fer_edge_kitchen_pi"]
    assert (config["availability_topic"], config["payload_available"], config["payload_not_available"]) == \
        ("fer/home/kitchen.pi/availability", "online", "offline")
    assert config["state_topic"] == "fer/home/kitchen.pi/state"
    entities = {k.removeprefix("kitchen_pi_"): v for k, v in config["components"].items()}
    assert set(entities) == {"emotion", "confidence", "faces", "fps", "cpu_temperature", "model_version"}
    assert all(e["platform"] == "sensor" for e in entities.values())
    assert len({e["unique_id"] for e in entities.values()}) == len(entities)
    assert entities["emotion"]["device_class"] == "enum" and entities["emotion"]["options"] == [*CLASS_NAMES, "none"]
    assert entities["fps"]["state_topic"] == entities["cpu_temperature"]["state_topic"] == "fer/home/kitchen.pi/stats"


def test_discovery_templates_read_the_published_payloads():
    jinja2 = pytest.importorskip("jinja2")  # Home Assistant renders value templates with Jinja2
    check("state", STATE)
    stats = {"fps": 19.9, "cpu_temp_c": None}
    _, payload = discovery(MqttConfig(device_id="pi-01"))
    components = json.loads(payload)["components"]
    env = jinja2.Environment()
    rendered = {k.removeprefix("pi-01_"): env.from_string(c["value_template"]).render(
        value_json=stats if c.get("state_topic", "").endswith("/stats") else STATE) for k, c in components.items()}
    assert rendered == {"emotion": "happy", "confidence": "73.4", "faces": "2", "fps": "19.9",
                        "cpu_temperature": "None", "model_version": "2026.11.24"}  # "None": unknown to Home Assistant
    attributes = env.from_string(components["pi-01_emotion"]["json_attributes_template"]).render(value_json=STATE)
    assert json.loads(attributes) == STATE["overall"]


def test_state_is_published_on_change_not_with_every_event(monkeypatch):
    clock = iter(range(10**6))  # one second per frame: every frame is due an event at 1 Hz
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock)),
                                                                 perf_counter=time.perf_counter))
    sink = types.SimpleNamespace(events=[], states=[])
    sink.event, sink.state = sink.events.append, sink.states.append
    publisher = Publisher(Tracker(TrackingConfig()), sink, PublishConfig(rate_hz=1), "pi-test")
    bundle = types.SimpleNamespace(classes=list(CLASS_NAMES), model_id="m@1", version="1")

    def frame(index: int, label: str, p: float, bundle=bundle) -> None:
        probs = np.full(len(CLASS_NAMES), (1 - p) / (len(CLASS_NAMES) - 1), np.float32)
        probs[CLASS_NAMES.index(label)] = p
        publisher(Analysis(Frame(index, 1000.0 + index, np.zeros((480, 640, 3), np.uint8)),
                           [Face((10, 10, 100, 100), 0.9)], probs[None], bundle))

    for i in range(20):
        frame(i, "happy", 0.9)  # the smoothed score settles: a few states, then none
    settled = len(sink.states)
    for i in range(20, 40):
        frame(i, "happy", 0.9)
    assert len(sink.events) == 40 and len(sink.states) == settled
    for i in range(40, 60):
        frame(i, "sad", 0.9)
    assert sink.states[-1]["overall"]["label"] == "sad" and len(sink.states) < settled + 20
    frame(60, "sad", 0.9, types.SimpleNamespace(classes=list(CLASS_NAMES), model_id="m@2", version="2"))
    assert sink.states[-1]["model"]["id"] == "m@2"  # a reload is a change
