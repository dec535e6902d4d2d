"""The runtime's one entry point for model updates (it holds no MQTT client)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from edge.device.updates.store import BundleStore
from edge.device.updates.transfer import OtaReceiver
from edge.errors import UserError, printable
from edge.model.bundle import Bundle
from edge.model.classifier import EmotionClassifier
from edge.model.trust import device_trust, verify_bundle_files
from edge.protocol.flash import FLASH_COMMANDS, MAX_BUNDLE_BYTES

log = logging.getLogger("edge.device.updates")


class Updater:
    """Wiring: at start and on the ``reload`` command call ``reload()``, then load
    ``bundle_path(release)``; pass every validated flash message to ``command`` and every ``trust`` statement to
    ``trust``; publish every payload ``command`` and ``reload`` return on ``<prefix>/<device>/ota``. ``on_installed``
    gets each bundle a flash installed: swap the classifier there (a reload loads ``bundle_path`` itself).
    ``classifier`` builds the device's classifier for a bundle, so the self-check runs the back-end the device will
    run. ``release``: the bundle the device runs while no update is current (model.bundle, else the shipped one)."""

    def __init__(self, models_dir: str | Path, trusted_keys: list[str | Path], on_installed: Callable[[Bundle], None],
                 max_bytes: int = MAX_BUNDLE_BYTES, classifier: Callable[[Bundle], EmotionClassifier] = EmotionClassifier,
                 release: Path | None = None):
        self.store = BundleStore(models_dir, device_trust(trusted_keys, models_dir), max_bytes, classifier, release)
        self.receiver = OtaReceiver(self.store)
        self.on_installed = on_installed

    def bundle_path(self, release: str | Path) -> Path:
        """The bundle to run: the current one if an update was installed and its signature still verifies against
        today's trust store (keys revoked or rotated since it was installed count); else ``release``. A current
        bundle that fails is dropped, with one line saying why, so the device does not run what it no longer trusts."""
        return self._verified_current() or Path(release)

    def _verified_current(self) -> Path | None:
        current = self.store.current()
        if current is None:
            return None
        try:
            verify_bundle_files(current, self.store.trusted)
        except UserError as exc:
            log.error("installed bundle %s fails re-verification (%s): running the release bundle %s instead",
                      printable(current.name), printable(exc), self.store.release or "configured")
            self.store.forget_current()
            return None
        return current

    def command(self, message: dict) -> dict | None:
        if message.get("cmd") not in FLASH_COMMANDS:
            return None
        result = self.receiver.handle(message)
        if result is None:
            return None
        if result.installed:
            self.on_installed(result.bundle)
        return result.payload()

    def trust(self, statement: dict) -> str:
        """A signed revocation or new key (the ``trust`` command): one line saying what changed, or a UserError. A
        revocation applies to the running bundle at the next start or reload, where ``bundle_path`` re-verifies it."""
        return self.store.trusted.receive(statement)

    def reload(self) -> list[dict]:
        """Install what ``tools flash --ssh/--to`` dropped into ``incoming/``; the answers to publish. The current
        bundle is re-verified first, so a new one is measured against the version the device will really run."""
        self._verified_current()
        return [result.payload() for result in self.store.install_incoming()]
