"""The runtime's one entry point for model updates (it holds no MQTT client)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edge.device.updates.store import BundleStore
from edge.device.updates.transfer import OtaReceiver
from edge.model.bundle import Bundle
from edge.model.classifier import EmotionClassifier
from edge.model.trust import load_trusted_keys
from edge.protocol.flash import FLASH_COMMANDS, MAX_BUNDLE_BYTES


class Updater:
    """Wiring: at start and on the ``reload`` command call ``reload()``, then load
    ``bundle_path(configured)``; pass every validated flash message to ``command``; publish every
    payload these return on ``<prefix>/<device>/ota``. ``on_installed`` gets each bundle a flash
    installed: swap the classifier there (a reload loads ``bundle_path`` itself). ``classifier`` builds the
    device's classifier for a bundle, so the self-check runs the back-end the device will run."""

    def __init__(self, models_dir: str | Path, trusted_keys: list[str | Path], on_installed: Callable[[Bundle], None],
                 max_bytes: int = MAX_BUNDLE_BYTES, classifier: Callable[[Bundle], EmotionClassifier] = EmotionClassifier):
        self.store = BundleStore(models_dir, load_trusted_keys(trusted_keys), max_bytes, classifier)
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
