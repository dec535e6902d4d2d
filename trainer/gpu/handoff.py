"""The files that carry training to a machine without TensorFlow and back (numpy only).

Why: a GPU machine lent for a few minutes carries PyTorch, not TensorFlow, and nothing can be
fetched there. The trainer therefore prepares the faces here, through the one preprocessing path
(:func:`trainer.data.experiment.load_experiment`), and writes them as a **faces archive**. There,
:mod:`trainer.gpu.teachers` writes a **teacher labels file** (probabilities for the same training
images, which ``trainer fit --teacher FILE.npz`` distils from like any other teacher,
:mod:`trainer.fit.distill`), and :mod:`trainer.gpu.student` a **student weights file** (the Keras
model's weights by layer name, which ``trainer import-weights`` turns into a run). The archive
and the labels name the training images by the sha256 of their bytes, so labels can only meet
the faces they were computed on.

The faces travel losslessly compressed (row differences, then LZMA: three quarters of raw
size), because a lent machine takes at most 64 MiB of files per call. They are dataset images:
keep them out of git (outside the repository, or in a folder ``.git/info/exclude`` names) and
never commit them.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError

FACES_FORMAT = "fer-edge faces archive 1"
LABELS_FORMAT = "fer-edge teacher labels 1"
WEIGHTS_FORMAT = "fer-edge student weights 1"


def images_digest(faces: np.ndarray) -> str:
    """sha256 of uint8 faces' bytes: how distillation names a fold's training images."""
    return hashlib.sha256(np.ascontiguousarray(faces).tobytes()).hexdigest()


@dataclass(frozen=True)
class FacesArchive:
    """A fold's prepared uint8 faces (training, then validation) with their labels."""

    train: np.ndarray
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    preprocess: dict
    """The :class:`edge.model.preprocess.PreprocessSpec` that made them, as a dict."""
    classes: list[str]
    dataset: str
    protocol: str
    fold: str
    model: dict
    """The run configuration's :class:`trainer.model.resnet.ModelConfig`, as a dict: what a GPU student trains."""

    @property
    def digest(self) -> str:
        return images_digest(self.train)

    @property
    def source(self) -> str:
        return f"{self.dataset} {self.protocol} fold {self.fold}"


def _encode(faces: np.ndarray) -> np.ndarray:
    deltas = np.diff(faces, axis=-1, prepend=np.uint8(0))  # uint8 arithmetic wraps: exact
    return np.frombuffer(lzma.compress(deltas.tobytes(), preset=9), dtype=np.uint8)


def _decode(blob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    deltas = np.frombuffer(lzma.decompress(blob.tobytes()), dtype=np.uint8).reshape(shape)
    return np.cumsum(deltas, axis=-1, dtype=np.uint8)


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)  # an interrupted write leaves no half file behind


def write_faces(path: Path, archive: FacesArchive) -> None:
    faces = np.concatenate([archive.train, archive.val])
    meta = {"format": FACES_FORMAT, "preprocess": archive.preprocess, "classes": archive.classes,
            "dataset": archive.dataset, "protocol": archive.protocol, "fold": archive.fold, "model": archive.model,
            "train": len(archive.train), "digest": archive.digest}
    _atomic_savez(Path(path), meta=np.array(json.dumps(meta)), faces=_encode(faces), shape=np.array(faces.shape),
                  labels=np.concatenate([archive.train_labels, archive.val_labels]).astype(np.int64))


KINDS = {FACES_FORMAT: "fer-edge faces archive (from `trainer faces`)",
         LABELS_FORMAT: "fer-edge teacher labels file (from `python -m trainer.gpu.teachers`)",
         WEIGHTS_FORMAT: "fer-edge student weights file (from `python -m trainer.gpu.student`)"}


def _load(path: Path, expected: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a {KINDS[expected]}: {exc}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != expected:
        raise UserError(f"{path} is not a {KINDS[expected]}" + (f" but a {KINDS[found]}" if found in KINDS else ""))
    return meta, data


def read_faces(path: Path) -> FacesArchive:
    meta, data = _load(path, FACES_FORMAT)
    try:
        faces = _decode(data["faces"], tuple(int(s) for s in data["shape"]))
        labels, n = data["labels"], int(meta["train"])
        archive = FacesArchive(faces[:n], labels[:n], faces[n:], labels[n:], meta["preprocess"], meta["classes"],
                               meta["dataset"], meta["protocol"], meta["fold"], meta["model"])
        recorded = meta["digest"]
    except (KeyError, ValueError, lzma.LZMAError) as exc:
        raise UserError(f"{path} lacks {exc} or it is damaged: write it again with `trainer faces`") from None
    if archive.digest != recorded:
        raise UserError(f"{path}: the training faces do not match their recorded digest (a damaged copy)")
    return archive


@dataclass(frozen=True)
class TeacherLabels:
    """Teachers' probabilities over a fold's training images, made elsewhere."""

    probabilities: np.ndarray
    """(N, classes) float32: what the student learns from."""
    digest: str
    """:func:`images_digest` of the training faces they label, in order."""
    preprocess: dict
    tta: str
    description: str
    details: dict
    """How the teachers were trained and scored (for reports)."""

    def check(self, path: Path, digest: str, images: int, preprocess: dict, classes: int) -> None:
        """Refuse labels of other faces, preprocessing or classes than the student's, in one line."""
        if self.preprocess != preprocess or self.probabilities.shape[1] != classes:
            raise UserError(f"teacher {path} labels faces of other preprocessing or classes than this run: "
                            "a teacher must see the faces as the student does")
        if self.digest != digest or len(self.probabilities) != images:
            raise UserError(f"teacher {path} labels other images than these {images} training faces "
                            "(write the faces with `trainer faces` and the same dataset options)")


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Teacher probabilities at temperature T: softmax(log p / T) (their ensemble's logits up to a constant).

    Here, not in :mod:`trainer.fit.distill`, because the GPU student (no TensorFlow) softens the same way."""
    logits = np.log(np.maximum(probs, 1e-12)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


def write_labels(path: Path, labels: TeacherLabels, **extra: np.ndarray) -> None:
    meta = {"format": LABELS_FORMAT, "digest": labels.digest, "preprocess": labels.preprocess, "tta": labels.tta,
            "description": labels.description, "details": labels.details}
    _atomic_savez(Path(path), meta=np.array(json.dumps(meta)), probabilities=labels.probabilities.astype(np.float32),
                  **extra)


def read_labels(path: Path) -> TeacherLabels:
    meta, data = _load(path, LABELS_FORMAT)
    try:
        probs = np.asarray(data["probabilities"], dtype=np.float32)
        fields = meta["digest"], meta["preprocess"], meta["tta"], meta["description"], meta["details"]
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path} lacks {exc} or it is damaged: a teacher labels file holds probabilities and their "
                        "images' digest") from None
    if probs.ndim != 2 or not np.isfinite(probs).all() or (probs < 0).any() \
            or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise UserError(f"{path}: probabilities must be an (images, classes) array of rows that sum to 1")
    return TeacherLabels(probs, *fields)


def is_labels_file(path: Path) -> bool:
    return Path(path).suffix == ".npz" and Path(path).is_file()


@dataclass(frozen=True)
class StudentWeights:
    """A network's weights by Keras layer name, each layer's list in ``get_weights()`` order, and what it is."""

    layers: dict[str, list[np.ndarray]]
    model: dict
    """Its :class:`trainer.model.resnet.ModelConfig`, as a dict."""
    preprocess: dict
    details: dict
    """How it was trained and scored (for reports)."""


def write_student(path: Path, weights: StudentWeights) -> None:
    meta = {"format": WEIGHTS_FORMAT, "model": weights.model, "preprocess": weights.preprocess,
            "details": weights.details, "layers": {name: len(arrays) for name, arrays in weights.layers.items()}}
    arrays = {f"{name}:{i}": a.astype(np.float32) for name, layer in weights.layers.items() for i, a in enumerate(layer)}
    _atomic_savez(Path(path), meta=np.array(json.dumps(meta)), **arrays)


def read_student(path: Path) -> StudentWeights:
    meta, data = _load(path, WEIGHTS_FORMAT)
    try:
        layers = {name: [np.asarray(data[f"{name}:{i}"], dtype=np.float32) for i in range(int(count))]
                  for name, count in meta["layers"].items()}
        weights = StudentWeights(layers, meta["model"], meta["preprocess"], meta["details"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{path} lacks {exc} or it is damaged: write it again with `python -m trainer.gpu.student`") from None
    if not all(isinstance(part, dict) for part in (weights.model, weights.preprocess, weights.details)):
        raise UserError(f"{path} is damaged: its model, preprocessing and details must be JSON objects")
    if not all(np.isfinite(a).all() for arrays in layers.values() for a in arrays):
        raise UserError(f"{path} holds weights that are not finite numbers")
    return weights
