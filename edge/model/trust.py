"""Bundle signatures: what a device checks before it lets a new model near its current one.

A signature is Ed25519 over :func:`signed_message`: the manifest's exact bytes and the
``model.tflite`` sha256. Signing the manifest covers everything a device acts on (classes,
preprocessing, checksums); the model hash is signed explicitly so the signature does not rely on
the manifest's own checksum field having been checked first. ``signature.json`` holds::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

Devices trust a list of public-key files (PEM, as written by ``tools keygen``); a bundle signed by
any other key, or not signed, is refused. The signing side lives in :mod:`tools.signing`.

A device reads its trusted keys at start (a bad key file is a start-up error) but checks a signature
only when an update arrives, so the keys are read here without ``cryptography``: an Ed25519 public
key's PEM is always the same 12-byte DER header and the 32 key bytes (RFC 8410). ``cryptography``
(about 7 MB resident) is imported by the first signature check.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from edge.errors import UserError
from edge.protocol.flash import MANIFEST_FILE, MAX_SIGNATURE_BYTES, MODEL_FILE, SIGNATURE_FILE
from edge.protocol.payloads import PayloadError, parse

ALGORITHM = "ed25519"
DOMAIN = b"fer-edge bundle signature v1\n"


def signed_message(manifest: bytes, model: bytes) -> bytes:
    """The bytes a bundle signature covers (domain-separated so the key signs nothing else by accident)."""
    return DOMAIN + hashlib.sha256(model).hexdigest().encode() + b"\n" + manifest


ED25519_SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")
"""DER SubjectPublicKeyInfo prefix of every Ed25519 public key; the 32 raw key bytes follow it."""


def fingerprint(raw: bytes) -> str:
    """A short, stable name for a key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(raw).hexdigest()[:16]


def key_id(public_key) -> str:
    """The :func:`fingerprint` of a ``cryptography`` Ed25519 public key (the signing side has one)."""
    from cryptography.hazmat.primitives import serialization

    return fingerprint(public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(path: str | Path) -> bytes:
    """The 32 raw bytes of an Ed25519 public key in a PEM file."""
    try:
        lines = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read public key {path}: {exc}") from None
    if lines[:3] != ["-----BEGIN", "PUBLIC", "KEY-----"] or lines[-3:] != ["-----END", "PUBLIC", "KEY-----"]:
        raise UserError(f"cannot read public key {path}: not a PEM public key (make one with `tools keygen`)")
    try:
        der = base64.b64decode("".join(lines[3:-3]), validate=True)
    except ValueError:
        raise UserError(f"cannot read public key {path}: its PEM body is not base64") from None
    if len(der) != len(ED25519_SPKI_HEADER) + 32 or not der.startswith(ED25519_SPKI_HEADER):
        raise UserError(f"public key {path} is not an Ed25519 key (make one with `tools keygen`)")
    return der[len(ED25519_SPKI_HEADER):]


def load_trusted_keys(paths: list[str | Path]) -> dict[str, bytes]:
    """Raw public keys by key id, from files or folders of ``*.pub`` files."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.pub")) if p.is_dir() else [p])]
    return {fingerprint(k): k for k in map(load_public_key, files)}


def verify_bundle_files(folder: Path, trusted: dict[str, bytes]) -> str:
    """Check ``folder``'s signature against the trusted keys; return the signer's key id or raise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
        Ed25519PublicKey.from_public_bytes(key).verify(base64.b64decode(signature["signature"], validate=True),
                                                       signed_message(manifest, model))
    except (InvalidSignature, ValueError, TypeError):
        raise UserError("bundle signature does not match its contents (tampered or corrupt)") from None
    return signature["key_id"]
