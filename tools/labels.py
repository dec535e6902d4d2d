"""Device labels: named sets of devices the operator keeps in a file, for ``--device label:NAME``.

Why on the operator's side, as Mender's device tags, balena's tags and AWS IoT's thing groups live in the
server's registry and not on the device: a label decides who gets a canary wave or a revocation, so a device must
not be able to put itself into one by announcing it. The file (``--labels FILE``) is YAML::

    labels:
      canary: [pi-07]
      lobby: [lobby-1, lobby-2, 'kitchen/*']

Each entry is what ``--device`` takes, a device id or a glob over ``[group/]id``; labels do not nest. A command may
mix labels, ids and globs; a device named twice is reached once.
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import UserError
from edge.protocol.topics import NAME, Target
from edge.validate import read_file

PREFIX = "label:"
MAX_ENTRIES = 10_000
"""Entries in one labels file at most: a fleet inventory, not a database."""


def load_labels(path: Path) -> dict[str, list[Target]]:
    """The file's labels, each checked: label names as device names, entries as ``--device`` values."""
    data = read_file(Path(path))
    labels = data.get("labels")
    if set(data) != {"labels"} or not isinstance(labels, dict):
        raise UserError(f"labels file {path} must hold one key, labels: a mapping of label -> list of devices")
    out, entries = {}, 0
    for name, devices in labels.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise UserError(f"labels file {path}: label {name!r} is not allowed (letters, digits, '.', '_', '-')")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
            raise UserError(f"labels file {path}: label {name} must list device ids or globs, e.g. [pi-01, 'kitchen/*']")
        if any(d.startswith(PREFIX) for d in devices):
            raise UserError(f"labels file {path}: label {name} names another label; labels do not nest")
        entries += len(devices)
        if entries > MAX_ENTRIES:
            raise UserError(f"labels file {path} lists more than {MAX_ENTRIES} devices")
        out[name] = [Target.parse(d) for d in devices]
    return out


def device_targets(devices: list[str], labels_file: Path | None = None) -> list[Target]:
    """``--device`` values as targets, each ``label:NAME`` replaced by the label's devices; duplicates dropped."""
    labels = load_labels(labels_file) if labels_file is not None else None
    targets: dict[str, Target] = {}
    for value in devices:
        if not value.startswith(PREFIX):
            target = Target.parse(value)
            targets.setdefault(target.text, target)
            continue
        name = value[len(PREFIX):]
        if labels is None:
            raise UserError(f"--device {value} needs --labels FILE (the file that says which devices carry it)")
        if name not in labels:
            known = ", ".join(sorted(labels)) or "none"
            raise UserError(f"--device {value}: no label {name!r} in {labels_file} (labels there: {known})")
        for target in labels[name]:
            targets.setdefault(target.text, target)
    return list(targets.values())
