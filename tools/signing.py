"""Operator side of bundle signing: make an Ed25519 key pair and sign a bundle folder.

The private key never leaves the operator's machine; devices get the ``.pub`` file and refuse
bundles that no trusted key signed (:mod:`edge.model.trust` defines the signed bytes and verifies).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import UserError
from edge.model.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, load_bundle
from edge.model.trust import ALGORITHM, key_id, signed_message


def keygen(out: Path, name: str = "signing") -> tuple[Path, Path]:
    """Write ``<name>.key`` (private, mode 600, never copy it to a device) and ``<name>.pub``; refuse to overwrite."""
    private, public = out / f"{name}.key", out / f"{name}.pub"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: keygen writes two key files into a folder")
    if private.exists() or public.exists():
        raise UserError(f"{private} or {public} already exists: choose another --out or --name")
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an Ed25519 private key (make one with `tools keygen`)")
    return key


def sign_bundle(bundle: Path, key_path: Path) -> str:
    """Validate the bundle, then write its ``signature.json``; return the key id it was signed with."""
    load_bundle(bundle)
    key = load_private_key(key_path)
    message = signed_message((bundle / MANIFEST_FILE).read_bytes(), (bundle / MODEL_FILE).read_bytes())
    kid = key_id(key.public_key())
    signature = {"algorithm": ALGORITHM, "key_id": kid, "signature": base64.b64encode(key.sign(message)).decode()}
    (bundle / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2) + "\n")
    return kid
