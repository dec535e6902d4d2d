"""The release model bundles, importable as ``edge.release`` (pyproject.toml maps that package onto this folder).

Bundles stay in the repository's top-level ``models/`` folder, where ``trainer export`` writes them;
being a package is what puts the release bundles into the wheel and lets an installed device find them
through its own ``__file__`` from any working directory. The ladder of variants a device chooses from
(``model.variant``, :mod:`edge.device.variants`) is named here, beside the folders it names.
"""

from __future__ import annotations

from pathlib import Path

from edge import DEFAULT_BUNDLE_NAME

FOLDER = Path(__file__).resolve().parent
VARIANTS = {"fast": "fer2013-resnet10-cbam-w32", "default": DEFAULT_BUNDLE_NAME, "accurate": "fer2013-ensemble"}
"""Variant name -> bundle folder, cheapest first. A variant is shipped when its folder is here (the accurate one
ships only while it beats the default on the validation set)."""
DEFAULT = "default"


def variant_path(name: str) -> Path:
    return FOLDER / VARIANTS[name]


def shipped_variants() -> list[str]:
    """The variants this install ships, cheapest first."""
    return [name for name in VARIANTS if (variant_path(name) / "manifest.json").is_file()]
