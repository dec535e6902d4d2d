"""The device's models folder: installs verified bundles and owns the ``current`` pointer."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from edge.device.updates.order import check_forward
from edge.errors import UserError, printable
from edge.model.bundle import Bundle, load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.selfcheck import self_check
from edge.model.trust import TrustStore, verify_bundle_files
from edge.protocol.flash import BUNDLE_FILES, INCOMING, MANIFEST_FILE, MAX_BUNDLE_BYTES, MAX_MANIFEST_BYTES
from edge.protocol.payloads import PayloadError, loads
from edge.protocol.topics import NAME

log = logging.getLogger("edge.device.updates")
CURRENT, PARTIAL = "current", ".partial"


@dataclass
class OtaResult:
    """What the device reports for one transfer or incoming bundle (``payload`` goes on the ``ota`` topic)."""

    transfer: str
    status: str  # ready | incomplete | installed | refused
    model_id: str | None = None
    version: str | None = None
    reason: str | None = None
    missing: str | None = None
    """The chunks still needed as ranges, ``"3-17, 20"`` (:func:`edge.protocol.flash.format_ranges`)."""
    bundle: Bundle | None = field(default=None, repr=False)

    @property
    def installed(self) -> bool:
        return self.status == "installed"

    def payload(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "bundle"}


def fsync_path(path: Path) -> None:
    """Flush a file's or folder's entry to disk, so a rename or append survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class BundleStore:
    """Installs bundles into ``root`` only after every check passed; a failure of any kind changes nothing."""

    def __init__(self, root: str | Path, trusted: Mapping[str, bytes] | TrustStore, max_bytes: int = MAX_BUNDLE_BYTES,
                 classifier: Callable[[Bundle], EmotionClassifier] = EmotionClassifier, release: Path | None = None):
        """``trusted``: the device's :class:`TrustStore` (or plain keys by id); ``classifier``: how the device builds its
        classifier (model.backend), for the self-check; ``release``: the bundle the device runs while none is
        current, whose version is then the one an update must not go below."""
        self.root, self.max_bytes, self.classifier, self.release = Path(root), max_bytes, classifier, release
        self.trusted = trusted if isinstance(trusted, TrustStore) else TrustStore(trusted)
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"config model.dir {self.root} is not a folder")
        try:
            (self.root / PARTIAL).mkdir(parents=True, exist_ok=True)
            (self.root / INCOMING).mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot use models folder {self.root}: {exc.strerror}") from None
        for leftover in (self.root / PARTIAL).iterdir():  # transfers do not survive a restart: free the space
            _remove(leftover)

    def current(self) -> Path | None:
        """The folder ``current`` points at, or None before the first install."""
        link = self.root / CURRENT
        return link.resolve() if link.exists() else None

    def forget_current(self) -> None:
        """Drop the ``current`` pointer (the bundle it names failed re-verification): the device runs its release
        bundle again, and later updates are measured against that one."""
        (self.root / CURRENT).unlink(missing_ok=True)
        fsync_path(self.root)

    def running_version(self) -> str | None:
        """The version of the bundle the device runs (current, else the release bundle); None where unknown."""
        path = self.current() or self.release
        try:
            version = loads((path / MANIFEST_FILE).read_bytes(), MAX_MANIFEST_BYTES)["version"] if path else None
        except (OSError, PayloadError, KeyError, TypeError):
            return None
        return version if isinstance(version, str) else None

    def install(self, files: dict[str, bytes], name: str, transfer: str, permission: dict | None = None) -> OtaResult:
        """Verify ``files`` as a bundle and make it current; on any failure nothing changes. ``permission``: a signed
        allow-downgrade statement, needed only when the bundle is older than the running one."""
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
            fsync_path(stage)
            verify_bundle_files(stage, self.trusted)
            bundle = load_bundle(stage)
            check_forward(bundle.version, hashlib.sha256(files[MANIFEST_FILE]).hexdigest(), self.running_version(),
                          permission, self.trusted)
            self_check(bundle, self.classifier)
            return self._switch(stage, name, bundle, transfer)
        except UserError as exc:
            return OtaResult(transfer, "refused", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bundle from outside must never take the updater down
            log.debug("bundle %s failed unexpectedly", printable(transfer), exc_info=True)
            return OtaResult(transfer, "refused", reason=f"bundle is malformed ({type(exc).__name__}: {exc})"[:500])
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
            fsync_path(self.root)
            self._prune(keep={target, previous})
        return OtaResult(transfer, "installed", bundle.model_id, bundle.version,
                         bundle=dataclasses.replace(bundle, path=target))

    def _prune(self, keep: set) -> None:
        """Delete installed bundles other than the new and the previous one, so updates don't fill the card."""
        for path in self.root.glob("*@*"):
            if path.is_dir() and not path.is_symlink() and path not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def install_incoming(self) -> list[OtaResult]:
        """Install every bundle folder dropped into ``incoming/`` (oldest first), then remove it, whatever happened.

        Hidden names are skipped: ``tools flash --ssh/--to`` copies to ``.NAME.partial`` and renames
        when complete, so a half-copied bundle is never picked up."""
        results = []
        folders = [p for p in (self.root / INCOMING).iterdir() if not p.name.startswith(".")]
        for folder in sorted(folders, key=lambda p: p.lstat().st_mtime):
            transfer = f"{INCOMING}/{folder.name}"[:128]
            try:
                results.append(self.install(self._read_folder(folder), folder.name, transfer))
            except UserError as exc:
                results.append(OtaResult(transfer, "refused", reason=str(exc)))
            finally:
                _remove(folder)
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
