"""Model updates on the device: receive a bundle, prove it good, then switch to it in one step.

No MQTT here (the runtime feeds :class:`Updater` the decoded ``cmd`` messages
and publishes what it returns) and no TensorFlow. Everything that can fail happens *before*
the switch, so on any failure the old bundle simply stays current:

1. size limit, transfer sha256, archive members (only the bundle's own file names, no paths);
2. Ed25519 signature by a trusted key (:mod:`edge.model.trust`);
3. :func:`edge.model.bundle.load_bundle` (checksums, manifest, tensors);
4. :func:`self_check`: the model runs on a built-in face and returns valid probabilities;
5. the staged folder is renamed into place and the ``current`` symlink replaced with one rename.

Layout of the device's models folder (``root``)::

    current -> NAME@HASH      the bundle the runtime uses
    NAME@HASH/                installed bundles; the previous one is kept, older ones pruned
    incoming/NAME/            bundles copied by ``tools flash --ssh/--to``, installed on start or reload
    .partial/                 transfers in progress and staging folders

Flash protocol (docs/ota.md): ``ota_begin`` / ``ota_chunk`` / ``ota_commit`` JSON messages on
the device's ``cmd`` topic, answered on its ``ota`` topic. The payload is an uncompressed tar of
the bundle's files. Chunks are written at their offset, so duplicates and any order are harmless;
a ``begin`` with the id of an unfinished transfer resumes it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import math
import os
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge.model.bundle import MANIFEST_FILE, OPTIONAL_FILES, REQUIRED_FILES, Bundle, load_bundle
from edge.model.classifier import EmotionClassifier
from edge.protocol.topics import NAME
from edge.errors import UserError
from edge.model.trust import load_trusted_keys, verify_bundle_files

MAX_BUNDLE_BYTES = 64 * 2**20
MAX_CHUNK_BYTES = 2**20
BUNDLE_FILES = REQUIRED_FILES | OPTIONAL_FILES
TRANSFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURRENT, INCOMING, PARTIAL = "current", "incoming", ".partial"
FLASH_COMMANDS = ("ota_begin", "ota_chunk", "ota_commit")


@dataclass
class OtaResult:
    """What the device reports for one transfer or incoming bundle (``payload`` goes on the ``ota`` topic)."""

    transfer: str
    status: str  # ready | incomplete | installed | refused
    model_id: str | None = None
    version: str | None = None
    reason: str | None = None
    missing: list[int] | None = None
    bundle: Bundle | None = field(default=None, repr=False)

    @property
    def installed(self) -> bool:
        return self.status == "installed"

    def payload(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "bundle"}


def self_check(bundle: Bundle) -> None:
    """Run the model on a built-in face (a bright oval on a dark ground) and insist on valid probabilities.

    The model need not be right about this face; it must load, run and produce one finite score
    per class that sum to 1 (within INT8 rounding), or a device would publish nonsense."""
    size = bundle.spec.input_size
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    face = np.where((xx / 0.35) ** 2 + (yy / 0.45) ** 2 <= 1, 170, 60).astype(np.uint8)
    try:
        probs = EmotionClassifier(bundle).predict(face[None])
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the model does not run ({exc})") from None
    n = len(bundle.classes)
    if probs.shape != (1, n) or not np.all(np.isfinite(probs)) or probs.min() < -0.01 or probs.max() > 1.01 \
            or abs(float(probs.sum()) - 1) > 0.05:
        raise UserError(f"self-check failed: the model's output {np.round(probs, 3).tolist()} is not "
                        f"{n} probabilities summing to 1")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleStore:
    """The device's models folder: installs verified bundles and owns the ``current`` pointer."""

    def __init__(self, root: str | Path, trusted: dict, max_bytes: int = MAX_BUNDLE_BYTES):
        self.root, self.trusted, self.max_bytes = Path(root), trusted, max_bytes
        (self.root / PARTIAL).mkdir(parents=True, exist_ok=True)
        (self.root / INCOMING).mkdir(exist_ok=True)

    def current(self) -> Path | None:
        """The folder ``current`` points at, or None before the first install."""
        link = self.root / CURRENT
        return link.resolve() if link.exists() else None

    def install(self, files: dict[str, bytes], name: str, transfer: str) -> OtaResult:
        """Verify ``files`` as a bundle and make it current; on any failure nothing changes."""
        stage = self.root / PARTIAL / f"stage-{uuid.uuid4().hex}"
        try:
            if not NAME.fullmatch(name):
                raise UserError(f"bundle name {name!r} is not allowed (letters, digits, '.', '_', '-'; no paths)")
            unexpected = set(files) - BUNDLE_FILES
            if unexpected:
                raise UserError(f"bundle holds unexpected files {sorted(unexpected)}")
            if sum(map(len, files.values())) > self.max_bytes:
                raise UserError(f"bundle is larger than this device's limit of {self.max_bytes} bytes")
            stage.mkdir()
            for file_name, data in files.items():
                with open(stage / file_name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(stage)
            verify_bundle_files(stage, self.trusted)
            bundle = load_bundle(stage)
            self_check(bundle)
            return self._switch(stage, name, bundle, transfer)
        except UserError as exc:
            return OtaResult(transfer, "refused", reason=str(exc))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _switch(self, stage: Path, name: str, bundle: Bundle, transfer: str) -> OtaResult:
        digest = hashlib.sha256((stage / MANIFEST_FILE).read_bytes()).hexdigest()[:12]  # the manifest holds the model's hash
        target, previous = self.root / f"{name}@{digest}", self.current()
        if target != previous:
            shutil.rmtree(target, ignore_errors=True)  # an identical bundle installed earlier and not current
            os.rename(stage, target)
            link = self.root / f".{CURRENT}.{uuid.uuid4().hex}"
            os.symlink(target.name, link)
            os.replace(link, self.root / CURRENT)
            _fsync_dir(self.root)
            self._prune(keep={target, previous})
        return OtaResult(transfer, "installed", bundle.model_id, bundle.version,
                         bundle=dataclasses.replace(bundle, path=target))

    def _prune(self, keep: set) -> None:
        """Delete installed bundles other than the new and the previous one, so updates don't fill the card."""
        for path in self.root.glob("*@*"):
            if path.is_dir() and not path.is_symlink() and path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def install_incoming(self) -> list[OtaResult]:
        """Install every bundle folder dropped into ``incoming/`` (oldest first), then remove it.

        Hidden names are skipped: ``tools flash --ssh/--to`` copies to ``.NAME.partial`` and renames
        when complete, so a half-copied bundle is never picked up."""
        results = []
        folders = [p for p in (self.root / INCOMING).iterdir() if not p.name.startswith(".")]
        for folder in sorted(folders, key=lambda p: p.stat().st_mtime):
            transfer = f"{INCOMING}/{folder.name}"
            try:
                files = self._read_folder(folder)
            except UserError as exc:
                results.append(OtaResult(transfer, "refused", reason=str(exc)))
            else:
                results.append(self.install(files, folder.name, transfer))
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink()
        return results

    def _read_folder(self, folder: Path) -> dict[str, bytes]:
        if not folder.is_dir() or folder.is_symlink():
            raise UserError(f"{folder.name} is not a bundle folder")
        files, total = {}, 0
        for path in folder.iterdir():
            if path.is_symlink() or not path.is_file():
                raise UserError(f"{folder.name}/{path.name} is not a regular file")
            total += path.stat().st_size
            if total > self.max_bytes:
                raise UserError(f"bundle is larger than this device's limit of {self.max_bytes} bytes")
            files[path.name] = path.read_bytes()
        return files


@dataclass
class _Transfer:
    id: str
    name: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    path: Path
    received: set[int] = field(default_factory=set)

    def missing(self) -> list[int]:
        return sorted(set(range(self.chunks)) - self.received)


def _field(message: dict, key: str, kind: type):
    value = message.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"flash message field {key!r} is missing or not a {kind.__name__}")
    return value


class OtaReceiver:
    """Turns flash-protocol messages into installs; keeps at most one transfer in progress."""

    def __init__(self, store: BundleStore):
        self.store = store
        self.transfer: _Transfer | None = None

    def handle(self, message: dict) -> OtaResult | None:
        """Process one ``ota_*`` message; return the answer to publish (None for chunks)."""
        transfer = str(message.get("transfer"))[:64]
        handlers = dict(zip(FLASH_COMMANDS, (self._begin, self._chunk, self._commit)))
        try:
            if message.get("cmd") not in handlers:
                raise UserError(f"unknown flash message {message.get('cmd')!r}; expected one of {sorted(handlers)}")
            return handlers[message["cmd"]](message)
        except UserError as exc:
            self._drop()
            return OtaResult(transfer, "refused", reason=str(exc))

    def _begin(self, message: dict) -> OtaResult:
        transfer, name = _field(message, "transfer", str), _field(message, "name", str)
        size, sha, chunk_size, chunks = (_field(message, "size", int), _field(message, "sha256", str),
                                         _field(message, "chunk_size", int), _field(message, "chunks", int))
        if not TRANSFER_ID.fullmatch(transfer):
            raise UserError("transfer id must be 1-64 letters, digits, '_' or '-'")
        if not NAME.fullmatch(name):
            raise UserError(f"bundle name {name!r} is not allowed (letters, digits, '.', '_', '-'; no paths)")
        if not 0 < size <= self.store.max_bytes:
            raise UserError(f"bundle of {size} bytes refused: this device accepts up to {self.store.max_bytes}")
        if not 0 < chunk_size <= MAX_CHUNK_BYTES or chunks != math.ceil(size / chunk_size):
            raise UserError(f"chunking {chunks} x {chunk_size} bytes does not fit {size} bytes")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise UserError("sha256 must be 64 lowercase hex digits")
        path = self.store.root / PARTIAL / f"{transfer}.part"
        fresh = _Transfer(transfer, name, size, sha, chunk_size, chunks, path)
        if self.transfer is None or dataclasses.replace(self.transfer, received=set()) != fresh:
            self._drop()
            path.unlink(missing_ok=True)
            self.transfer = fresh
        return OtaResult(transfer, "ready", missing=self.transfer.missing())

    def _chunk(self, message: dict) -> None:
        t = self.transfer
        if t is None or message.get("transfer") != t.id:
            return None  # a leftover of a finished or replaced transfer
        index = _field(message, "index", int)
        try:
            data = base64.b64decode(_field(message, "data", str), validate=True)
        except binascii.Error:
            raise UserError(f"chunk {index} is not valid base64") from None
        expected = t.chunk_size if index < t.chunks - 1 else t.size - t.chunk_size * (t.chunks - 1)
        if not 0 <= index < t.chunks or len(data) != expected:
            raise UserError(f"chunk {index} ({len(data)} bytes) does not fit a transfer of {t.chunks} chunks, {t.size} bytes")
        fd = os.open(t.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, index * t.chunk_size)
        finally:
            os.close(fd)
        t.received.add(index)
        return None

    def _commit(self, message: dict) -> OtaResult:
        t = self.transfer
        if t is None or message.get("transfer") != t.id:
            raise UserError(f"no transfer {message.get('transfer')!r} in progress (device restarted?): flash again")
        if t.missing():
            return OtaResult(t.id, "incomplete", missing=t.missing())
        data = t.path.read_bytes()
        self._drop()
        if len(data) != t.size or hashlib.sha256(data).hexdigest() != t.sha256:
            raise UserError("transfer does not match its sha256 (corrupt or tampered in transit)")
        return self.store.install(unpack(data), t.name, t.id)

    def _drop(self) -> None:
        if self.transfer is not None:
            self.transfer.path.unlink(missing_ok=True)
            self.transfer = None


class Updater:
    """The edge runtime's one entry point for model updates (it holds no MQTT client).

    Wiring: at start and on the ``reload`` command call ``reload()``, then load
    ``bundle_path(configured)``; pass every decoded ``cmd`` message whose ``cmd`` is in
    :data:`FLASH_COMMANDS` to ``command``; publish every payload these return on
    ``<prefix>/<device>/ota`` (QoS 1, not retained). ``on_installed`` gets each bundle a flash
    installed: swap the classifier there (a reload loads ``bundle_path`` itself)."""

    def __init__(self, models_dir: str | Path, trusted_keys: list[str | Path], on_installed: Callable[[Bundle], None],
                 max_bytes: int = MAX_BUNDLE_BYTES):
        self.store = BundleStore(models_dir, load_trusted_keys(trusted_keys), max_bytes)
        self.receiver = OtaReceiver(self.store)
        self.on_installed = on_installed

    def bundle_path(self, configured: str | Path) -> Path:
        """The bundle to run: the current one once anything was installed, else the configured one."""
        return self.store.current() or Path(configured)

    def command(self, message: dict) -> dict | None:
        if message.get("cmd") not in FLASH_COMMANDS:
            return None
        result = self.receiver.handle(message)
        if result is None:
            return None
        if result.installed:
            self.on_installed(result.bundle)
        return result.payload()

    def reload(self) -> list[dict]:
        """Install what ``tools flash --ssh/--to`` dropped into ``incoming/``; the answers to publish."""
        return [result.payload() for result in self.store.install_incoming()]


def pack(folder: Path) -> bytes:
    """A bundle folder as the flash payload: an uncompressed tar with fixed metadata (same bytes every time)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(p for p in folder.iterdir() if p.name in BUNDLE_FILES):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack(data: bytes) -> dict[str, bytes]:
    """The flash payload's files by name; anything but a plain bundle file name is refused, nothing touches the disk."""
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile() or member.name not in BUNDLE_FILES or member.name in files:
                    raise UserError(f"bundle archive member {member.name!r} is not allowed "
                                    f"(only {', '.join(sorted(BUNDLE_FILES))})")
                files[member.name] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise UserError(f"bundle archive is unreadable: {exc}") from None
    return files
