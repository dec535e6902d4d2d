"""Updates only go forward: a device refuses a bundle older than the one it runs, unless a trusted key allows it.

Replaying an old bundle, once signed and since found wanting, is the one attack a signature alone does not stop. A
bundle's place in the release order is its manifest's ``version`` in the release form ``trainer export`` writes (a
date ``2026.11.24``, a release ``2026.11.26.5``), compared component by component as numbers (``2026.11.26.10`` is
after ``2026.11.26.9``; trailing zeros do not count). ``created`` is not used: re-exporting an old run gives it a new
date. A version outside that form (``test``, ``v2``) has no place in the order, so it is neither older nor newer than
any other: release keys sign release versions only (docs/ota.md). A rollback needs an ``allow-downgrade`` statement
(:mod:`edge.model.trust`) that names the target bundle's manifest sha256 and version, signed by a trusted key.
"""

from __future__ import annotations

import logging
import re

from edge.errors import UserError, printable
from edge.model.trust import ALLOW_DOWNGRADE, TrustStore, verify_statement

log = logging.getLogger("edge.device.updates")
RELEASE_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,7}")
"""A release version: one to eight dot-separated numbers."""


def release_order(version: str) -> tuple[int, ...] | None:
    """A version's place in the release order (trailing zeros dropped: ``1.2`` is ``1.2.0``), None outside it."""
    if not RELEASE_VERSION.fullmatch(version):
        return None
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def is_older(version: str, running: str) -> bool:
    """True when both are release versions and ``version`` comes before ``running``."""
    new, old = release_order(version), release_order(running)
    return new is not None and old is not None and new < old


def check_forward(version: str, manifest_sha256: str, running: str | None, permission: dict | None,
                  trust: TrustStore) -> None:
    """Refuse, in one line, a bundle older than the running one unless ``permission`` (an allow-downgrade statement
    signed by a key ``trust`` accepts) names exactly this bundle. A permission that is not needed is ignored."""
    if running is None or not is_older(version, running):
        return
    if permission is None:
        raise UserError(f"bundle version {version} is older than the running {running}: updates only go forward "
                        "(a rollback needs an allow-downgrade statement signed by a trusted key)")
    signer = verify_statement(permission, trust)
    if permission["statement"] != ALLOW_DOWNGRADE:
        raise UserError(f"a {permission['statement']} statement does not allow a downgrade")
    if (permission["manifest_sha256"], permission["version"]) != (manifest_sha256, version):
        raise UserError(f"the allow-downgrade statement names bundle {permission['version']!r} with manifest "
                        f"{permission['manifest_sha256'][:12]}, not this one ({version}, {manifest_sha256[:12]})")
    log.warning("downgrade from %s to %s allowed by key %s", printable(running), printable(version), signer)
