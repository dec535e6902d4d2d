"""Drift watch: the PSI on known distributions, a device's baseline and window, the alert's messages (schema,
Home Assistant discovery, the dashboard), and end to end: two real ``edge run`` devices, one of whose video changes
mid-run, against a real mosquitto."""

from __future__ import annotations

import json
import math
import threading

import cv2
import numpy as np
import pytest
from fixtures.fleet import event
from fixtures.mqtt import Device, Subscriber, device_config, wait_for

from edge.protocol.payloads import validator
from tools.dashboard import FleetView
from tools.demo import SAMPLE_FACE, write_video
from tools.drift import EPSILON, DeviceDrift, DriftWatch, psi, watch
from tools.inbound import Gate


def test_psi_of_known_distributions():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)  # counts or shares: the same distribution
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected) == pytest.approx(0.2747, abs=1e-4)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))  # symmetric
    disjoint = 2 * (1 - EPSILON) * math.log((1 - EPSILON) / EPSILON)  # an empty bin counts as EPSILON, finite
    assert psi([1, 0], [0, 1]) == pytest.approx(disjoint, rel=1e-3)
    uniform = [0.1] * 10  # the usual reading: < 0.1 no change, 0.1-0.25 moderate, > 0.25 significant
    assert psi(uniform, [0.11] * 5 + [0.09] * 5) < 0.1 < psi(uniform, [0.14] * 5 + [0.06] * 5) < 0.25
    assert psi(uniform, [0.15] * 5 + [0.05] * 5) > 0.25
    assert psi([0, 0], [1, 2]) == 0.0  # nothing to compare
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def sized(seq: int, side: int, label: str | None = None) -> dict:
    payload = event("pi-01", seq)
    payload["box"] = [10, 10, side, side]
    if label:
        payload["label"] = label
    return payload


def test_a_device_drifts_when_its_faces_change_and_clears_when_they_come_back():
    device = DeviceDrift(baseline_events=50, window_events=20, window_s=5, threshold=0.25)
    for seq in range(50):
        device.add(sized(seq, 120 + seq % 10))
        device.tick()
    assert device.frozen and device.baseline_count == 50 and device.score() is None  # window not full yet
    for seq in range(50, 70):
        device.add(sized(seq, 120 + seq % 10))
    steady = device.score()
    assert not steady.drifting and steady.score < 0.25 and set(steady.features) == {"label", "confidence", "face_size"}
    for seq in range(70, 90):  # the faces are three times larger now
        device.add(sized(seq, 360))
    drifted = device.score()
    assert drifted.drifting and drifted.features["face_size"] > 5 and drifted.score == max(drifted.features.values())
    for seq in range(90, 110):
        device.add(sized(seq, 120 + seq % 10))
    assert not device.score().drifting
    for _ in range(5):  # no face for five seconds: no events, but the faces per second drift
        device.tick()
    assert device.score().drifting and device.score().features["faces"] > 5
    device.reset()
    assert not device.frozen and device.score() is None


def test_a_device_drifts_when_its_faces_darken_and_older_devices_without_brightness_still_score():
    device = DeviceDrift(baseline_events=50, window_events=20, window_s=5, threshold=0.25)
    lit = lambda seq, level: {**sized(seq, 120 + seq % 10), "brightness": level}  # noqa: E731
    for seq in range(50):
        device.add(lit(seq, 0.55 + 0.01 * (seq % 10)))
    for seq in range(50, 70):
        device.add(lit(seq, 0.55 + 0.01 * (seq % 10)))
    steady = device.score()
    assert not steady.drifting and steady.features["brightness"] < 0.1
    for seq in range(70, 90):  # the lamp goes off: same faces, same answers, a darker picture
        device.add(lit(seq, 0.15 + 0.01 * (seq % 5)))
    dark = device.score()
    assert dark.drifting and dark.features["brightness"] > 5 and dark.features["face_size"] < 0.25
    older = DeviceDrift(baseline_events=50, window_events=20, window_s=5, threshold=0.25)
    for seq in range(70):  # a device that does not send brightness: that feature is left out, the rest scored
        older.add(sized(seq, 120 + seq % 10))
    assert "brightness" not in older.score().features and not older.score().drifting


def test_alerts_are_schema_valid_retained_messages_with_a_home_assistant_binary_sensor():
    drift = DriftWatch("fer", baseline_events=20, window_events=10, window_s=3, threshold=0.5, every_s=60)
    for seq in range(30):
        drift.handle("fer/kitchen/pi.01/events", json.dumps(sized(seq, 100)).encode())
    out = dict(drift.tick(1000.0))
    config = json.loads(out["homeassistant/binary_sensor/pi_01_drift/config"])
    assert config["device_class"] == "problem" and config["state_topic"] == "fer/kitchen/pi.01/drift"
    assert config["device"]["identifiers"] == ["fer_edge_pi_01"]  # the device's own entry (its discovery's id)
    assert "value_json.drifting" in config["value_template"]
    alert = json.loads(out["fer/kitchen/pi.01/drift"])
    validator("drift").validate(alert)
    assert alert["device"] == "kitchen/pi.01" and alert["drifting"] is False and alert["baseline_events"] == 20
    assert drift.tick(1001.0) == []  # unchanged: refreshed only every every_s
    for seq in range(30, 40):
        drift.handle("fer/kitchen/pi.01/events", json.dumps(sized(seq, 400)).encode())
    [(topic, body)] = drift.tick(1002.0)
    assert topic == "fer/kitchen/pi.01/drift" and json.loads(body)["drifting"] is True

    gate = Gate("fer")  # what the dashboard and subscribe read passes the gate
    assert gate.admit(topic, body).payload["drifting"] is True
    assert gate.admit(topic, json.dumps({**json.loads(body), "score": "high"}).encode()) is None
    fleet = FleetView("fer", 10)
    fleet.handle(topic, body, 1002.0)
    [view] = fleet.snapshot()[1]
    assert view["device"] == "kitchen/pi.01" and view["drift"]["drifting"] is True


def switching_video(path, first: int = 300, second: int = 500):
    """The astronaut moving as in the demo video for ``first`` frames, then twice as large and still."""
    moving = cv2.VideoCapture(str(write_video(path.with_name("moving.avi"), frames=first)))
    face = cv2.resize(cv2.imread(str(SAMPLE_FACE)), (440, 440))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (640, 480))
    while True:
        ok, frame = moving.read()
        if not ok:
            break
        writer.write(frame)
    big = np.full((480, 640, 3), 100, np.uint8)
    big[20:460, 100:540] = face
    for _ in range(second):
        writer.write(big)
    writer.release()
    return path


def test_a_device_whose_video_changes_raises_its_alert_and_a_steady_one_stays_quiet(broker, tiny_bundle, video,
                                                                                    tmp_path):
    changing = switching_video(tmp_path / "switch.avi")
    stop = threading.Event()
    # small windows for a short test, so a higher threshold than the default (sample noise, see tools.drift)
    watcher = threading.Thread(target=watch, kwargs=dict(
        broker=broker.url, baseline_events=40, window_events=20, window_s=10, threshold=3.0, every_s=2,
        running=lambda: not stop.is_set()), daemon=True)
    watcher.start()
    sub = Subscriber(broker.port)
    devices = {}
    try:
        for name, source in (("pi-steady", video), ("pi-switch", changing)):
            (tmp_path / name).mkdir()
            config = device_config(tmp_path / name, tiny_bundle, source, broker.url, mqtt={"device_id": name})
            devices[name] = Device(config)

        def alerts(device: str) -> list[dict]:
            return [p for p in sub.payloads("drift") if p["device"] == device]

        try:
            wait_for(lambda: any(a["drifting"] for a in alerts("pi-switch")), 240, "pi-switch's drift alert")
            wait_for(lambda: alerts("pi-steady"), 60, "pi-steady's drift score")
        except AssertionError:
            logs = "\n".join(d.text()[-1500:] for d in devices.values())
            raise AssertionError(f"drift messages: {sub.payloads('drift')}\n{logs}") from None
        for payload in sub.payloads("drift"):
            validator("drift").validate(payload)

        assert not any(a["drifting"] for a in alerts("pi-steady")), alerts("pi-steady")
        [alert] = [a for a in alerts("pi-switch") if a["drifting"]][:1]
        assert alert["features"]["face_size"] > 3.0 and alert["score"] >= alert["features"]["face_size"]
        configs = [(t, json.loads(p)) for t, p, _ in sub.messages if t.startswith("homeassistant/binary_sensor/")]
        assert {t for t, _ in configs} >= {"homeassistant/binary_sensor/pi-switch_drift/config",
                                           "homeassistant/binary_sensor/pi-steady_drift/config"}
        late = Subscriber(broker.port, "fer/pi-switch/drift")  # retained: a newcomer is told at once
        try:
            retained = wait_for(lambda: [(p, r) for t, p, r in late.messages], 20, "the retained alert")
            assert retained[0][1] is True and json.loads(retained[0][0])["device"] == "pi-switch"
        finally:
            late.close()
    finally:
        stop.set()
        for device in devices.values():
            device.stop()
        sub.close()
        watcher.join(30)
