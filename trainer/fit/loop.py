"""``trainer fit``: train one model per fold, keep the best checkpoint, survive interruptions.

Read top to bottom: :func:`fit` checks the options, loads the data (:mod:`trainer.data.experiment`), then for each
fold :func:`train_fold` builds the model, warm-starts it (:mod:`trainer.fit.warm_start`), gets the teachers' targets
(:mod:`trainer.fit.distill`) and trains through the callbacks (weight averaging, :mod:`trainer.fit.averaging`);
each fold is then scored and the folds pooled (:mod:`trainer.evaluate.scoring`). The run folder's layout is
:mod:`trainer.run.folder`'s. Options that change what is trained: ``ema``, ``distill.teachers``, ``model.crop``
(:class:`trainer.model.resnet.ModelConfig`), ``augment.*`` (:mod:`trainer.data.augment`) and ``init``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edge.errors import UserError
from trainer.data.experiment import Experiment, load_experiment
from trainer.data.pipeline import eval_dataset, train_dataset
from trainer.data.protocols import Fold
from trainer.evaluate.reports import read_history
from trainer.evaluate.scoring import evaluate_fold, summarize
from trainer.fit.averaging import WeightAverage
from trainer.fit.distill import check_teachers, soft_targets, training_loss
from trainer.fit.warm_start import check_init, warm_start
from trainer.model.resnet import build_model
from trainer.run.config import TrainConfig
from trainer.run.folder import FoldDir, RunDir


def fit(cfg: TrainConfig, out: Path, resume: bool = False, log=print) -> dict:
    """Train every fold of the configured protocol into ``out``; return the summary."""
    run = RunDir(out)
    if run.started and not resume:
        raise UserError(f"run directory {out} already has a run: pass --resume to continue it or choose another --out")
    if resume and run.started and run.is_run and run.load_config().to_dict() != cfg.to_dict():
        raise UserError(f"{run.config} differs from this command's configuration: resume with the same options")
    check_options(cfg)
    run.write_config(cfg)
    keras.utils.set_random_seed(cfg.seed)
    experiment = load_experiment(cfg, log)
    reports = []
    left = sum(not run.fold(fold.name).done for fold in experiment.folds)
    for fold in experiment.folds:
        fold_dir = run.fold(fold.name)
        if fold_dir.done:
            log(f"{fold.name}: already trained, skipping")
        else:
            train_fold(cfg, experiment, fold, fold_dir, log, left)
            left -= 1
        reports.append(evaluate_fold(cfg, experiment, fold, fold_dir))
    return summarize(cfg, experiment, reports, run, log)


def check_options(cfg: TrainConfig) -> None:
    """Refuse what cannot work before the dataset loads (minutes on FER2013)."""
    check_init(cfg)
    check_teachers(cfg)


def train_fold(cfg: TrainConfig, experiment: Experiment, fold: Fold, fold_dir: FoldDir, log=print,
               folds_left: int = 1) -> None:
    fold_dir.path.mkdir(parents=True, exist_ok=True)
    faces, labels = experiment.faces, experiment.labels
    log(f"{fold.name}: {len(fold.train)} training, {len(fold.val)} validation, {len(fold.test)} test images ({fold.test_split})")
    if len(fold.train) < cfg.batch_size:
        raise UserError(f"{fold.name} has {len(fold.train)} training images, fewer than batch_size {cfg.batch_size}")
    soft = soft_targets(cfg, fold_dir, faces[fold.train], labels[fold.train], log)
    train = train_dataset(faces[fold.train], labels[fold.train], cfg.preprocess, cfg.augment, cfg.batch_size,
                          cfg.model.num_classes, cfg.seed, cfg.model.crop_jitter, soft)
    val = eval_dataset(faces[fold.val], cfg.preprocess, labels[fold.val], cfg.model.num_classes)
    steps = len(fold.train) // cfg.batch_size
    with strategy().scope():
        model = compile_model(cfg)
    warm_start(model, cfg, log)
    estimate = TimeEstimate(fold.name, steps, cfg.epochs, folds_left, log)
    model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=[estimate, *callbacks(cfg, fold_dir, steps, val)],
              class_weight=class_weights(cfg, labels[fold.train]), verbose=1 if sys.stdout.isatty() else 2)


def compile_model(cfg: TrainConfig) -> keras.Model:
    model = build_model(cfg.model)
    loss, metrics = training_loss(cfg)
    model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=metrics)
    return model


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    lr = cfg.schedule.lr_at(0, cfg.epochs)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")


def strategy() -> tf.distribute.Strategy:
    """Mirror across GPUs where there are several; the default strategy otherwise."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def callbacks(cfg: TrainConfig, fold: FoldDir, steps: int, val: tf.data.Dataset) -> list[keras.callbacks.Callback]:
    """Backup for --resume, weight averaging, the LR schedule, best and last checkpoints, history (in that order:
    each one's ``on_epoch_end`` sees what the ones before it logged)."""
    monitor = "val_ema_accuracy" if cfg.ema else "val_accuracy"
    history = read_history(fold.history) if fold.history.exists() else {}
    best_so_far = max(history.get(monitor, []), default=None)
    chosen = [keras.callbacks.BackupAndRestore(str(fold.backup))]
    if cfg.ema:
        chosen.append(WeightAverage(cfg.ema, steps, val, fold, best_so_far))
    chosen.append(EpochSchedule(cfg, steps))
    if not cfg.ema:
        chosen.append(keras.callbacks.ModelCheckpoint(str(fold.best), monitor=monitor, mode="max", save_best_only=True,
                                                      save_weights_only=True, initial_value_threshold=best_so_far))
    chosen.append(keras.callbacks.ModelCheckpoint(str(fold.last), save_weights_only=True))
    chosen.append(keras.callbacks.CSVLogger(str(fold.history), append=True))
    return chosen


class TimeEstimate(keras.callbacks.Callback):
    """Says, a few batches into a fold, how long an epoch, the fold and the folds left will take: a CPU may need an
    hour where a GPU needs minutes, and the user should know before waiting (validation and checkpoints come on top)."""

    SKIP, MEASURE = 2, 10
    """Batches left out (the first ones trace the graph), then batches timed."""

    def __init__(self, fold: str, steps: int, epochs: int, folds_left: int, log=print):
        super().__init__()
        self.fold, self.steps, self.epochs, self.folds_left, self.log = fold, steps, epochs, folds_left, log
        self.started: float | None = None
        self.said = False

    def on_train_batch_end(self, batch, logs=None):
        if self.said:
            return
        if batch + 1 == min(self.SKIP, self.steps - 1):
            self.started = time.perf_counter()
        elif self.started is not None and (batch + 1 == self.SKIP + self.MEASURE or batch + 1 == self.steps):
            per_epoch = (time.perf_counter() - self.started) / (batch + 1 - min(self.SKIP, self.steps - 1)) * self.steps
            total = f"; about {duration(per_epoch * self.epochs * self.folds_left)} for the {self.folds_left} folds left" \
                if self.folds_left > 1 else ""
            self.log(f"{self.fold}: about {duration(per_epoch)} per epoch of {self.steps} batches, "
                     f"{duration(per_epoch * self.epochs)} for {self.epochs} epochs{total}")
            self.said = True


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class EpochSchedule(keras.callbacks.Callback):
    """Sets the LR every batch from the config's epoch-based schedule (fractional epochs)."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        super().__init__()
        self.cfg, self.steps, self.epoch = cfg, steps_per_epoch, 0
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.started = epoch, time.time()

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.cfg.schedule.lr_at(self.epoch + batch / self.steps, self.cfg.epochs)
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())
            logs["seconds"] = time.time() - self.started


def class_weights(cfg: TrainConfig, labels: np.ndarray) -> dict[int, float] | None:
    if not cfg.class_weight:
        return None
    counts = np.bincount(labels, minlength=cfg.model.num_classes)
    return {i: float(len(labels) / (cfg.model.num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}
