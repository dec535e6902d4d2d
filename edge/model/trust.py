"""Bundle signatures: what a device checks before it lets a new model near its current one.

A signature is Ed25519 over :func:`signed_message`: the manifest's exact bytes and the
``model.tflite`` sha256. Signing the manifest covers everything a device acts on (classes,
preprocessing, checksums); the model hash is signed explicitly so the signature does not rely on
the manifest's own checksum field having been checked first. ``signature.json`` holds::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

Devices trust a list of public-key files (PEM, as written by ``tools keygen``); a bundle signed by
any other key, or not signed, is refused. The signing side lives in :mod:`tools.signing`.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import UserError
from edge.protocol.flash import MANIFEST_FILE, MAX_SIGNATURE_BYTES, MODEL_FILE, SIGNATURE_FILE
from edge.protocol.payloads import PayloadError, parse

ALGORITHM = "ed25519"
DOMAIN = b"fer-edge bundle signature v1\n"


def signed_message(manifest: bytes, model: bytes) -> bytes:
    """The bytes a bundle signature covers (domain-separated so the key signs nothing else by accident)."""
    return DOMAIN + hashlib.sha256(model).hexdigest().encode() + b"\n" + manifest


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a key: the first 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"public key {path} is not an Ed25519 key (make one with `tools keygen`)")
    return key


def load_trusted_keys(paths: list[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id, from files or folders of ``*.pub`` files."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.pub")) if p.is_dir() else [p])]
    return {key_id(k): k for k in map(load_public_key, files)}


def verify_bundle_files(folder: Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check ``folder``'s signature against the trusted keys; return the signer's key id or raise."""
    if not trusted:
        raise UserError("no trusted public keys configured: the device refuses every bundle until one is set")
    try:
        signature = parse("signature", (folder / SIGNATURE_FILE).read_bytes(), MAX_SIGNATURE_BYTES)
        manifest, model = (folder / MANIFEST_FILE).read_bytes(), (folder / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"bundle is not signed ({Path(exc.filename).name} missing): sign it with `tools sign`") from None
    except (PayloadError, OSError) as exc:
        raise UserError(f"bundle {SIGNATURE_FILE} is unreadable: {exc}") from None
    key = trusted.get(signature["key_id"])
    if key is None:
        raise UserError(f"bundle is signed by key {signature.get('key_id')!r}, which this device does not trust")
    try:
        key.verify(base64.b64decode(signature["signature"], validate=True), signed_message(manifest, model))
    except (InvalidSignature, ValueError, TypeError):
        raise UserError("bundle signature does not match its contents (tampered or corrupt)") from None
    return signature["key_id"]
