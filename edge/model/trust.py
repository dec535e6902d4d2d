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

**Statements** (``schemas/statement.json``) are small signed JSON objects with the same keys and
scheme, under a domain of their own (:func:`statement_message`), so a bundle signature never passes
for a statement nor the other way round: ``allow-downgrade`` (one older bundle may be installed,
named by its manifest's sha256), ``revoke-keys`` and ``trust-key`` (key rotation: a trusted key
introduces a new one). A device's :class:`TrustStore` is its configured keys, minus the key ids the
release revokes in ``revoked.json`` beside them, changed by the revocations and new keys it has
received; it keeps those statements in ``trust.json`` in its models folder and re-verifies them, in
order, at every start. A revoked key is refused wherever a signature is checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Iterable, Mapping

from edge.errors import UserError, printable
from edge.protocol.flash import MANIFEST_FILE, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, MODEL_FILE, SIGNATURE_FILE
from edge.protocol.payloads import PayloadError, check, encode, loads, parse, schema

log = logging.getLogger("edge.model.trust")
ALGORITHM = "ed25519"
DOMAIN = b"fer-edge bundle signature v1\n"
STATEMENT_DOMAIN = b"fer-edge signed statement v1\n"
ALLOW_DOWNGRADE, REVOKE_KEYS, TRUST_KEY = "allow-downgrade", "revoke-keys", "trust-key"
REVOKED_FILE = "revoked.json"
"""The release's revocation list, beside its trusted keys: ``{"revoked": [{"key_id": "<16 hex>", "reason": "..."}]}``;
no file there, no key revoked."""
STATE_FILE = "trust.json"
"""Where a device keeps the key changes it received (its models folder, in its state directory)."""
MAX_REVOKED_BYTES = 64 * 1024
MAX_STATE_BYTES = 2**20
MAX_STATEMENTS = schema("trust-state")["properties"]["statements"]["maxItems"]


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


SHIPPED_KEYS = Path(__file__).resolve().parent / "assets" / "keys"
"""The release's public key and its revocation list, package data beside this module."""


def load_trusted_keys(paths: list[str | Path]) -> dict[str, bytes]:
    """Raw public keys by key id, from files or folders of ``*.pub`` files."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.pub")) if p.is_dir() else [p])]
    return {fingerprint(k): k for k in map(load_public_key, files)}


def load_revoked(paths: list[str | Path]) -> set[str]:
    """Key ids revoked by the ``revoked.json`` beside the trusted keys (in a key folder, or beside a key file), and
    always by the release's own list (:data:`SHIPPED_KEYS`): a device configured with only its operator's keys must
    still refuse the project's lost keys."""
    revoked: set[str] = set()
    for folder in dict.fromkeys([SHIPPED_KEYS, *(p if p.is_dir() else p.parent for p in map(Path, paths))]):
        path = folder / REVOKED_FILE
        try:
            revoked.update(entry["key_id"] for entry in parse("revoked", path.read_bytes(), MAX_REVOKED_BYTES)["revoked"])
        except FileNotFoundError:
            continue
        except (OSError, PayloadError) as exc:
            raise UserError(f"revocation list {path} is unreadable: {exc}") from None
    return revoked


def statement_message(statement: dict) -> bytes:
    """The bytes a statement's signature covers: its own domain, then every field but ``signature`` as canonical JSON
    (sorted keys, no spaces, ASCII), so signer and device agree on the bytes whatever order the fields travel in."""
    body = {k: v for k, v in statement.items() if k != "signature"}
    return STATEMENT_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_statement(private_key, body: dict) -> dict:
    """The operator side (``tools`` imports it): ``body`` (:func:`downgrade_permission`, :func:`revocation`,
    :func:`rotation`) signed by a ``cryptography`` Ed25519 private key (``tools.signing.load_private_key``)."""
    statement = {**body, "algorithm": ALGORITHM, "key_id": key_id(private_key.public_key())}
    statement["signature"] = base64.b64encode(private_key.sign(statement_message(statement))).decode()
    return check("statement", statement)


def downgrade_permission(folder: str | Path) -> dict:
    """An ``allow-downgrade`` statement's body for the bundle in ``folder``: it names the bundle by its manifest's
    sha256 (which covers the model's) and version, nothing about a device, so one signed permission serves a fleet."""
    try:
        manifest = (Path(folder) / MANIFEST_FILE).read_bytes()
        version = loads(manifest, MAX_MANIFEST_BYTES)["version"]
    except (OSError, PayloadError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the version of bundle {folder}: {exc}") from None
    return {"statement": ALLOW_DOWNGRADE, "manifest_sha256": hashlib.sha256(manifest).hexdigest(), "version": version}


def revocation(key_ids: Iterable[str]) -> dict:
    """A ``revoke-keys`` statement's body: devices refuse whatever these keys signed, and never trust them again."""
    return {"statement": REVOKE_KEYS, "key_ids": sorted(set(key_ids))}


def rotation(public_key: str | Path) -> dict:
    """A ``trust-key`` statement's body: devices that trust its signer trust the key in this PEM file too."""
    return {"statement": TRUST_KEY, "public_key": base64.b64encode(load_public_key(public_key)).decode()}


def _check_signature(key: bytes, signature: str, message: bytes, what: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError, TypeError):
        raise UserError(f"{what} signature does not match its contents (tampered or corrupt)") from None


class TrustStore:
    """The keys a device trusts now: configured keys minus revoked ones, plus keys introduced by rotation.

    ``state`` (a file, or None to keep changes in memory only) holds the statements that changed it, in the order
    received; :meth:`load` replays and re-verifies them at every start, as if the device received them again knowing
    the release's revocations from the beginning: a statement whose signer the release has since revoked is skipped,
    and the keys it introduced with it. Revocation is for good: a revoked key is never trusted again."""

    def __init__(self, keys: Mapping[str, bytes], revoked: Iterable[str] = (), state: Path | None = None):
        self.keys, self.revoked, self.state = dict(keys), set(revoked), state
        self.statements: list[dict] = []

    @classmethod
    def load(cls, paths: list[str | Path], state: Path | None = None) -> "TrustStore":
        """Key files or folders (:func:`load_trusted_keys`), the ``revoked.json`` beside them, the stored changes."""
        store = cls(load_trusted_keys(paths), load_revoked(paths), state)
        for statement in read_state(state):
            try:
                verify_statement(statement, store)
                _apply(statement, store.keys, store.revoked)
            except UserError as exc:
                log.warning("stored trust statement skipped: %s", printable(exc))
                continue
            store.statements.append(statement)
        return store

    @property
    def trusted(self) -> dict[str, bytes]:
        """Raw public keys by key id that may sign now (revoked ones left out)."""
        return {k: v for k, v in self.keys.items() if k not in self.revoked}

    def key(self, signer: str, what: str) -> bytes:
        """The public key ``what`` claims to be signed by, or one line saying why it may not sign here."""
        if signer in self.revoked:
            raise UserError(f"{what} is signed by key {signer!r}, which is revoked")
        if not self.trusted:
            raise UserError("no trusted public keys configured: the device refuses every bundle until one is set")
        if signer not in self.keys:
            raise UserError(f"{what} is signed by key {signer!r}, which this device does not trust")
        return self.keys[signer]

    def receive(self, statement: dict) -> str:
        """A revocation or a new key: verified, stored (before it takes effect), applied; one line saying what changed."""
        verify_statement(statement, self)
        if statement["statement"] not in (REVOKE_KEYS, TRUST_KEY):
            raise UserError(f"a {statement['statement']} statement changes no keys: it travels with its flash")
        keys, revoked = dict(self.keys), set(self.revoked)
        change = _apply(statement, keys, revoked)
        if change is None:
            return "nothing to change: the statement is in force already"
        if len(self.statements) >= MAX_STATEMENTS:
            raise UserError(f"this device keeps at most {MAX_STATEMENTS} key changes: reinstall it with a release "
                            "that ships the current keys")
        if self.state is not None:
            _write_atomically(self.state, encode({"statements": [*self.statements, statement]}))
        self.keys, self.revoked = keys, revoked
        self.statements.append(statement)
        return change


def _apply(statement: dict, keys: dict[str, bytes], revoked: set[str]) -> str | None:
    """Apply a verified key change to ``keys`` and ``revoked``; what changed, None if nothing did."""
    signer = statement["key_id"]
    if statement["statement"] == REVOKE_KEYS:
        new = sorted(set(statement["key_ids"]) - revoked)
        revoked.update(new)
        return f"key {signer} revoked {', '.join(new)}" if new else None
    raw = base64.b64decode(statement["public_key"], validate=True)
    introduced = fingerprint(raw)
    if introduced in revoked:
        raise UserError(f"key {introduced} is revoked: a revoked key is never trusted again")
    if introduced in keys:
        return None
    keys[introduced] = raw
    return f"key {signer} introduced key {introduced}, trusted from now on"


def read_state(path: Path | None) -> list[dict]:
    """The key changes a device stored (``schemas/trust-state.json``); an unreadable file is a start-up error, not an
    empty list: forgetting a revocation silently would trust a revoked key again."""
    if path is None or not path.exists():
        return []
    try:
        return parse("trust-state", path.read_bytes(), MAX_STATE_BYTES)["statements"]
    except (OSError, PayloadError) as exc:
        raise UserError(f"trust state {path} is unreadable ({exc}): restore it, or delete it to forget the key "
                        "changes this device received") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, flushed to disk, so a power cut leaves the old or the new file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UserError(f"cannot store {path}: {exc.strerror}") from None


def device_trust(trusted_keys: list[str | Path], models_dir: str | Path) -> TrustStore:
    """A device's trust store: ``model.trusted_keys``, the revocations beside them and the changes stored in its models
    folder. The updater and ``edge check --config`` both use this one."""
    return TrustStore.load(trusted_keys, Path(models_dir) / STATE_FILE)


def verify_statement(statement: dict, trust: TrustStore) -> str:
    """Check a statement's form (``schemas/statement.json``) and its signature by a key ``trust`` accepts; return the
    signer's key id, or raise one line."""
    check("statement", statement)
    what = f"{statement['statement']} statement"
    _check_signature(trust.key(statement["key_id"], what), statement["signature"], statement_message(statement), what)
    return statement["key_id"]


def verify_bundle_files(folder: Path, trusted: Mapping[str, bytes] | TrustStore) -> str:
    """Check ``folder``'s signature against the trusted keys (a revoked key is refused); return the signer's key id or
    raise one line."""
    trust = trusted if isinstance(trusted, TrustStore) else TrustStore(trusted)
    if not trust.keys:
        raise UserError("no trusted public keys configured: the device refuses every bundle until one is set")
    try:
        signature = parse("signature", (folder / SIGNATURE_FILE).read_bytes(), MAX_SIGNATURE_BYTES)
        manifest, model = (folder / MANIFEST_FILE).read_bytes(), (folder / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"bundle is not signed ({Path(exc.filename).name} missing): sign it with `tools sign`") from None
    except (PayloadError, OSError) as exc:
        raise UserError(f"bundle {SIGNATURE_FILE} is unreadable: {exc}") from None
    _check_signature(trust.key(signature["key_id"], "bundle"), signature["signature"], signed_message(manifest, model),
                     "bundle")
    return signature["key_id"]
