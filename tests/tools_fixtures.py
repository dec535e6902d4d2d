"""Fixtures for the operator-tool tests: signing keys, signed bundles, a bundle that fails the self-check, a device's
update handling (the broker is edge_fixtures' ``broker``)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest

from edge.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, sha256_bytes, tensor_description
from edge.litert import load_interpreter
from edge.ota import BundleStore, OtaReceiver, Updater, pack
from edge.trust import load_trusted_keys
from tools.signing import keygen, sign_bundle

@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """(private, public) key files of the operator the devices trust."""
    return keygen(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def stranger_key(tmp_path_factory) -> Path:
    """A private key no device trusts."""
    return keygen(tmp_path_factory.mktemp("stranger"))[0]


def signed_copy(source: Path, dest: Path, key: Path) -> Path:
    shutil.copytree(source, dest)
    (dest / SIGNATURE_FILE).unlink(missing_ok=True)
    sign_bundle(dest, key)
    return dest


def set_version(folder: Path, version: str, key: Path | None) -> Path:
    """Change the manifest's version (so the bundle is a different one) and re-sign it when a key is given."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    if key is not None:
        sign_bundle(folder, key)
    return folder


@pytest.fixture
def bundles(tiny_bundle, keys, tmp_path) -> dict[str, Path]:
    """Two signed versions of the tiny bundle: ``v1`` (installed first) and ``v2`` (the update)."""
    return {v: set_version(signed_copy(tiny_bundle, tmp_path / f"tiny-{v}", keys[0]), v, keys[0]) for v in ("v1", "v2")}


@pytest.fixture
def store(tmp_path, keys, bundles) -> BundleStore:
    """A device's models folder that trusts ``keys`` and has ``v1`` installed."""
    store = BundleStore(tmp_path / "device-models", load_trusted_keys([keys[1]]))
    shutil.copytree(bundles["v1"], store.root / "incoming" / "tiny")
    [result] = store.install_incoming()
    assert result.installed, result
    return store


@pytest.fixture(scope="session")
def broken_bundle(tiny_bundle, keys, tmp_path_factory) -> Path:
    """A signed, loadable bundle whose model returns constant scores of 3 (not probabilities): fails the self-check."""
    import tensorflow as tf

    manifest = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    inputs = tf.keras.Input((48, 48, 1), batch_size=1)
    dense = tf.keras.layers.Dense(len(manifest["classes"]), kernel_initializer="zeros", bias_initializer=tf.keras.initializers.Constant(3.0))
    model_bytes = tf.lite.TFLiteConverter.from_keras_model(
        tf.keras.Model(inputs, dense(tf.keras.layers.Flatten()(inputs)))).convert()
    interpreter = load_interpreter(model_bytes)
    manifest.update(name="broken", input=tensor_description(interpreter.get_input_details()[0]),
                    output=tensor_description(interpreter.get_output_details()[0]),
                    tflite={"sha256": sha256_bytes(model_bytes), "bytes": len(model_bytes)})
    folder = tmp_path_factory.mktemp("broken") / "broken"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(model_bytes)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    sign_bundle(folder, keys[0])
    return folder


def transfer_messages(payload: bytes, name: str, transfer: str = "t1", chunk_size: int = 4096) -> list[dict]:
    """The flash protocol's messages for ``payload``: begin, every chunk in order, commit."""
    chunks = [payload[i:i + chunk_size] for i in range(0, len(payload), chunk_size)]
    return [{"cmd": "ota_begin", "transfer": transfer, "name": name, "size": len(payload),
             "sha256": hashlib.sha256(payload).hexdigest(), "chunk_size": chunk_size, "chunks": len(chunks)},
            *({"cmd": "ota_chunk", "transfer": transfer, "index": i, "data": base64.b64encode(c).decode()}
              for i, c in enumerate(chunks)),
            {"cmd": "ota_commit", "transfer": transfer}]


def send(receiver: OtaReceiver, payload: bytes, name: str = "tiny"):
    """Flash ``payload`` through ``receiver`` in order; return the first refusal, else the commit's answer."""
    results = [receiver.handle(m) for m in transfer_messages(payload, name)]
    return next((r for r in results if r is not None and r.status == "refused"), results[-1])


def send_folder(receiver: OtaReceiver, folder: Path, name: str = "tiny"):
    return send(receiver, pack(folder), name)


@contextlib.contextmanager
def ota_device(url: str, device: str, updater: Updater, prefix: str = "fer"):
    """A device's command handling reduced to model updates, wired as edge.ota.Updater says."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        answer = updater.command(json.loads(msg.payload))
        if answer is not None:
            client.publish(f"{prefix}/{device}/ota", json.dumps(answer), qos=1)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: (c.subscribe(f"{prefix}/{device}/cmd", qos=1),
                                      c.publish(f"{prefix}/{device}/availability", "online", qos=1, retain=True))
    port = int(url.rsplit(":", 1)[1])
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert subscribed.wait(10), f"{device} could not subscribe"
    try:
        yield updater
    finally:
        client.disconnect()
        client.loop_stop()
