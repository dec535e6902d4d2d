"""Property-based fuzzing of every input boundary (Hypothesis).

Each property states an invariant that must hold for *any* input of its class: bad input becomes a
one-line refusal (a :class:`UserError` or an ``ota`` refusal), never another exception; the old
model stays current; what is valid still works. The example count is modest so the suite stays
fast; a longer run is a flag away: ``python -m pytest tests/edge/test_fuzz.py --hypothesis-profile=long``.
The same properties are driven against a real device process over mosquitto at the end.
"""

from __future__ import annotations

import base64
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest
import yaml
from fixtures.bundles import transfer_messages
from fixtures.mqtt import Device, Subscriber, device_config, send, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.commandline import Parser
from edge.device.config import load_config
from edge.device.updates import BundleStore, OtaReceiver
from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.trust import (
    TrustStore,
    downgrade_permission,
    load_trusted_keys,
    revocation,
    rotation,
    sign_statement,
    verify_bundle_files,
)
from edge.protocol.flash import MAX_BUNDLE_BYTES, MAX_CHUNKS, MIN_CHUNK_BYTES, pack
from edge.protocol.payloads import PayloadError, parse

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25)
FLASH_KEYS = ("cmd", "transfer", "name", "size", "sha256", "chunk_size", "chunks", "index", "data", "id", "allow_downgrade",
              "statement")
COMMANDS = ("reload", "set_rate", "stats", "ota_begin", "ota_chunk", "ota_commit", "trust", "nope", "", None)


def to_bytes(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


messages = st.fixed_dictionaries({"cmd": st.sampled_from(COMMANDS)}, optional={
    k: json_values | st.integers(-5, 2**27) | st.text(max_size=80) for k in FLASH_KEYS[1:]})
raw_payloads = (st.binary(max_size=300) | json_values.map(to_bytes) | messages.map(to_bytes)
                | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
                | st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n))


@given(raw_payloads)
def test_cmd_payloads_are_parsed_or_refused_in_one_line(payload):
    try:
        command = parse("cmd", payload)
    except PayloadError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(command, dict) and command["cmd"] in COMMANDS
    json.dumps(command, allow_nan=False)  # whatever is accepted is strict, finite JSON


@pytest.fixture
def receiver(store) -> OtaReceiver:
    return OtaReceiver(store)


def current_version(store: BundleStore) -> str:
    return load_bundle(store.current()).version


@given(st.lists(messages, min_size=1, max_size=12))
def test_flash_message_sequences_never_raise_and_keep_the_old_model(receiver, store, sequence):
    for message in sequence:
        answer = receiver.handle(message)
        assert answer is None or answer.status in ("ready", "incomplete", "refused")
        if answer is not None:
            json.dumps(answer.payload(), allow_nan=False)
            parse("ota", json.dumps(answer.payload()))  # every answer matches the ota schema
    assert current_version(store) == "v1"


@given(st.lists(st.tuples(st.integers(0, 80), st.binary(min_size=0, max_size=64)), max_size=8), st.data())
def test_corrupted_transfers_are_refused_or_install_exactly_the_signed_files(tmp_path_factory, keys, bundles, edits,
                                                                               data):
    """Damage anywhere in the archive: refused with the old model current, or (damage only in the tar's padding,
    which carries nothing) installed with every file byte-identical to the signed bundle's."""
    store = BundleStore(tmp_path_factory.mktemp("device") / "models", load_trusted_keys([keys[1]]))
    shutil.copytree(bundles["v1"], store.root / "incoming" / "tiny")
    assert store.install_incoming()[0].installed
    receiver = OtaReceiver(store)
    payload = bytearray(pack(bundles["v2"]))
    for offset, junk in edits:
        position = offset * len(payload) // 80
        payload[position:position + len(junk)] = junk
    chunk_size = data.draw(st.sampled_from([512, 4096, 65536]))
    answer = [receiver.handle(m) for m in transfer_messages(bytes(payload), "fuzz", "fz", chunk_size)][-1]
    if answer.status == "installed":
        installed = {p.name: p.read_bytes() for p in store.current().iterdir()}
        assert installed == {p.name: p.read_bytes() for p in bundles["v2"].iterdir()}
    else:
        assert answer.status == "refused" and current_version(store) == "v1"


claimed = (st.integers(-2**70, 2**70) | st.sampled_from(
    [0, 1, MIN_CHUNK_BYTES - 1, MIN_CHUNK_BYTES, MAX_CHUNKS - 1, MAX_CHUNKS, MAX_CHUNKS + 1, MAX_BUNDLE_BYTES,
     MAX_BUNDLE_BYTES + 1, 10**9, 2**31, 2**63]) | json_values)
"""What a sender may claim for a size, a count or an index: mostly absurd, sometimes exactly at a limit."""
absurd_flash = (
    st.fixed_dictionaries({"cmd": st.just("ota_begin"), "transfer": st.sampled_from(["fz", "fz2"]),
                           "name": st.just("tiny"), "sha256": st.just("0" * 64),
                           "size": claimed, "chunk_size": claimed, "chunks": claimed},
                          optional={"allow_downgrade": json_values})
    | st.fixed_dictionaries({"cmd": st.just("ota_chunk"), "transfer": st.sampled_from(["fz", "fz2"]), "index": claimed,
                             "data": st.sampled_from(["", "AA==", base64.b64encode(bytes(MIN_CHUNK_BYTES)).decode()])
                             | st.text(max_size=64)})
    | st.fixed_dictionaries({"cmd": st.just("ota_commit"), "transfer": st.sampled_from(["fz", "fz2"])}))
ALLOCATION_LIMIT = 2**20
"""The most one flash message may allocate at its peak, whatever it claims: a 64 MiB bundle in 512-byte chunks is
tracked in 16 KiB, a chunk's data is at most what the message itself carries, and the schemas hold everything else."""


@given(st.lists(absurd_flash | messages, min_size=1, max_size=10))
def test_claimed_sizes_never_raise_and_never_size_an_allocation(receiver, store, sequence):
    receiver.handle({"cmd": "ota_begin"})  # compiles the schema once: not what is measured
    tracemalloc.start()
    try:
        for message in sequence:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            answer = receiver.handle(message)
            assert tracemalloc.get_traced_memory()[1] - before < ALLOCATION_LIMIT, message
            if answer is not None:
                parse("ota", json.dumps(answer.payload()))  # bounded, valid, one line
                assert answer.status in ("ready", "incomplete", "refused") and "\n" not in (answer.reason or "")
    finally:
        tracemalloc.stop()
    assert current_version(store) == "v1"


def statements(keys):
    """Signed statements of every kind, then broken in the ways a sender could break them."""
    from tools.signing import load_private_key

    operator = load_private_key(keys[0])
    signed = st.sampled_from([revocation(["0123456789abcdef"]), rotation(keys[1]), {"statement": "trust-key",
                              "public_key": base64.b64encode(bytes(32)).decode()}]).map(lambda b: sign_statement(operator, b))
    return (signed | st.tuples(signed, st.sampled_from(["statement", "key_id", "signature", "key_ids", "public_key",
                                                        "algorithm", "extra"]), json_values).map(
        lambda t: {**t[0], t[1]: t[2]}) | json_values)


@given(st.data())
def test_any_trust_statement_changes_the_keys_or_is_refused_in_one_line(tmp_path_factory, keys, tiny_bundle, data):
    trust = TrustStore(load_trusted_keys([keys[1]]), state=tmp_path_factory.mktemp("trust") / "trust.json")
    for statement in data.draw(st.lists(statements(keys), min_size=1, max_size=4)):
        try:
            trust.receive(statement)
        except UserError as exc:
            assert "\n" not in str(exc)
    assert TrustStore.load([keys[1]], trust.state).trusted == trust.trusted  # what was stored replays the same
    assert downgrade_permission(tiny_bundle)["statement"] == "allow-downgrade"


def mutate(value, path: list, replacement):
    if len(path) == 1:
        if isinstance(value, dict):
            value[path[0]] = replacement
        return
    child = value.get(path[0]) if isinstance(value, dict) else None
    if isinstance(child, (dict, list)):
        mutate(child, path[1:], replacement)


MANIFEST_PATHS = [["name"], ["classes"], ["version"], ["input", "shape"], ["output", "shape"], ["output", "dtype"],
                  ["input", "scale"], ["preprocessing", "spec"], ["preprocessing", "spec", "input_size"],
                  ["preprocessing", "spec", "gamma_target"], ["tflite", "sha256"], ["tflite", "bytes"],
                  ["schema_version"], ["preprocessing"], ["output"]]


@given(st.sampled_from(MANIFEST_PATHS), json_values)
def test_any_manifest_field_of_any_type_is_refused_in_one_line_or_loads(tiny_bundle, tmp_path_factory, path, value):
    folder = tmp_path_factory.mktemp("manifest") / "b"
    shutil.copytree(tiny_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    mutate(manifest, path, value)
    (folder / "manifest.json").write_text(json.dumps(manifest, allow_nan=True))
    try:
        load_bundle(folder)
    except UserError as exc:
        assert "\n" not in str(exc)


@given(json_values | st.fixed_dictionaries({"algorithm": json_values, "key_id": json_values, "signature": json_values}))
def test_any_signature_file_is_refused_in_one_line(tiny_bundle, keys, tmp_path_factory, signature):
    folder = tmp_path_factory.mktemp("sig") / "b"
    shutil.copytree(tiny_bundle, folder)
    (folder / "signature.json").write_text(json.dumps(signature, allow_nan=True))
    with pytest.raises(UserError) as refused:
        verify_bundle_files(folder, load_trusted_keys([keys[1]]))
    assert "\n" not in str(refused.value)


CONFIG_KEYS = {"source": ["uri", "width", "height", "fps", "loop", "reopen_min_s", "reopen_max_s"],
               "detector": ["name", "min_score", "min_size", "max_faces", "every_n"],
               "model": ["bundle", "dir", "threads", "tta_flip", "trusted_keys"],
               "tracking": ["iou", "max_missed", "smoothing"], "publish": ["rate_hz", "stats_interval_s"],
               "mqtt": ["broker", "device_id", "prefix", "protocol", "keepalive_s", "tls_ca", "availability_ttl_s"],
               "spool": ["path", "max_events"], "nope": ["x"]}
config_entries = st.sampled_from([(s, k) for s, keys in CONFIG_KEYS.items() for k in keys])


@given(st.lists(st.tuples(config_entries, json_values), max_size=4) | json_values.map(lambda v: [(("source", None), v)]))
def test_any_device_config_is_checked_or_refused_in_one_line(tmp_path_factory, entries):
    data: dict = {}
    for (section, key), value in entries:
        if key is None:
            data[section] = value
        else:
            data.setdefault(section, {})[key] = value
    path = tmp_path_factory.mktemp("cfg") / "device.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.publish.rate_hz > 0 and cfg.source.fps >= 0  # accepted values are usable ones


def cli_parsers() -> dict[str, Parser]:
    import edge.cli
    import tools.cli

    return {"edge": edge.cli.parser(), "tools": tools.cli.parser()}


FLAG_WORDS = ["run", "bench", "check", "flash", "subscribe", "keygen", "sign", "plot", "dashboard", "--frames", "--threads",
              "--json", "--timeout", "--device", "--share", "--name", "--out", "--broker", "--rotate-mb", "--duration",
              "--port", "--prefix", "--protocol", "--log-level", "nan", "inf", "-1", "0", "1e309", "", "#", "a/b", "../x",
              "mqtt://[::1", "/nonexistent/x.json", "x" * 300]


@given(st.sampled_from(["edge", "tools"]), st.lists(st.sampled_from(FLAG_WORDS) | st.text(max_size=12), max_size=6))
def test_cli_flags_are_accepted_or_refused_in_one_line(capsys, prog, argv):
    parser = cli_parsers()[prog]
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code in (0, 2)
        if exc.code == 2:
            assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err


@settings(max_examples=12)
@given(st.lists(raw_payloads, min_size=1, max_size=6))
def test_a_real_device_survives_any_cmd_payload_and_keeps_every_event(live_device, payloads):
    device, subscriber, port = live_device
    for payload in payloads:
        send(port, payload)
    tag = f"alive-{len(subscriber.payloads('reply'))}"
    send(port, json.dumps({"cmd": "stats", "id": tag}))
    wait_for(lambda: any(r.get("id") == tag for r in subscriber.payloads("reply")), 20, "the device's answer")
    assert device.proc.poll() is None


@pytest.fixture(scope="module")
def live_device(tmp_path_factory, video):
    """One real device for the whole module (updates on, so flash messages reach the updater)."""
    from fixtures.mqtt import Mosquitto

    from tools.signing import keygen

    folder = tmp_path_factory.mktemp("live")
    broker = Mosquitto(folder)
    broker.start()
    _, public = keygen(folder / "keys")
    bundle = Path(__file__).resolve().parents[1] / "data" / "tiny-ck"
    subscriber = Subscriber(broker.port)
    device = Device(device_config(folder, bundle, video, broker.url, model={"trusted_keys": [str(public)]}))
    wait_for(lambda: subscriber.payloads("events"), 60, "a first event")
    yield device, subscriber, broker.port
    assert device.stop() == 0
    seqs = sorted({e["seq"] for e in subscriber.payloads("events")})
    assert seqs == list(range(len(seqs))), "an event was lost"
    assert "Traceback" not in device.text()
    subscriber.close()
    broker.stop()


def test_base64_of_flash_chunk_limit_matches_the_schema():
    """The cmd schema's limit on a chunk's base64 text is exactly what 1 MiB encodes to."""
    from edge.protocol.flash import MAX_CHUNK_BYTES
    from edge.protocol.payloads import schema

    chunk = next(b["then"] for b in schema("cmd")["allOf"] if b["if"]["properties"]["cmd"]["const"] == "ota_chunk")
    assert chunk["properties"]["data"]["maxLength"] == len(base64.b64encode(bytes(MAX_CHUNK_BYTES)))
