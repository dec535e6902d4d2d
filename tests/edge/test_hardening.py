"""Hostile inputs against real devices: each test is named after the behaviour it protects.

Every test runs ``edge run`` as a real process against a real mosquitto. The invariants: the bad
input is refused (a ``reply`` or ``ota`` answer, a WARNING in the log), no traceback, the device
keeps answering commands, nothing already delivered is lost, and the old model keeps running.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fixtures.bundles import transfer_messages
from fixtures.mqtt import ROOT, Device, Subscriber, device_config, send, wait_for

from edge.model.trust import key_id, signed_message
from edge.protocol.flash import pack
from tools.signing import load_private_key


def stats_answered(subscriber: Subscriber, port: int, tag: str) -> bool:
    """The device is alive where it matters: it takes a command and answers it."""
    send(port, json.dumps({"cmd": "stats", "id": tag}))
    return wait_for(lambda: any(r.get("id") == tag and r["ok"] for r in subscriber.payloads("reply")), 20,
                    f"the reply to stats {tag}")


def assert_no_event_lost(subscriber: Subscriber) -> None:
    seqs = sorted({e["seq"] for e in subscriber.payloads("events")})
    assert seqs == list(range(len(seqs))), "a gap in the event sequence"


@pytest.fixture
def device_with_updates(tmp_path, tiny_bundle, video, broker, keys, bundles):
    """A device that trusts the test key, running the signed v1 bundle, with a test subscriber."""
    subscriber = Subscriber(broker.port)
    device = Device(device_config(tmp_path, bundles["v1"], video, broker.url, model={"trusted_keys": [str(keys[1])]}))
    wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
    yield device, subscriber
    subscriber.close()
    if device.proc.poll() is None:
        device.stop()


def test_deeply_nested_command_is_refused_and_the_device_keeps_answering(device_with_updates, broker):
    device, subscriber = device_with_updates
    send(broker.port, "[" * 100_000 + "]" * 100_000)
    send(broker.port, json.dumps({"cmd": "set_rate", "rate_hz": float("nan")}, allow_nan=True))
    send(broker.port, b"\xff\xfe not json")
    wait_for(lambda: len([r for r in subscriber.payloads("reply") if not r["ok"]]) >= 3, 20, "three refusals")
    before = len(subscriber.payloads("events"))
    assert stats_answered(subscriber, broker.port, "after-attack")
    wait_for(lambda: len(subscriber.payloads("events")) > before + 3, 30, "events still flowing")
    assert device.stop() == 0
    assert_no_event_lost(subscriber)
    log = device.text()
    assert "nested deeper" in log and "not a JSON number" in log and "Traceback" not in log
    for stats in subscriber.payloads("stats"):  # strict JSON: no bare NaN ever leaves the device
        json.dumps(stats, allow_nan=False)


def sign_unchecked(bundle: Path, key: Path) -> None:
    """What an insider with the key could do: sign a bundle that `tools sign` would refuse to sign."""
    private = load_private_key(key)
    message = signed_message((bundle / "manifest.json").read_bytes(), (bundle / "model.tflite").read_bytes())
    (bundle / "signature.json").write_text(json.dumps({"algorithm": "ed25519", "key_id": key_id(private.public_key()),
                                                       "signature": base64.b64encode(private.sign(message)).decode()}))


def forged(folder: Path, dest: Path, signature: dict | None = None, manifest_patch: dict | None = None) -> Path:
    shutil.copytree(folder, dest)
    if manifest_patch:
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest.update(manifest_patch)
        (dest / "manifest.json").write_text(json.dumps(manifest))
    if signature is not None:
        (dest / "signature.json").write_text(json.dumps(signature))
    return dest


@pytest.mark.parametrize("signature, manifest_patch, reason", [
    ({"algorithm": "ed25519", "key_id": [1], "signature": "AA=="}, None, "signature.json is unreadable"),
    ({"algorithm": "ed25519", "key_id": {"a": 1}, "signature": "AA=="}, None, "signature.json is unreadable"),
    (None, {"output": {"shape": [], "dtype": "int8", "scale": 1.0, "zero_point": 0}}, "output"),
    (None, {"preprocessing": {"spec": {"input_size": "big"}}}, "input_size"),
])
def test_forged_bundle_over_mqtt_is_refused_and_the_old_model_keeps_running(device_with_updates, broker, bundles, keys,
                                                                             tmp_path, signature, manifest_patch, reason):
    device, subscriber = device_with_updates
    bad = forged(bundles["v2"], tmp_path / "forged", signature, manifest_patch)
    if manifest_patch and signature is None:
        sign_unchecked(bad, keys[0])  # signed by the trusted key: the manifest itself must be refused
    for message in transfer_messages(pack(bad), "forged", "forged1"):
        send(broker.port, json.dumps(message))
    answer = wait_for(lambda: [a for a in subscriber.payloads("ota") if a["status"] == "refused"], 30, "a refusal")[-1]
    assert reason in answer["reason"], answer
    assert stats_answered(subscriber, broker.port, "after-forgery")
    count = len(subscriber.payloads("events"))
    wait_for(lambda: len(subscriber.payloads("events")) > count, 30, "events from the old model")
    assert subscriber.payloads("events")[-1]["model"]["version"] == "v1"
    assert device.stop() == 0
    assert "Traceback" not in device.text()


def test_forged_bundle_in_incoming_is_refused_at_start_and_removed(tmp_path, video, broker, bundles, keys):
    models = tmp_path / "models"
    (models / "incoming").mkdir(parents=True)
    forged(bundles["v2"], models / "incoming" / "forged", {"algorithm": "ed25519", "key_id": [1], "signature": "AA=="})
    subscriber = Subscriber(broker.port)
    device = Device(device_config(tmp_path, bundles["v1"], video, broker.url, model={"trusted_keys": [str(keys[1])]}))
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "events despite the forged bundle")
        assert not (models / "incoming" / "forged").exists()
    finally:
        assert device.stop() == 0
        subscriber.close()
    assert "model update incoming/forged refused" in device.text() and "Traceback" not in device.text()


def test_bundle_with_a_bad_preprocessing_spec_is_refused_at_start(tmp_path, tiny_bundle, video, broker):
    bad = forged(tiny_bundle, tmp_path / "bad", manifest_patch={"preprocessing": {"spec": {"input_size": "big"}}})
    done = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config",
                           str(device_config(tmp_path, bad, video, broker.url))],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "input_size" in done.stderr and "Traceback" not in done.stderr


def silent_server() -> tuple[socket.socket, int]:
    """A TCP server that accepts connections and never says a word (a hung RTSP camera)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.extend(server.accept() for _ in range(8)), daemon=True).start()
    return server, server.getsockname()[1]


def test_a_stream_that_never_answers_blocks_neither_start_nor_stop(tmp_path, tiny_bundle, broker):
    server, port = silent_server()
    subscriber = Subscriber(broker.port)
    device = Device(device_config(tmp_path, tiny_bundle, f"rtsp://127.0.0.1:{port}/cam", broker.url,
                                  source={"loop": False}))
    try:
        wait_for(lambda: "online" in subscriber.payloads("availability"), 10, "online while the stream hangs")
        assert stats_answered(subscriber, broker.port, "hung-stream")
        started = time.monotonic()
        assert device.stop() == 0
        assert time.monotonic() - started < 12, "SIGTERM must not wait for the hung stream"
    finally:
        server.close()
        subscriber.close()


def test_interrupted_flash_leaves_no_partial_files_after_a_restart(tmp_path, tiny_bundle, video, broker, keys):
    partial = tmp_path / "models" / ".partial"
    partial.mkdir(parents=True)
    (partial / "abandoned.part").write_bytes(b"x" * 4096)
    (partial / "stage-123").mkdir()
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url, model={"trusted_keys": [str(keys[1])]}))
    try:
        wait_for(lambda: "running:" in device.text(), 60, "the device running")
        assert not any(partial.iterdir())
    finally:
        assert device.stop() == 0


def test_a_folder_of_only_corrupt_images_ends_with_a_warning(tmp_path, tiny_bundle, broker):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    device = Device(device_config(tmp_path, tiny_bundle, folder, broker.url, source={"loop": False}))
    assert device.proc.wait(60) == 0
    log = device.text()
    assert "is not a readable image; skipped" in log and "without a single readable frame" in log


def test_one_undecodable_frame_does_not_end_a_video(tmp_path, tiny_bundle, broker):
    """An MJPEG video with one frame's bytes destroyed: the frames after it are still analysed."""
    path = tmp_path / "broken.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (160, 120))
    for i in range(40):
        writer.write(np.full((120, 160, 3), i * 5, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    frames = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    start, end = frames[20], frames[21]
    data[start:end] = b"\x00" * (end - start)
    path.write_bytes(bytes(data))
    device = Device(device_config(tmp_path, tiny_bundle, path, broker.url, source={"loop": False, "fps": 100}))
    assert device.proc.wait(60) == 0
    ended = [line for line in device.text().splitlines() if "ended after" in line]
    assert ended and int(ended[-1].split("ended after ")[1].split()[0]) >= 35, device.text()[-2000:]


def test_a_device_stopped_while_the_broker_was_down_does_not_stay_online(tmp_path, tiny_bundle, video, broker):
    """The retained ``online`` (MQTT 5) carries an expiry the device keeps refreshing; once the device is gone it
    lapses, even though the broker crashed and never sent the Last Will. The broker here is back within the TTL:
    mosquitto 2.0.11 forgets the expiry of a message whose expiry passed while it was down (eclipse-mosquitto
    #1464; docs/mqtt.md), so a longer outage there leaves it to the operator tools' last-seen staleness."""
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url, mqtt={"availability_ttl_s": 8}))
    wait_for(lambda: "connected to MQTT broker" in device.text(), 60, "the device connected")
    time.sleep(2)  # the broker saves its state every second (autosave_interval 1)
    broker.proc.send_signal(signal.SIGKILL)  # a crash: no clean shutdown, no Last Will
    broker.proc.wait(10)
    assert device.stop() == 0  # stopped during the outage: it cannot say offline
    broker.start()
    first = Subscriber(broker.port, "fer/pi-test/availability")
    wait_for(lambda: first.payloads("availability"), 10, "the restored retained status")
    first.close()
    time.sleep(9)  # longer than the TTL
    newcomer = Subscriber(broker.port, "fer/pi-test/availability")
    time.sleep(1)
    assert "online" not in newcomer.payloads("availability")
    newcomer.close()


def test_wrong_credentials_are_logged_once_as_a_refusal(tmp_path, tiny_bundle, video):
    from fixtures.mqtt import Mosquitto

    secured = Mosquitto(tmp_path, users={"ops": "right"})
    secured.start()
    try:
        device = Device(device_config(tmp_path, tiny_bundle, video, f"mqtt://ops@127.0.0.1:{secured.port}"))
        wait_for(lambda: "refused the connection" in device.text(), 30, "the refusal logged")
        time.sleep(2)
        assert device.stop() == 0
    finally:
        secured.stop()
    assert "lost the MQTT broker" not in device.text()
