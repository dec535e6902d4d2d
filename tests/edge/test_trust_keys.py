"""Trusted keys are read at start without ``cryptography``; it is imported by the first signature check."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.errors import UserError
from edge.model.trust import key_id, load_public_key, load_trusted_keys
from tools.signing import keygen, load_private_key


def test_keys_load_without_cryptography_and_the_first_check_imports_it():
    script = ("import sys\n"
              "from edge.device.config import RELEASE_KEYS, SHIPPED_BUNDLE\n"
              "from edge.model.trust import load_trusted_keys, verify_bundle_files\n"
              "keys = load_trusted_keys([RELEASE_KEYS])\n"
              "before = 'cryptography' in sys.modules\n"
              "print(before, verify_bundle_files(SHIPPED_BUNDLE, keys) in keys, 'cryptography' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True", "True"], done.stderr


def test_a_key_from_tools_keygen_has_the_id_the_signer_writes(tmp_path):
    private, public = keygen(tmp_path, "ops")
    assert list(load_trusted_keys([tmp_path])) == [key_id(load_private_key(private).public_key())]
    assert len(load_public_key(public)) == 32


def pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("content, message", [
    (pem(rsa.generate_private_key(65537, 2048).public_key()), "is not an Ed25519 key"),
    (pem(ec.generate_private_key(ec.SECP256R1()).public_key()), "is not an Ed25519 key"),
    (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKq operator@laptop\n", "not a PEM public key"),
    (b"-----BEGIN PUBLIC KEY-----\nnot*base64\n-----END PUBLIC KEY-----\n", "not base64"),
    (b"", "not a PEM public key"),
    (b"\xff\xfe", "cannot read public key"),
], ids=["rsa", "ecdsa", "openssh", "bad-base64", "empty", "not-utf8"])
def test_other_or_broken_keys_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "other.pub"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_trusted_keys([path])
