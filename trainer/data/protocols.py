"""Evaluation protocols: which images train, which select the checkpoint, which are scored.

- ``official`` (FER2013): train on Training, select on PublicTest. The test set is PrivateTest
  when the data has it, else PublicTest, and then the figures are validation figures.
- ``random``: the report's stratified random 80/10/10 split (CK+, JAFFE). Frames of one person
  land on both sides, so its accuracy is optimistic; it exists to compare with the report.
- ``subject-kfold``: folds grouped by subject (CK+ 10 folds, JAFFE leave-one-subject-out). Each
  fold's checkpoint is selected on the next fold's subjects, never on its own test subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import UserError
from trainer.data.datasets import FaceDataset

PROTOCOLS = ("official", "random", "subject-kfold")
DEFAULT_PROTOCOL = {"fer2013": "official", "ckplus": "subject-kfold", "jaffe": "subject-kfold"}
DEFAULT_FOLDS = {"ckplus": 10, "jaffe": 0}  # 0 = one fold per subject (leave-one-subject-out)


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_split: str
    """What the test indices are, in words (for reports)."""


def make_folds(dataset: FaceDataset, protocol: str, folds: int | None = None, seed: int = 0) -> list[Fold]:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "official":
        return [_official(dataset)]
    if protocol == "random":
        return [_random_split(dataset, seed)]
    return _subject_folds(dataset, DEFAULT_FOLDS.get(dataset.name, 10) if folds is None else folds, seed)


def _official(dataset: FaceDataset) -> Fold:
    if not dataset.usage.any():
        raise UserError(f"{dataset.name} has no official split; use --protocol random or subject-kfold")
    train = np.flatnonzero(dataset.usage == "Training")
    val = np.flatnonzero(dataset.usage == "PublicTest")
    private = np.flatnonzero(dataset.usage == "PrivateTest")
    test, split = (private, "PrivateTest") if len(private) else (val, "PublicTest (validation)")
    if not len(train) or not len(val):
        raise UserError(f"{dataset.source} lacks the Training or PublicTest split")
    return Fold("official", train, val, test, split)


def _random_split(dataset: FaceDataset, seed: int) -> Fold:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for label in np.unique(dataset.labels):
        index = rng.permutation(np.flatnonzero(dataset.labels == label))
        n_val = n_test = max(1, round(0.1 * len(index)))
        parts[0] += index[n_val + n_test:].tolist()
        parts[1] += index[:n_val].tolist()
        parts[2] += index[n_val:n_val + n_test].tolist()
    train, val, test = (np.sort(np.array(p, dtype=np.int64)) for p in parts)
    return Fold("random", train, val, test, "random 10 % (same subjects as training)")


def subject_groups(subjects: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Split subjects into ``k`` groups of near-equal image counts (``k`` = 0: one per subject)."""
    names, counts = np.unique(subjects, return_counts=True)
    if k == 0:
        k = len(names)
    if not 2 <= k <= len(names):
        raise UserError(f"cannot make {k} subject folds from {len(names)} subjects")
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, ties in seeded order
    groups: list[list[str]] = [[] for _ in range(k)]
    sizes = np.zeros(k)
    for i in order:
        smallest = int(np.argmin(sizes))
        groups[smallest].append(names[i])
        sizes[smallest] += counts[i]
    return [np.array(sorted(g)) for g in groups]


def _subject_folds(dataset: FaceDataset, k: int, seed: int) -> list[Fold]:
    if not all(dataset.subjects):
        raise UserError(f"{dataset.name} has no subject ids; subject-kfold needs them")
    groups = subject_groups(dataset.subjects, k, seed)
    members = [np.flatnonzero(np.isin(dataset.subjects, g)) for g in groups]
    folds = []
    for i, test in enumerate(members):
        val = members[(i + 1) % len(members)]
        train = np.sort(np.concatenate([m for j, m in enumerate(members) if j not in (i, (i + 1) % len(members))]))
        folds.append(Fold(f"fold-{i:02d}", train, val, test, f"subjects {', '.join(groups[i])}"))
    return folds
