"""Model updates on the device: receive a bundle, prove it good, then switch to it in one step.

No MQTT here and no TensorFlow. Everything that can fail happens *before* the switch, so on any
failure the old bundle simply stays current:

1. every claimed size bounded before anything is sized by it, transfer sha256, archive members (only the bundle's
   own file names, no paths) — :mod:`.transfer` reassembles flash chunks;
2. Ed25519 signature by a trusted key that is not revoked (:mod:`edge.model.trust`, its :class:`TrustStore`);
3. :func:`edge.model.bundle.load_bundle` (checksums, manifest schema, tensors);
4. not older than the running bundle, unless a signed allow-downgrade statement names it (:mod:`.order`);
5. :func:`edge.model.selfcheck.self_check`: the device's answers on fixed inputs match the reference kernels and
   the golden outputs in the signed manifest;
6. the staged folder is renamed into place and the ``current`` symlink replaced with one rename
   — :mod:`.store` owns the models folder; :mod:`.updater` is the runtime's one entry point, and verifies
   ``current`` again at every start (a bundle that no longer verifies is dropped for the release bundle).

Layout of the device's models folder::

    current -> NAME@HASH      the bundle the runtime uses
    NAME@HASH/                installed bundles; the previous one is kept, older ones pruned
    incoming/NAME/            bundles copied by ``tools flash --ssh/--to``, installed on start or reload
    .partial/                 transfers in progress and staging folders (emptied at every start)
    trust.json                the revocations and new keys this device received, replayed at every start
"""

from edge.device.updates.store import BundleStore, OtaResult
from edge.device.updates.transfer import OtaReceiver
from edge.device.updates.updater import Updater

__all__ = ["BundleStore", "OtaReceiver", "OtaResult", "Updater"]
