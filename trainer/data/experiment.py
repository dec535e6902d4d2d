"""From a TrainConfig to prepared faces and folds: the part shared by ``fit`` and ``evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edge import CLASS_NAMES
from edge.model.detect import make_detector
from trainer.data.datasets import FaceDataset, load_dataset, prepare_images, training_copies_of
from trainer.data.protocols import DEFAULT_PROTOCOL, Fold, make_folds
from trainer.gpu.handoff import FacesArchive
from trainer.run.config import TrainConfig


@dataclass
class Experiment:
    dataset: FaceDataset
    faces: np.ndarray
    """uint8 (N, S, S) faces from the shared preprocessing."""
    labels: np.ndarray
    has_face: np.ndarray
    folds: list[Fold]
    notes: list[str]
    """What was dropped or changed, in words, for the log and the reports."""


def load_experiment(cfg: TrainConfig, log=print) -> Experiment:
    dataset = load_dataset(cfg.dataset, cfg.data, cfg.contempt)
    log(f"loaded {len(dataset)} {cfg.dataset} images from {dataset.source}")
    needs_detector = not dataset.cropped or cfg.prune_no_face
    detector = make_detector(cfg.detector) if needs_detector else None
    faces, has_face = prepare_images(dataset, cfg.preprocess, detector)
    notes = []
    if detector is not None and (~has_face).any():
        notes.append(f"{detector.name} found no face in {int((~has_face).sum())} of {len(has_face)} images"
                     + (" (kept whole)" if not dataset.cropped else ""))
    folds = make_folds(dataset, cfg.protocol or DEFAULT_PROTOCOL[cfg.dataset], cfg.folds, cfg.seed)
    if cfg.only_fold is not None:
        folds = [folds[cfg.only_fold]]
    if cfg.prune_no_face:
        folds = [replace(f, train=f.train[has_face[f.train]], val=f.val[has_face[f.val]], test=f.test[has_face[f.test]])
                 for f in folds]
        notes.append(f"pruned images with no detectable face: {int((~has_face).sum())} dropped")
    if cfg.dedup:
        deduped = []
        for fold in folds:
            copies = training_copies_of(faces, fold.train, np.concatenate([fold.val, fold.test]))
            deduped.append(replace(fold, train=np.setdiff1d(fold.train, copies)))
            if len(copies):
                notes.append(f"{fold.name}: dropped {len(copies)} training images identical to evaluation images")
        folds = deduped
    for note in notes:
        log(note)
    return Experiment(dataset, faces, dataset.labels, has_face, folds, notes)


def faces_archive(cfg: TrainConfig, log=print) -> FacesArchive:
    """The first fold's prepared training and validation faces, for teachers trained without TensorFlow
    (:mod:`trainer.gpu.teachers`): the same faces, in the same order, that ``fit`` trains on."""
    experiment = load_experiment(cfg, log)
    fold, faces, labels = experiment.folds[0], experiment.faces, experiment.labels
    return FacesArchive(faces[fold.train], labels[fold.train], faces[fold.val], labels[fold.val],
                        cfg.preprocess.to_dict(), list(CLASS_NAMES), cfg.dataset,
                        cfg.protocol or DEFAULT_PROTOCOL[cfg.dataset], fold.name, cfg.model.to_dict())
