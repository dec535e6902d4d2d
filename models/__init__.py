"""The release model bundles, importable as ``edge.release`` (pyproject.toml maps that package onto this folder).

Bundles stay in the repository's top-level ``models/`` folder, where ``trainer export`` writes them;
being a package is what puts the release bundle into the wheel and lets an installed device find it
through its own ``__file__`` (:data:`edge.device.config.SHIPPED_BUNDLE`) from any working directory.
"""
