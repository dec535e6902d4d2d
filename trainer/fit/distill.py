"""Knowledge distillation, all of it: the teachers checked, their targets computed once and cached, and the loss.

The training loop calls three things here: :func:`check_teachers` before the dataset loads, :func:`soft_targets`
for each fold's training images (None without teachers), and :func:`training_loss` when it compiles the model.

Why: the device runs one pass per face, so test-time averaging and ensembles cannot ship as they
are; a student trained on their averaged scores carries part of their accuracy into one pass.

The teachers (run folders or bundles, see :func:`trainer.evaluate.predict.open_scorer`) label the fold's
training images once, each averaged over its test-time views (``distill.tta``), then averaged over
the teachers. Each teacher's probabilities are cached in ``<fold>/teachers/<key>.npz``, the key a
hash of the teacher's weights (or TFLite bytes), its views and the images' bytes, so a resumed run
(or another student of the same teacher and data) reuses them, and a changed teacher or dataset
computes afresh. A teacher may also be a labels file made elsewhere (:mod:`trainer.gpu.handoff`, e.g.
cross-fitted GPU teachers from :mod:`trainer.gpu.teachers`): its probabilities are used as they
are, once its preprocessing, classes and images are checked to be this fold's. The targets are
the teacher's view of the un-augmented image; the pipeline mixes
them with the labels under mixup/CutMix (:func:`trainer.data.pipeline.train_dataset`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edge.errors import UserError
from trainer.evaluate.predict import open_scorer, target_config
from trainer.gpu.handoff import images_digest, is_labels_file, read_labels, soften
from trainer.run.config import TrainConfig
from trainer.run.folder import FoldDir


def check_teachers(cfg: TrainConfig) -> None:
    """Refuse a teacher that cannot be read, or class weights beside teachers, before the dataset loads."""
    for teacher in cfg.distill.teachers:
        try:
            if is_labels_file(Path(teacher)):
                read_labels(Path(teacher))
            else:
                target_config(Path(teacher))
        except UserError as exc:
            raise UserError(f"teacher {exc}") from None
    if cfg.distill.teachers and cfg.class_weight:
        raise UserError("class_weight cannot be combined with distill.teachers (the teacher's scores already weigh the classes)")


def soft_targets(cfg: TrainConfig, fold: FoldDir, faces: np.ndarray, labels: np.ndarray, log=print) -> np.ndarray | None:
    """The teachers' probabilities over a fold's training ``faces`` at temperature T, the pipeline's ``[labels |
    teacher]`` rows' second half (:func:`trainer.data.pipeline.train_dataset`); None without teachers."""
    if not cfg.distill.teachers:
        return None
    teacher = teacher_probabilities(cfg, fold, faces, log)
    agreement = float((teacher.argmax(1) == labels).mean())
    log(f"teachers agree with {agreement:.1%} of the training labels; distilling at T={cfg.distill.temperature}, "
        f"alpha={cfg.distill.alpha}")
    return soften(teacher, cfg.distill.temperature)


def training_loss(cfg: TrainConfig) -> tuple[keras.losses.Loss, list]:
    """The loss and metrics the loop compiles: :class:`DistillationLoss` with teachers, label-smoothed
    cross-entropy without."""
    classes = cfg.model.num_classes
    if cfg.distill.teachers:
        loss = DistillationLoss(classes, cfg.distill.temperature, cfg.distill.alpha, cfg.label_smoothing)
        return loss, [label_accuracy(classes)]
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing), ["accuracy"]


def teacher_probabilities(cfg: TrainConfig, fold: FoldDir, faces: np.ndarray, log=print) -> np.ndarray:
    """(N, classes) probabilities of the teachers' ensemble over ``faces`` (the fold's training images)."""
    images = images_digest(faces)
    probs = [labelled_teacher(Path(t), cfg, faces, images, log) if is_labels_file(Path(t))
             else cached_teacher(Path(t), cfg, fold, faces, images, log) for t in cfg.distill.teachers]
    return np.mean(probs, axis=0, dtype=np.float32)


def labelled_teacher(path: Path, cfg: TrainConfig, faces: np.ndarray, images: str, log=print) -> np.ndarray:
    """A teacher labels file's probabilities, after checking they label exactly these faces for this model."""
    labels = read_labels(path)
    labels.check(path, images, len(faces), cfg.preprocess.to_dict(), cfg.model.num_classes)
    log(f"teacher {path}: {labels.description}")
    return labels.probabilities


def cached_teacher(teacher: Path, cfg: TrainConfig, fold: FoldDir, faces: np.ndarray, images: str, log=print) -> np.ndarray:
    scorer = open_scorer(teacher, fold.name, cfg.distill.tta)
    if scorer.cfg.preprocess != cfg.preprocess or scorer.cfg.model.num_classes != cfg.model.num_classes:
        raise UserError(f"teacher {teacher} was trained with other preprocessing or classes than this run: "
                        "a teacher must see the faces as the student does")
    key = hashlib.sha256(f"{scorer.identity}\n{cfg.distill.tta}\n{images}".encode()).hexdigest()[:16]
    path = fold.teachers / f"{key}.npz"
    if path.exists():
        log(f"teacher {teacher}: cached targets {path}")
        return np.load(path)["probabilities"]
    log(f"teacher {teacher}: labelling {len(faces)} training images ({scorer.description})")
    probs = scorer.predict(faces).astype(np.float32)
    fold.teachers.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, probabilities=probs, teacher=str(teacher), identity=scorer.identity, tta=cfg.distill.tta)
    os.replace(partial, path)  # an interrupted write leaves no half cache behind
    return probs


class DistillationLoss(keras.losses.Loss):
    """``(1 - alpha) * CE(smoothed labels) + alpha * T^2 * KL(teacher_T || student_T)`` on ``[labels | teacher]`` rows.

    Rows of labels only (validation batches) get the cross-entropy alone, so ``val_loss`` stays
    comparable with runs that do not distill.
    """

    def __init__(self, classes: int, temperature: float, alpha: float, label_smoothing: float):
        super().__init__(name="distillation")
        self.classes, self.temperature, self.alpha, self.label_smoothing = classes, temperature, alpha, label_smoothing

    def call(self, y_true, logits):
        hard = keras.losses.categorical_crossentropy(y_true[:, :self.classes], logits, from_logits=True,
                                                     label_smoothing=self.label_smoothing)
        if y_true.shape[-1] == self.classes:
            return hard
        soft = y_true[:, self.classes:]
        student = tf.nn.log_softmax(logits / self.temperature)
        kl = tf.reduce_sum(soft * (tf.math.log(tf.maximum(soft, 1e-12)) - student), axis=-1)
        return (1.0 - self.alpha) * hard + self.alpha * self.temperature**2 * kl


def label_accuracy(classes: int) -> keras.metrics.Metric:
    """Accuracy against the labels part of ``[labels | teacher]`` rows, logged as ``accuracy`` like any run's."""
    def accuracy(y_true, y_pred):
        return keras.metrics.categorical_accuracy(y_true[:, :classes], y_pred)
    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")
