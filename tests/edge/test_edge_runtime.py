"""``edge run`` as a real process against a real mosquitto, on a video of the astronaut."""

from __future__ import annotations

import json
import signal

from edge.release import VARIANTS, shipped_variants
from fixtures.mqtt import Device, Subscriber, device_config, send, wait_for

from edge.protocol.payloads import validator


def valid(kind: str, payloads: list) -> list:
    for payload in payloads:
        validator(kind).validate(payload)
    return payloads


def test_events_state_stats_are_valid_and_discovery_is_published(tmp_path, tiny_bundle, video, broker, subscriber):
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url, mqtt={"homeassistant": True}))
    try:
        wait_for(lambda: len(subscriber.payloads("events")) >= 5 and subscriber.payloads("stats"), 60, "events and stats")
    finally:
        assert device.stop() == 0
    events = valid("events", subscriber.payloads("events"))
    assert {e["device"] for e in events} == {"pi-test"} and len({e["event_id"] for e in events}) == len(events)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(e["box"][2] > 50 and abs(sum(e["scores"].values()) - 1) < 0.02 for e in events)
    assert all(0.05 < e["brightness"] < 0.95 for e in events)  # the face's grey level before equalization
    assert valid("state", subscriber.payloads("state"))[-1]["overall"]["faces"] >= 0
    stats = valid("stats", subscriber.payloads("stats"))
    assert stats[-1]["frames"] > 0 and stats[-1]["model_version"] == events[0]["model"]["version"]
    assert stats[-1]["model_source"] == "bundle"  # model.bundle set, no update installed
    assert stats[-1]["model_variant"] is None and stats[-1]["variant_reason"].startswith("model.bundle")
    assert "(model.bundle: no verified update installed;" in device.text()
    assert valid("availability", subscriber.payloads("availability"))[-2:] == ["online", "offline"]
    [discovery] = [json.loads(p) for t, p, _ in subscriber.messages if t.startswith("homeassistant/")]
    assert discovery["state_topic"] == "fer/pi-test/state" and discovery["availability_topic"] == "fer/pi-test/availability"
    assert "Traceback" not in device.text()


def test_a_device_on_auto_runs_the_variant_it_measured_and_says_why(tmp_path, video, broker, subscriber):
    model = {"bundle": "", "variant": "auto", "target_fps": 5, "expected_faces": 2}
    device = Device(device_config(tmp_path, tmp_path, video, broker.url, model=model))
    try:
        wait_for(lambda: subscriber.payloads("events") and subscriber.payloads("stats"), 60, "events and stats")
    finally:
        assert device.stop() == 0
    stats = valid("stats", subscriber.payloads("stats"))[-1]
    assert stats["model_source"] == "release" and stats["model_variant"] in shipped_variants()
    assert "measured on this device" in stats["variant_reason"] and "with 2 faces" in stats["variant_reason"]
    assert f"release bundle: variant {stats['model_variant']}, model.variant auto" in device.text()
    assert stats["model_id"].startswith(VARIANTS[stats["model_variant"]] + "@")


def test_killed_device_is_announced_offline_by_its_last_will(tmp_path, tiny_bundle, video, broker, subscriber):
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url))
    wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
    assert subscriber.payloads("availability")[-1] == "online"
    device.stop(signal.SIGKILL)
    wait_for(lambda: subscriber.payloads("availability")[-1] == "offline", 30, "the Last Will")
    retained = Subscriber(broker.port, "fer/pi-test/availability")  # a newcomer sees the retained status
    wait_for(lambda: retained.payloads("availability"), 10, "the retained availability")
    assert retained.payloads("availability") == ["offline"]
    retained.close()


def test_broker_outage_loses_nothing_and_keeps_order(tmp_path, tiny_bundle, video, broker, subscriber):
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url))
    try:
        wait_for(lambda: len(subscriber.payloads("events")) >= 5, 60, "events before the outage")
        broker.stop()
        wait_for(lambda: "events are spooled" in device.text(), 30, "the device to notice the outage")
        wait_for(lambda: device.text().split("events are spooled")[-1].count("spooled,") >= 3, 30,
                 "events to pile up during the outage")
        broker.start()  # same port, same persistent store: the subscriber's session is still there
        wait_for(lambda: "connected to MQTT broker" in device.text().split("events are spooled")[-1], 60, "the reconnect")
        seen = len(subscriber.payloads("events"))
        wait_for(lambda: len(subscriber.payloads("events")) > seen + 5, 60, "events after the outage")
    finally:
        assert device.stop() == 0
    log = device.text()
    assert "events stay spooled" not in log  # SIGTERM delivered everything before going offline
    produced = int(log.rsplit("last event seq ", 1)[1].split()[0])
    events = valid("events", subscriber.payloads("events"))
    first_seen = list(dict.fromkeys(e["seq"] for e in events))  # duplicates are allowed (at least once)
    assert first_seen == list(range(produced + 1))
    assert len({e["event_id"] for e in events}) == produced + 1
    assert subscriber.payloads("availability")[-1] == "offline"


def test_commands_are_validated_and_the_device_keeps_running(tmp_path, tiny_bundle, video, broker, subscriber):
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url))
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
        for bad in (b"reload", b"{}", b'{"cmd": "format_disk"}', b'{"cmd": "set_rate", "rate_hz": 0}',
                    b'{"cmd": "set_rate"}', b'{"cmd": "stats", "extra": 1}', b'{"cmd": "ota_commit", "transfer": "x"}'):
            send(broker.port, bad)
        send(broker.port, json.dumps({"cmd": "set_rate", "rate_hz": 2.5, "id": "r1"}))
        send(broker.port, json.dumps({"cmd": "reload", "id": "r2"}))
        replies = wait_for(lambda: len(subscriber.payloads("reply")) >= 9 and subscriber.payloads("reply"), 30, "replies")
        valid("reply", replies)
        refused = [r for r in replies if not r["ok"]]
        assert len(refused) == 7 and all(r["error"] for r in refused)
        assert "not JSON" in refused[0]["error"] and "model updates are off" in refused[-1]["error"]
        assert {"cmd": "set_rate", "ok": True, "id": "r1", "rate_hz": 2.5} in replies
        assert any(r.get("id") == "r2" and r["ok"] and r["model"]["version"] for r in replies)
        stats_before = len(subscriber.payloads("stats"))
        send(broker.port, json.dumps({"cmd": "stats"}))
        wait_for(lambda: len(subscriber.payloads("stats")) > stats_before, 30, "stats on demand")
        events_before = len(subscriber.payloads("events"))
        wait_for(lambda: len(subscriber.payloads("events")) > events_before, 30, "events after the bad commands")
        assert subscriber.payloads("stats")[-1]["publish_rate_hz"] == 2.5
    finally:
        assert device.stop() == 0
    assert "refused command" in device.text() and "Traceback" not in device.text()


def test_source_that_disappears_is_reported_and_reopened(tmp_path, tiny_bundle, video, broker, subscriber):
    camera = tmp_path / "camera.avi"
    camera.write_bytes(video.read_bytes())
    device = Device(device_config(tmp_path, tiny_bundle, camera, broker.url))
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
        camera.rename(tmp_path / "away.avi")
        wait_for(lambda: any(s["source"] == "lost" for s in subscriber.payloads("stats")), 30, "stats saying lost")
        (tmp_path / "away.avi").rename(camera)
        wait_for(lambda: subscriber.payloads("stats")[-1]["source_reopens"] >= 1, 30, "stats counting the reopen")
        events = len(subscriber.payloads("events"))
        wait_for(lambda: len(subscriber.payloads("events")) > events, 30, "events after the reopen")
    finally:
        assert device.stop() == 0
    assert "is back after" in device.text()
