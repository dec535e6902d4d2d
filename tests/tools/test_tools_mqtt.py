"""flash and subscribe against a real mosquitto: devices that install or refuse, recordings, plots, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from fixtures.bundles import ota_device, set_version
from fixtures.mqtt import Mosquitto

from edge.device.updates import Updater
from edge.model.bundle import load_bundle
from edge.protocol.payloads import validator
from edge.protocol.topics import Target
from tools.cli import main
from tools.flash import flash_mqtt
from tools.recording import Recorder, event_row, read_rows
from tools.subscribe import subscribe


@pytest.fixture
def switched() -> dict[str, list]:
    """The bundles each device's runtime was told to switch to."""
    return {"pi-01": [], "pi-02": []}


@pytest.fixture
def fleet(store, keys, switched, tmp_path) -> dict[str, Updater]:
    """Two devices' updaters, both trusting ``keys`` and running ``v1``."""
    second = tmp_path / "pi-02-models"
    shutil.copytree(store.current(), second / "incoming" / "tiny")
    fleet = {d: Updater(root, [keys[1]], switched[d].append) for d, root in (("pi-01", store.root), ("pi-02", second))}
    assert [a["status"] for a in fleet["pi-02"].reload()] == ["installed"]
    return fleet


def versions(fleet) -> dict[str, str]:
    return {d: load_bundle(u.bundle_path("nowhere")).version for d, u in fleet.items()}


def test_flash_to_two_devices(broker, fleet, switched, bundles, capsys):
    with ota_device(broker.url, "pi-01", fleet["pi-01"]), ota_device(broker.url, "pi-02", fleet["pi-02"]):
        code = main(["flash", str(bundles["v2"]), "--device", "pi-*", "--broker", broker.url, "--timeout", "30"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert versions(fleet) == {"pi-01": "v2", "pi-02": "v2"}
    assert out.count("installed") == 2 and "version v2" in out
    assert [b.version for b in switched["pi-01"]] == ["v2"]


def test_tampered_and_self_check_failures_are_reported_and_old_model_stays(broker, fleet, switched, bundles,
                                                                          broken_bundle):
    set_version(bundles["v2"], "evil", key=None)
    with ota_device(broker.url, "pi-01", fleet["pi-01"]), ota_device(broker.url, "pi-02", fleet["pi-02"]):
        targets = [Target.parse("pi-01"), Target.parse("pi-02")]
        tampered = flash_mqtt(bundles["v2"], targets, broker.url, timeout=30, chunk_bytes=4096)
        broken = flash_mqtt(broken_bundle, targets[:1], broker.url, timeout=30)
    assert [(r.status, "signature does not match" in r.detail) for r in tampered] == [("refused", True)] * 2
    assert broken[0].status == "refused" and "self-check failed" in broken[0].detail
    assert versions(fleet) == {"pi-01": "v1", "pi-02": "v1"}
    assert switched["pi-01"] == []


def test_silent_and_offline_devices_fail_the_flash(broker, fleet, bundles, capsys):
    announce = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    announce.connect("127.0.0.1", broker.port)
    announce.loop_start()
    announce.publish("fer/pi-07/availability", "offline", qos=1, retain=True).wait_for_publish(10)
    announce.disconnect()
    announce.loop_stop()
    with ota_device(broker.url, "pi-01", fleet["pi-01"]):
        code = main(["flash", str(bundles["v2"]), "--device", "pi-0[17]", "--device", "pi-09", "--broker", broker.url,
                     "--timeout", "3"])
    out = capsys.readouterr().out
    assert code == 1 and versions(fleet)["pi-01"] == "v2"
    assert {line.split()[0]: line.split()[1] for line in out.splitlines()} == \
        {"pi-01": "installed", "pi-07": "offline", "pi-09": "timeout"}


@pytest.mark.parametrize("device", ["pi+01", "pi#", "a/b", "../x", ""])
def test_topic_injection_refused(device, bundles, capsys):
    assert main(["flash", str(bundles["v2"]), "--device", device, "--broker", "mqtt://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tools: error: ") and err.count("\n") == 1


def test_bundle_name_with_path_traversal_refused(bundles, keys, capsys):
    manifest = bundles["v2"] / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "name": "../../etc"}))
    main(["sign", str(bundles["v2"]), "--key", str(keys[0])])
    assert main(["flash", str(bundles["v2"]), "--device", "pi-01", "--broker", "mqtt://127.0.0.1:1"]) == 2
    assert "not allowed" in capsys.readouterr().err


def test_broker_authentication_failure_is_one_line(tmp_path):
    strict = Mosquitto(tmp_path, users={"ops": "right"})
    strict.start()
    try:
        done = subprocess.run([sys.executable, "-m", "tools.cli", "subscribe", "--duration", "30",
                               "--broker", f"mqtt://ops@127.0.0.1:{strict.port}"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "MQTT_PASSWORD": "wrong"})
    finally:
        strict.stop()
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "refused the connection" in done.stderr and "password" in done.stderr


def event(device: str, i: int) -> dict:
    """An ``events`` payload as the edge runtime publishes it (checked against edge/schemas/events.json)."""
    label = ("happy", "neutral", "sad")[i % 3]
    scores = dict.fromkeys(("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"), 0.05)
    scores[label] = 0.7
    payload = {"event_id": f"{device}-{i}", "seq": i, "ts": 1_700_000_040 + 20 * i, "device": device, "frame": i,
               "track_id": 1, "box": [10, 20, 64, 64], "label": label, "confidence": 0.7, "scores": scores,
               "model": {"id": "tiny", "version": "v1"}}
    validator("events").validate(payload)
    return payload


def state(device: str) -> dict:
    """A retained ``state`` payload (checked against edge/schemas/state.json)."""
    payload = {"ts": 1_700_000_040, "device": device, "overall": {"label": "happy", "confidence": 0.8, "faces": 1},
               "tracks": [{"id": 1, "label": "happy", "confidence": 0.8, "box": [10, 20, 64, 64]}],
               "model": {"id": "tiny", "version": "v1"}}
    validator("state").validate(payload)
    return payload


def stats(device: str, fps: float = 24.5) -> dict:
    """A ``stats`` payload as the runtime publishes it (checked against edge/schemas/stats.json)."""
    payload = {"ts": 1_700_000_040, "device": device, "uptime_s": 60.0, "fps": fps, "frames": 1400, "dropped_frames": 0,
               "source": "ok", "source_reopens": 0, "queue_depth": 0, "spool": {"pending": 0, "dropped": 0},
               "stage_ms": dict.fromkeys(("detect", "preprocess", "infer", "track", "publish", "total"), 1.0),
               "rss_mb": 98.0, "cpu_temp_c": None, "publish_rate_hz": 1.0, "model_id": "tiny", "model_version": "v1"}
    validator("stats").validate(payload)
    return payload


def publish_until(url: str, stop: threading.Event, messages: list[tuple[str, dict | str, bool]]) -> None:
    """Publish the same messages over and over (as a device's spool would resend them) until ``stop``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    client.loop_start()
    while not stop.is_set():
        for topic, payload, retain in messages:
            client.publish(topic, payload if isinstance(payload, str) else json.dumps(payload), qos=1,
                           retain=retain).wait_for_publish(5)
        stop.wait(0.2)
    client.disconnect()
    client.loop_stop()


def test_subscribe_records_once_per_event_and_plots(broker, tmp_path):
    messages = [("fer/pi-01/availability", "online", True), ("fer/pi-02/availability", "offline", True),
                ("fer/pi-01/stats", stats("pi-01"), False),
                ("fer/pi-01/state", state("pi-01"), True),
                *((f"fer/{d}/events", event(d, i), False) for d in ("pi-01", "pi-02") for i in range(9))]
    stop = threading.Event()
    publisher = threading.Thread(target=publish_until, args=(broker.url, stop, messages))
    publisher.start()
    try:
        result = subscribe(broker.url, Target.parse("*"), record=tmp_path / "rec.csv", duration=3)
    finally:
        stop.set()
        publisher.join()
    rows = read_rows([tmp_path / "rec.csv"])
    assert sorted(r["event_id"] for r in rows) == sorted(f"{d}-{i}" for d in ("pi-01", "pi-02") for i in range(9))
    assert result.duplicates > 0
    view = result.devices["pi-01"]
    assert (view.online, view.faces, view.emotion, view.fps, view.model) == ("online", 1, "happy", 24.5, "v1")
    assert result.devices["pi-02"].online == "offline"
    with open(tmp_path / "rec.minutes.csv", newline="") as f:
        minutes = list(csv.DictReader(f))
    assert {d: sum(int(m["n"]) for m in minutes if m["device"] == d) for d in ("pi-01", "pi-02")} == {"pi-01": 9, "pi-02": 9}
    assert main(["plot", str(tmp_path / "rec.csv"), "--out", str(tmp_path / "plots")]) == 0
    assert all((tmp_path / "plots" / f).stat().st_size > 1000 for f in ("timeline.png", "distribution.png"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_recording_rotates_and_reads_back(suffix, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    recorder = Recorder(tmp_path / f"r{suffix}", rotate_mb=0.001, batch=5)
    for i in range(20):
        recorder.write(event_row("pi-01", event("pi-01", i)))
    recorder.close()
    assert len(recorder.files) > 1
    assert [r["event_id"] for r in read_rows(recorder.files)] == [f"pi-01-{i}" for i in range(20)]


def test_shared_subscription_receives_events_and_table_stays_complete(broker, tmp_path):
    messages = [("fer/kitchen/pi-03/availability", "online", True),
                *(("fer/kitchen/pi-03/events", event("pi-03", i), False) for i in range(3))]
    stop = threading.Event()
    publisher = threading.Thread(target=publish_until, args=(broker.url, stop, messages))
    publisher.start()
    try:
        result = subscribe(broker.url, Target.parse("kitchen/*"), record=tmp_path / "r.jsonl", share="fleet", duration=2)
    finally:
        stop.set()
        publisher.join()
    assert [r["device"] for r in read_rows([tmp_path / "r.jsonl"])] == ["kitchen/pi-03"] * 3
    assert result.devices["kitchen/pi-03"].online == "online"  # retained availability is not shared
