"""Issue 33, the device side: what a device refuses even when someone else can publish, replay or sign.

Retained commands are never obeyed; every size a message claims is checked before anything is sized by it; updates
only go forward unless a trusted key allows one rollback; the installed bundle is re-verified at every start; keys
are revoked and rotated by signed statements that survive restarts; outside values cannot forge log lines. The tests
named ``..._real_device`` or ``..._over_mqtt`` run ``edge run`` against a real mosquitto; the others drive the
device's own update code in-process on real signed bundles.
"""

from __future__ import annotations

import base64
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fixtures.bundles import set_version, signed_copy, transfer_messages
from fixtures.mqtt import ROOT, Device, Subscriber, device_config, send, wait_for

from edge.device.runtime import Runtime
from edge.device.updates import OtaReceiver, Updater
from edge.device.updates.order import is_older
from edge.errors import UserError, printable
from edge.model.trust import (
    SHIPPED_KEYS,
    STATE_FILE,
    TrustStore,
    downgrade_permission,
    fingerprint,
    load_public_key,
    revocation,
    rotation,
    sign_statement,
    verify_bundle_files,
)
from edge.protocol.flash import (
    MAX_BUNDLE_BYTES,
    MAX_CHUNKS,
    MAX_MISSING_RANGES,
    MIN_CHUNK_BYTES,
    messages,
    pack,
    parse_ranges,
)
from edge.protocol.payloads import check, parse, schema
from tools.cli import main as tools_main
from tools.signing import keygen, load_private_key

RELEASE = "2026.11.26.5"


@pytest.fixture
def key_dir(tmp_path, keys) -> Path:
    """The operator's public key in a folder of this test's own, where a test may put a revocation list."""
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(keys[1], folder / "operator.pub")
    return folder


@pytest.fixture
def new_key(tmp_path) -> tuple[Path, Path]:
    """The key an operator rotates to: (private, public)."""
    return keygen(tmp_path / "new-key")


def kid(public: Path) -> str:
    return fingerprint(load_public_key(public))


def release(tiny_bundle: Path, folder: Path, version: str, key: Path) -> Path:
    """The tiny bundle as release ``version``, signed by ``key``."""
    return set_version(signed_copy(tiny_bundle, folder / f"tiny-{version}-{key.stem}", key), version, key)


def updater(tmp_path: Path, keys: list, release_bundle: Path | None = None) -> Updater:
    """A device's update handling on ``tmp_path/models``; a second one on the same folder is the device restarted."""
    return Updater(tmp_path / "models", keys, lambda bundle: None, release=release_bundle)


def flash(up: Updater, folder: Path, permission: dict | None = None, transfer: str = "t1") -> dict:
    """Flash ``folder`` through the updater as `tools flash` would; the first refusal, else the commit's answer."""
    answers = [up.command(m) for m in messages(pack(folder), "tiny", transfer, 4096, permission)]
    return next((a for a in answers if a and a["status"] == "refused"), answers[-1])


# --- 6. logged values escaped --------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("pi-01\n2026-11-27 00:00:00,000 INFO forged", "pi-01\\n2026-11-27 00:00:00,000 INFO forged"),
    ("a\rb", "a\\rb"), ("\x1b[31mred", "\\x1b[31mred"), ("x\u2028y\u202ez", "x\\u2028y\\u202ez"),
    ("back\\n", "back\\n"), ("kitchen-pi_1.2", "kitchen-pi_1.2"), ("caf\u00e9", "caf\u00e9"),
])
def test_outside_values_become_one_escaped_log_line(raw, shown):
    assert printable(raw) == shown


def test_an_outside_value_is_cut_before_it_reaches_the_log():
    assert printable("x" * 10_000, 50) == "x" * 50 + "..."


# --- 3. updates only go forward -------------------------------------------------------------------------------------

@pytest.mark.parametrize("new, running, older", [
    ("2026.11.26.4", "2026.11.26.5", True), ("2026.11.24", "2026.11.26.5", True), ("2025.12.31.9", "2026.1.1", True),
    ("2026.11.26.10", "2026.11.26.9", False),  # numbers, not text: 10 > 9
    ("2026.11.26", "2026.11.26.0", False), ("2026.11.26.5", "2026.11.26.5", False),
    ("v1", "v2", False), ("test", RELEASE, False), (RELEASE, "test", False),  # outside the release order
])
def test_release_versions_compare_component_by_component(new, running, older):
    assert is_older(new, running) is older


def test_an_older_release_is_refused_unless_a_trusted_key_allows_exactly_that_bundle(tmp_path, tiny_bundle, keys,
                                                                                    key_dir, stranger_key):
    up = updater(tmp_path, [key_dir])
    assert flash(up, release(tiny_bundle, tmp_path, RELEASE, keys[0]))["status"] == "installed"
    older = release(tiny_bundle, tmp_path, "2026.11.26.4", keys[0])
    assert flash(up, older)["reason"] == ("bundle version 2026.11.26.4 is older than the running 2026.11.26.5: updates "
                                          "only go forward (a rollback needs an allow-downgrade statement signed by a "
                                          "trusted key)")
    operator = load_private_key(keys[0])
    other = release(tiny_bundle, tmp_path, "2026.11.24", keys[0])
    assert "names bundle '2026.11.24'" in flash(up, older, sign_statement(operator, downgrade_permission(other)))["reason"]
    by_stranger = sign_statement(load_private_key(stranger_key), downgrade_permission(older))
    assert "which this device does not trust" in flash(up, older, by_stranger)["reason"]
    tampered = {**sign_statement(operator, downgrade_permission(older)), "version": "2026.11.26.3"}
    assert "allow-downgrade statement signature does not match" in flash(up, older, tampered)["reason"]
    allowed = flash(up, older, sign_statement(operator, downgrade_permission(older)))
    assert allowed["status"] == "installed" and allowed["version"] == "2026.11.26.4"
    assert flash(up, release(tiny_bundle, tmp_path, "2026.11.26.10", keys[0]))["status"] == "installed"


def test_before_any_update_the_release_bundle_sets_the_floor(tmp_path, tiny_bundle, keys, key_dir):
    up = updater(tmp_path, [key_dir], release(tiny_bundle, tmp_path / "shipped", RELEASE, keys[0]))
    answer = flash(up, release(tiny_bundle, tmp_path, "2026.11.24", keys[0]))
    assert answer["status"] == "refused" and "older than the running 2026.11.26.5" in answer["reason"]
    assert up.store.current() is None


# --- 2. every inbound size bounded before allocation ----------------------------------------------------------------

def begin(transfer: str = "absurd", **fields) -> dict:
    return {"cmd": "ota_begin", "transfer": transfer, "name": "tiny", "sha256": "0" * 64, **fields}


CHUNK_DATA = base64.b64encode(bytes(MIN_CHUNK_BYTES)).decode()
"""One full chunk of the smallest size, as a flash chunk carries it."""
ABSURD = [  # (fields of an announcement, what its one-line refusal names)
    ({"size": MAX_BUNDLE_BYTES, "chunk_size": 2**20, "chunks": 10**9}, "131072"),
    ({"size": MAX_BUNDLE_BYTES, "chunk_size": 1, "chunks": MAX_BUNDLE_BYTES}, "512"),  # the old +1.6 GB set
    ({"size": 2**40, "chunk_size": 2**20, "chunks": 2**20}, "67108864"),
    ({"size": 10**6, "chunk_size": 512, "chunks": 3}, "does not fit"),
]


def test_the_schema_carries_the_devices_bounds():
    by_cmd = {b["if"]["properties"]["cmd"]["const"]: b["then"]["properties"] for b in schema("cmd")["allOf"]}
    assert by_cmd["ota_begin"]["chunk_size"]["minimum"] == MIN_CHUNK_BYTES
    assert by_cmd["ota_begin"]["chunks"]["maximum"] == MAX_CHUNKS == MAX_BUNDLE_BYTES // MIN_CHUNK_BYTES
    assert by_cmd["ota_chunk"]["index"]["maximum"] == MAX_CHUNKS - 1
    worst = ", ".join(f"{MAX_CHUNKS - 2 * i - 3}-{MAX_CHUNKS - 2 * i - 2}" for i in range(MAX_MISSING_RANGES))
    assert schema("ota")["properties"]["missing"]["maxLength"] >= len(worst)


def test_an_absurd_announcement_is_refused_before_anything_is_sized_by_it(store):
    receiver = OtaReceiver(store)
    receiver.handle(begin(size=1, chunk_size=512, chunks=1))  # compiles the schemas: not what is measured
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        for fields, named in ABSURD:
            tracemalloc.reset_peak()
            answer = receiver.handle(begin(**fields))
            assert answer.status == "refused" and named in answer.reason and "\n" not in answer.reason, answer
            assert tracemalloc.get_traced_memory()[1] < 2**20
        tracemalloc.reset_peak()
        biggest = receiver.handle(begin(size=MAX_BUNDLE_BYTES, chunk_size=MIN_CHUNK_BYTES, chunks=MAX_CHUNKS))
        assert biggest.status == "ready" and biggest.missing == f"0-{MAX_CHUNKS - 1}"
        assert tracemalloc.get_traced_memory()[1] < 2**20  # one bit per chunk: 16 KiB
    finally:
        tracemalloc.stop()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_kb < 4 * 1024


def test_missing_chunks_come_back_as_ranges(store, bundles):
    receiver = OtaReceiver(store)
    first, *chunks, commit = transfer_messages(pack(bundles["v2"]), "tiny", "ranges", MIN_CHUNK_BYTES)
    n = len(chunks)
    assert receiver.handle(first).missing == f"0-{n - 1}"
    for index in (0, 5, 6, n - 1):
        receiver.handle(chunks[index])
    answer = receiver.handle(commit)
    assert answer.status == "incomplete" and answer.missing == f"1-4, 7-{n - 2}"
    parse("ota", json.dumps(answer.payload()))
    assert parse_ranges(answer.missing, n) == [1, 2, 3, 4, *range(7, n - 1)]
    assert receiver.handle(first).missing == f"1-4, 7-{n - 2}"  # a resumed begin asks for the same
    for message in chunks:
        receiver.handle(message)
    complete = receiver.handle(first)  # a begin sent again after every chunk arrived: nothing is missing
    assert complete.missing == "" and parse("ota", json.dumps(complete.payload()))
    assert receiver.handle(commit).installed


def test_a_transfer_that_lost_every_other_chunk_gets_a_short_answer(store):
    receiver = OtaReceiver(store)
    receiver.handle(begin("holes", size=MAX_BUNDLE_BYTES, chunk_size=MIN_CHUNK_BYTES, chunks=MAX_CHUNKS))
    for index in range(0, 2 * MAX_MISSING_RANGES + 20, 2):
        receiver.handle({"cmd": "ota_chunk", "transfer": "holes", "index": index, "data": CHUNK_DATA})
    answer = receiver.handle({"cmd": "ota_commit", "transfer": "holes"})
    assert answer.status == "incomplete" and answer.missing.count(",") == MAX_MISSING_RANGES - 1
    assert answer.missing.startswith("1, 3, 5") and parse("ota", json.dumps(answer.payload()))


@pytest.mark.parametrize("text", ["0-200", "5-3", "x", "1, 2-", "-1"])
def test_bogus_missing_ranges_are_refused_in_one_line(text):
    with pytest.raises(UserError) as refused:
        parse_ranges(text, 100)
    assert "\n" not in str(refused.value)


def test_a_full_command_queue_drops_commands_with_a_reply_and_one_log_line(monkeypatch, caplog):
    import queue

    import edge.device.runtime as runtime

    monkeypatch.setattr(runtime, "COMMAND_WAIT_S", 0.01)
    replies = []
    device = types.SimpleNamespace(commands=queue.Queue(maxsize=2), _dropping=False,
                                   link=types.SimpleNamespace(publish=lambda kind, payload: replies.append(payload)))
    with caplog.at_level(logging.WARNING):
        for n in range(6):
            Runtime.enqueue(device, {"cmd": "set_rate", "rate_hz": 1, "id": f"r{n}"})
        Runtime.enqueue(device, {"cmd": "ota_chunk", "transfer": "t", "index": 0, "data": ""})
    assert device.commands.qsize() == 2 and [r["id"] for r in replies] == ["r2", "r3", "r4", "r5"]
    assert all(r == {"cmd": "set_rate", "ok": False, "error": "device busy: command dropped", "id": r["id"]} for r in replies)
    assert [r.getMessage() for r in caplog.records] == ["command queue full (2 waiting): dropping commands until it drains"]


# --- 5. revocation and rotation -------------------------------------------------------------------------------------

def test_the_shipped_revocation_list_loads_and_the_shipped_bundle_still_verifies():
    from edge.device.config import RELEASE_KEYS, SHIPPED_BUNDLE

    trust = TrustStore.load([RELEASE_KEYS])
    assert verify_bundle_files(SHIPPED_BUNDLE, trust) not in trust.revoked


def test_a_key_the_release_revokes_signs_nothing_anywhere(tmp_path, tiny_bundle, keys, key_dir):
    bundle = release(tiny_bundle, tmp_path, RELEASE, keys[0])
    operator = verify_bundle_files(bundle, TrustStore.load([key_dir]))
    (key_dir / "revoked.json").write_text(json.dumps({"revoked": [{"key_id": operator, "reason": "lost"}]}))
    for trusted in ([key_dir], [key_dir / "operator.pub"]):  # beside a key folder, or beside a key file
        with pytest.raises(UserError, match=f"signed by key '{operator}', which is revoked"):
            verify_bundle_files(bundle, TrustStore.load(trusted))
    assert "which is revoked" in flash(updater(tmp_path, [key_dir]), bundle)["reason"]
    config = device_config(tmp_path, bundle, "0", "mqtt://127.0.0.1:1883", model={"trusted_keys": [str(key_dir)]})
    check_cmd = [sys.executable, "-m", "edge.cli", "check", "--bundle", str(bundle), "--config", str(config)]
    done = subprocess.run(check_cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (f"edge: error: bundle is signed by key '{operator}', "
                                                            "which is revoked"), done.stderr
    (key_dir / "revoked.json").unlink()
    done = subprocess.run(check_cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[0].endswith(f"signed by trusted key {operator}"), done.stderr


@pytest.mark.parametrize("content", ['{"revoked": [{"key_id": "not-a-key-id"}]}', '{"revoked": ["0123456789abcdef"]}',
                                     "[1, 2]", "\xff"])
def test_an_unreadable_revocation_list_is_a_start_up_error_in_one_line(key_dir, content):
    (key_dir / "revoked.json").write_text(content, errors="surrogateescape")
    with pytest.raises(UserError, match="revocation list .* is unreadable") as refused:
        TrustStore.load([key_dir])
    assert "\n" not in str(refused.value)


def test_a_revocation_statement_survives_a_restart_and_the_installed_bundle_falls_back(
        tmp_path, tiny_bundle, keys, key_dir, new_key, stranger_key, caplog):
    shutil.copy(new_key[1], key_dir / "new.pub")
    shipped = release(tiny_bundle, tmp_path / "shipped", RELEASE, keys[0])
    up = updater(tmp_path, [key_dir], shipped)
    assert flash(up, release(tiny_bundle, tmp_path, "2026.11.26.6", new_key[0]))["status"] == "installed"
    operator = load_private_key(keys[0])
    statement = sign_statement(operator, revocation([kid(new_key[1])]))
    assert up.trust(statement) == f"key {kid(keys[1])} revoked {kid(new_key[1])}"
    assert up.trust(statement).startswith("nothing to change")
    assert json.loads((tmp_path / "models" / STATE_FILE).read_text()) == {"statements": [statement]}
    with caplog.at_level(logging.ERROR):
        restarted = updater(tmp_path, [key_dir], shipped)
        assert restarted.bundle_path(shipped) == shipped and restarted.store.current() is None
    [line] = [r.getMessage() for r in caplog.records if "fails re-verification" in r.getMessage()]
    assert f"which is revoked): running the release bundle {shipped}" in line
    with pytest.raises(UserError, match="never trusted again"):
        restarted.trust(sign_statement(operator, rotation(new_key[1])))
    with pytest.raises(UserError, match="which this device does not trust"):
        restarted.trust(sign_statement(load_private_key(stranger_key), revocation([kid(keys[1])])))
    with pytest.raises(UserError, match="which is revoked"):
        restarted.trust(sign_statement(load_private_key(new_key[0]), revocation([kid(keys[1])])))
    with pytest.raises(UserError, match="changes no keys"):
        restarted.trust(sign_statement(operator, downgrade_permission(shipped)))


def test_a_rotated_key_is_trusted_after_its_statement_and_after_a_restart(tmp_path, tiny_bundle, keys, key_dir, new_key):
    up = updater(tmp_path, [key_dir])
    update = release(tiny_bundle, tmp_path, RELEASE, new_key[0])
    assert "which this device does not trust" in flash(up, update)["reason"]
    change = up.trust(sign_statement(load_private_key(keys[0]), rotation(new_key[1])))
    assert change == f"key {kid(keys[1])} introduced key {kid(new_key[1])}, trusted from now on"
    assert flash(up, update)["status"] == "installed"
    restarted = updater(tmp_path, [key_dir])
    assert restarted.bundle_path(tiny_bundle) == up.store.current() and kid(new_key[1]) in restarted.store.trusted.trusted
    # A later release revokes the key that introduced the new one: the stored rotation no longer verifies at start,
    # so the key it brought in goes with it, and so does the bundle that key signed.
    (key_dir / "revoked.json").write_text(json.dumps({"revoked": [{"key_id": kid(keys[1])}]}))
    again = updater(tmp_path, [key_dir])
    assert kid(new_key[1]) not in again.store.trusted.keys and again.bundle_path(tiny_bundle) == tiny_bundle


@pytest.mark.parametrize("content", ["not json", '{"statements": [{"statement": "trust-key"}]}', '{"statements": 1}'])
def test_a_damaged_trust_state_is_a_start_up_error_not_a_forgotten_revocation(tmp_path, key_dir, content):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / STATE_FILE).write_text(content)
    with pytest.raises(UserError, match="trust state .* is unreadable .* delete it to forget"):
        updater(tmp_path, [key_dir])


def test_a_tampered_installed_bundle_falls_back_at_start(tmp_path, tiny_bundle, keys, key_dir, caplog):
    up = updater(tmp_path, [key_dir])
    assert flash(up, release(tiny_bundle, tmp_path, RELEASE, keys[0]))["status"] == "installed"
    model = up.store.current() / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with caplog.at_level(logging.ERROR):
        assert updater(tmp_path, [key_dir]).bundle_path(tiny_bundle) == tiny_bundle
    assert any("signature does not match" in r.getMessage() for r in caplog.records)


# --- real devices, real broker ---------------------------------------------------------------------------------------

def publish_retained(port: int, payload: str, topic: str = "fer/pi-test/cmd") -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def answered(subscriber: Subscriber, port: int, command: dict) -> dict:
    send(port, json.dumps(command))
    return wait_for(lambda: [r for r in subscriber.payloads("reply") if r.get("id") == command["id"]], 30,
                    f"the reply to {command['id']}")[-1]


def start_with_a_retained_command(config: Path, subscriber: Subscriber, port: int, run: str) -> str:
    """Start the device, see it ignore the retained command and obey a live one; its log."""
    seen = len(subscriber.payloads("stats"))
    device = Device(config)
    try:
        wait_for(lambda: "ignored a retained command" in device.text(), 60, f"the retained command at {run}")
        stats = wait_for(lambda: subscriber.payloads("stats")[seen:], 30, "stats")
        assert stats[-1]["publish_rate_hz"] == 5  # the configured rate, not the retained 0.5
        live = answered(subscriber, port, {"cmd": "set_rate", "rate_hz": 2.5, "id": f"live-{run}"})
        assert live["ok"] and live["rate_hz"] == 2.5
    finally:
        assert device.stop() == 0
    return device.text()


def test_a_retained_command_is_never_obeyed_at_start_or_restart_on_a_real_device(tmp_path, tiny_bundle, video, broker):
    publish_retained(broker.port, json.dumps({"cmd": "set_rate", "rate_hz": 0.5, "id": "retained"}))
    subscriber = Subscriber(broker.port)
    config = device_config(tmp_path, tiny_bundle, video, broker.url)
    try:
        for run in ("start", "restart"):
            log = start_with_a_retained_command(config, subscriber, broker.port, run)
            assert log.count("ignored a retained command on fer/pi-test/cmd") == 1 and "Traceback" not in log
        assert not [r for r in subscriber.payloads("reply") if r.get("id") == "retained"]
    finally:
        subscriber.close()


def memory_kb(pid: int, field: str) -> int:
    """``VmHWM`` (the peak) or ``VmRSS`` of a process, in kB."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def test_absurd_announcements_over_mqtt_do_not_grow_a_real_device(tmp_path, tiny_bundle, video, broker, keys):
    subscriber = Subscriber(broker.port)
    device = Device(device_config(tmp_path, tiny_bundle, video, broker.url, model={"trusted_keys": [str(keys[1])]}))
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
        answered(subscriber, broker.port, {"cmd": "stats", "id": "warm"})
        send(broker.port, json.dumps(begin("warm", size=1, chunk_size=512, chunks=1)))  # schemas compiled
        wait_for(lambda: subscriber.payloads("ota"), 30, "the warm-up answer")
        time.sleep(2)
        before = memory_kb(device.proc.pid, "VmHWM")
        for n, (fields, _) in enumerate(ABSURD):
            send(broker.port, json.dumps(begin(f"absurd{n}", **fields)))
        send(broker.port, json.dumps(begin("biggest", size=MAX_BUNDLE_BYTES, chunk_size=MIN_CHUNK_BYTES, chunks=MAX_CHUNKS)))
        for index in (0, 5, 6):
            send(broker.port, json.dumps({"cmd": "ota_chunk", "transfer": "biggest", "index": index,
                                          "data": CHUNK_DATA}))
        send(broker.port, json.dumps({"cmd": "ota_commit", "transfer": "biggest"}))
        answers = wait_for(lambda: [a for a in subscriber.payloads("ota") if a["status"] == "incomplete"] and
                           subscriber.payloads("ota"), 30, "the answers")
        assert answered(subscriber, broker.port, {"cmd": "stats", "id": "after"})["ok"]
        grown_kb = memory_kb(device.proc.pid, "VmHWM") - before
    finally:
        assert device.stop() == 0
        subscriber.close()
    # Numbers beyond the contract are refused on `reply` by the schema, before any handler; the rest on `ota`.
    refusals = [r["error"] for r in subscriber.payloads("reply") if not r["ok"]] + \
        [a["reason"] for a in answers if a["status"] == "refused"]
    assert len(refusals) == len(ABSURD) and all(any(named in r for r in refusals) for _, named in ABSURD), refusals
    assert [a.get("missing") for a in answers if a["transfer"] == "biggest"] == [f"0-{MAX_CHUNKS - 1}", "1-4, 7-131071"]
    for answer in answers:
        check("ota", answer)
    assert grown_kb < 4 * 1024, f"the device's peak memory grew by {grown_kb} kB"
    log = device.text()
    assert log.count("refused command on") + log.count("model update absurd") == len(ABSURD) and "Traceback" not in log


def test_a_device_whose_installed_bundle_no_longer_verifies_starts_on_its_release_on_a_real_device(
        tmp_path, tiny_bundle, video, broker, keys, key_dir, new_key):
    shutil.copy(new_key[1], key_dir / "new.pub")
    shipped = release(tiny_bundle, tmp_path / "shipped", RELEASE, keys[0])
    up = updater(tmp_path, [key_dir], shipped)
    assert flash(up, release(tiny_bundle, tmp_path, "2026.11.26.6", new_key[0]))["status"] == "installed"
    revoked = {"revoked": [{"key_id": kid(new_key[1]), "reason": "its private half was lost"}]}
    (key_dir / "revoked.json").write_text(json.dumps(revoked))  # the next release revokes it
    forged = "evil\n2026-11-27 00:00:00,000 INFO edge.device.runtime: model forged version 9999"
    (tmp_path / "models" / "incoming" / forged).mkdir()
    subscriber = Subscriber(broker.port)
    device = Device(device_config(tmp_path, shipped, video, broker.url, model={"trusted_keys": [str(key_dir)]}))
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
    finally:
        assert device.stop() == 0
        subscriber.close()
    assert {e["model"]["version"] for e in subscriber.payloads("events")} == {RELEASE}
    lines = device.text().splitlines()
    [fallback] = [x for x in lines if "fails re-verification" in x]
    assert f"which is revoked): running the release bundle {shipped}" in fallback
    assert not (tmp_path / "models" / "current").exists()
    assert not any(x.startswith("2026-11-27") for x in lines)  # the folder's name did not forge a line
    assert any("model update incoming/evil\\n2026-11-27" in x and "is not allowed" in x for x in lines)


def test_rotation_and_rollback_over_mqtt_on_a_real_device(tmp_path, tiny_bundle, video, broker, keys, key_dir, new_key):
    shipped = release(tiny_bundle, tmp_path / "shipped", RELEASE, keys[0])
    by_new_key = release(tiny_bundle, tmp_path, "2026.11.26.6", new_key[0])
    older = release(tiny_bundle, tmp_path, "2026.11.26.4", new_key[0])
    subscriber = Subscriber(broker.port)
    config = device_config(tmp_path, shipped, video, broker.url, model={"trusted_keys": [str(key_dir)]})

    def flash_over_mqtt(folder: Path, transfer: str, permission: dict | None = None) -> dict:
        for message in messages(pack(folder), "tiny", transfer, 64 * 1024, permission):
            send(broker.port, json.dumps(message))
        return wait_for(lambda: [a for a in subscriber.payloads("ota") if a["transfer"] == transfer
                                 and a["status"] in ("installed", "refused")], 60, f"the verdict on {transfer}")[-1]

    device = Device(config)
    try:
        wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
        assert "which this device does not trust" in flash_over_mqtt(by_new_key, "before")["reason"]
        # the operator's commands: the old key introduces the new one; a signed permission to go back
        assert tools_main(["trust", "add-key", str(new_key[1]), "--key", str(keys[0]), "--device", "pi-test",
                           "--broker", broker.url]) == 0
        assert flash_over_mqtt(by_new_key, "after")["status"] == "installed"
        refused = flash_over_mqtt(older, "back")
        assert refused["reason"].startswith("bundle version 2026.11.26.4 is older than the running 2026.11.26.6")
        assert tools_main(["flash", str(older), "--device", "pi-test", "--broker", broker.url,
                           "--allow-downgrade", str(keys[0])]) == 0
    finally:
        assert device.stop() == 0
    seen = len(subscriber.payloads("events"))
    device = Device(config)  # restarted: the rotation is remembered, so the bundle the new key signed still verifies
    try:
        wait_for(lambda: subscriber.payloads("events")[seen:], 60, "events after the restart")
    finally:
        assert device.stop() == 0
        subscriber.close()
    assert subscriber.payloads("events")[-1]["model"]["version"] == "2026.11.26.4"
    log = device.text()
    assert "fails re-verification" not in log and "Traceback" not in log


def test_the_release_revocation_list_applies_whatever_keys_a_device_is_given(tmp_path):
    """An operator who lists only their own key folder still refuses the project's lost release keys."""
    own = tmp_path / "own-keys"
    own.mkdir()
    shipped = {e["key_id"] for e in json.loads((SHIPPED_KEYS / "revoked.json").read_text())["revoked"]}
    assert shipped and shipped <= TrustStore.load([own]).revoked
