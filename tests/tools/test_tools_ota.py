"""Signing and the device's update path (edge/device/updates) with a real exported bundle: what is installed, what is refused."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile

import pytest
from fixtures.bundles import send, send_folder, set_version, signed_copy, transfer_messages

from edge.device.updates import BundleStore, OtaReceiver
from edge.errors import UserError
from edge.model.bundle import MODEL_FILE, SIGNATURE_FILE, load_bundle
from edge.model.selfcheck import self_check
from edge.model.trust import load_trusted_keys, verify_bundle_files
from edge.protocol.flash import pack, parse_ranges
from tools.flash import copy_ssh, copy_to
from tools.signing import keygen, sign_bundle


def version_of(store: BundleStore) -> str:
    return load_bundle(store.current()).version


def test_signing_round_trip_and_foreign_key(bundles, keys, stranger_key, tmp_path):
    kid = verify_bundle_files(bundles["v1"], load_trusted_keys([keys[1].parent]))
    assert json.loads((bundles["v1"] / SIGNATURE_FILE).read_text())["key_id"] == kid
    assert stat.S_IMODE(os.stat(keys[0]).st_mode) == 0o600
    with pytest.raises(UserError, match="already exists"):
        keygen(keys[0].parent)
    sign_bundle(bundles["v2"], stranger_key)
    with pytest.raises(UserError, match="does not trust"):
        verify_bundle_files(bundles["v2"], load_trusted_keys([keys[1]]))
    with pytest.raises(UserError, match="no trusted public keys"):
        verify_bundle_files(bundles["v1"], {})


def test_flash_installs_and_keeps_the_previous_bundle(store, bundles):
    old = store.current()
    result = send_folder(OtaReceiver(store), bundles["v2"])
    assert result.installed and result.version == "v2" and result.bundle.path == store.current()
    assert (store.root / "current").is_symlink() and version_of(store) == "v2" and old.is_dir()
    self_check(load_bundle(store.current()))


def test_duplicate_out_of_order_and_resumed_chunks_are_harmless(store, bundles):
    receiver = OtaReceiver(store)
    begin, *chunks, commit = transfer_messages(pack(bundles["v2"]), "tiny", chunk_size=1024)
    assert parse_ranges(receiver.handle(begin).missing, len(chunks)) == list(range(len(chunks)))
    for message in chunks[::-2]:
        assert receiver.handle(message) is None
    assert receiver.handle(commit).status == "incomplete"
    resumed = receiver.handle(begin)  # an interrupted flash sent again: the device asks only for what it lacks
    assert resumed.status == "ready"
    assert parse_ranges(resumed.missing, len(chunks)) == sorted(set(range(len(chunks))) - set(range(len(chunks))[::-2]))
    for message in chunks + chunks[:3]:
        receiver.handle(message)
    assert receiver.handle(commit).installed and version_of(store) == "v2"


def refused(store: BundleStore, result, match: str) -> None:
    assert result.status == "refused" and match in result.reason, result
    assert version_of(store) == "v1"
    assert not any((store.root / ".partial").iterdir())


def test_unsigned_bundle_refused(store, bundles):
    (bundles["v2"] / SIGNATURE_FILE).unlink()
    refused(store, send_folder(OtaReceiver(store), bundles["v2"]), "not signed")


def test_foreign_signature_refused(store, bundles, stranger_key):
    sign_bundle(bundles["v2"], stranger_key)
    refused(store, send_folder(OtaReceiver(store), bundles["v2"]), "does not trust")


def test_tampered_manifest_refused(store, bundles):
    set_version(bundles["v2"], "evil", key=None)
    refused(store, send_folder(OtaReceiver(store), bundles["v2"]), "signature does not match")


def test_tampered_in_transit_refused(store, bundles):
    receiver = OtaReceiver(store)
    begin, *chunks, commit = transfer_messages(pack(bundles["v2"]), "tiny")
    chunks[1]["data"] = chunks[0]["data"]
    for message in (begin, *chunks):
        receiver.handle(message)
    refused(store, receiver.handle(commit), "sha256")


def test_truncated_bundle_refused(store, bundles):
    model = bundles["v2"] / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-100])
    refused(store, send_folder(OtaReceiver(store), bundles["v2"]), "signature does not match")
    payload = pack(bundles["v1"])
    refused(store, send(OtaReceiver(store), payload[:len(payload) // 2]), "archive")


def test_oversized_bundle_refused_before_any_chunk(store, bundles):
    small = BundleStore(store.root, store.trusted, max_bytes=10_000)
    begin = transfer_messages(pack(bundles["v2"]), "tiny")[0]
    refused(store, OtaReceiver(small).handle(begin), "accepts up to 10000")


def test_path_traversal_refused(store, bundles):
    refused(store, send_folder(OtaReceiver(store), bundles["v2"], name="../escape"), "not allowed")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in bundles["v2"].iterdir():
            tar.add(path, arcname=f"../{path.name}")
    refused(store, send(OtaReceiver(store), out.getvalue()), "not allowed")
    assert not (store.root.parent / MODEL_FILE).exists()


def test_self_check_failure_keeps_the_old_bundle(store, broken_bundle):
    load_bundle(broken_bundle)  # a valid, signed bundle: only running it shows it is unusable
    refused(store, send_folder(OtaReceiver(store), broken_bundle, name="broken"), "self-check failed")


def test_incoming_folder_from_flash_to(store, bundles, stranger_key, tmp_path):
    assert copy_to(bundles["v2"], store.root) == store.root / "incoming" / bundles["v2"].name
    (store.root / "incoming" / ".half.partial").mkdir()  # a copy in progress is left alone
    [result] = store.install_incoming()
    assert result.installed and version_of(store) == "v2"
    assert [p.name for p in (store.root / "incoming").iterdir()] == [".half.partial"]
    foreign = signed_copy(bundles["v1"], store.root / "incoming" / "foreign", stranger_key)
    [result] = store.install_incoming()
    assert result.status == "refused" and "does not trust" in result.reason and not foreign.exists()
    assert version_of(store) == "v2"
    (bundles["v1"] / SIGNATURE_FILE).unlink()
    with pytest.raises(UserError, match="not signed"):
        copy_to(bundles["v1"], store.root)


def test_flash_ssh_copies_for_the_device_to_install(store, bundles, tmp_path, monkeypatch):
    """ssh and scp are replaced by local stand-ins (no sshd here) that run in a fake remote home."""
    bin_dir, home = tmp_path / "bin", store.root.parent
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nshift\ncd {home} && sh -c "$1"\n')
    (bin_dir / "scp").write_text(f'#!/bin/sh\ncd {home} && cp -r "$2" "${{3#*:}}"\n')
    for tool in ("ssh", "scp"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert copy_ssh(bundles["v2"], f"pi@pi-01:{store.root.name}") == f"pi@pi-01:{store.root.name}/incoming/tiny-v2"
    [result] = store.install_incoming()
    assert result.installed and version_of(store) == "v2"
    with pytest.raises(UserError, match="not user@host"):
        copy_ssh(bundles["v2"], "-oProxyCommand=evil")
