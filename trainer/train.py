"""``trainer fit``: train one model per fold, keep the best checkpoint, survive interruptions.

Run directory layout::

    RUN_DIR/config.yaml            the resolved configuration (what ``evaluate`` and ``export`` rebuild from)
    RUN_DIR/summary.json           accuracy over all folds
    RUN_DIR/<fold>/best.weights.h5 best epoch by validation accuracy
    RUN_DIR/<fold>/history.csv     per-epoch loss, accuracy, LR, seconds
    RUN_DIR/<fold>/backup/         Keras BackupAndRestore state (weights, optimizer, epoch) for --resume
    RUN_DIR/<fold>/report.json     test report of the best checkpoint; its presence marks the fold done
    RUN_DIR/<fold>/curves.png, confusion.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
import yaml

from edge.errors import UserError
from trainer.config import TrainConfig, config_from_dict
from trainer.experiment import Experiment, load_experiment
from trainer.model import build_model
from trainer.pipeline import eval_dataset, train_dataset
from trainer.protocols import DEFAULT_PROTOCOL, Fold
from trainer.reports import (classification_report, format_report, plot_confusion, plot_curves, read_history,
                             write_json)


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


def compile_model(cfg: TrainConfig) -> keras.Model:
    model = build_model(cfg.model)
    model.compile(optimizer=make_optimizer(cfg),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"])
    return model


def predict(model: keras.Model, faces: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Softmax probabilities, averaged with the mirrored image when ``tta_flip`` is on."""
    probs = tf.nn.softmax(model.predict(eval_dataset(faces, cfg.preprocess), verbose=0)).numpy()
    if cfg.tta_flip:
        mirrored = tf.nn.softmax(model.predict(eval_dataset(faces[:, :, ::-1].copy(), cfg.preprocess), verbose=0)).numpy()
        probs = (probs + mirrored) / 2
    return probs


def fit(cfg: TrainConfig, out: Path, resume: bool = False, log=print) -> dict:
    """Train every fold of the configured protocol into ``out``; return the summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"run directory {out} already has a run: pass --resume to continue it or choose another --out")
    if resume and (out / "config.yaml").exists():
        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()))
        if saved.to_dict() != cfg.to_dict():
            raise UserError(f"{out}/config.yaml differs from this command's configuration: resume with the same options")
    if cfg.init:
        init_weights_path(Path(cfg.init))  # refuse a bad --init before the dataset loads
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    keras.utils.set_random_seed(cfg.seed)
    experiment = load_experiment(cfg, log)
    reports = []
    for fold in experiment.folds:
        fold_dir = out / fold.name
        if (fold_dir / "report.json").exists():
            log(f"{fold.name}: already trained, skipping")
        else:
            train_fold(cfg, experiment, fold, fold_dir, log)
        reports.append(evaluate_fold(cfg, experiment, fold, fold_dir))
    return summarize(cfg, experiment, reports, out, log)


def train_fold(cfg: TrainConfig, experiment: Experiment, fold: Fold, fold_dir: Path, log=print) -> None:
    fold_dir.mkdir(parents=True, exist_ok=True)
    faces, labels = experiment.faces, experiment.labels
    log(f"{fold.name}: {len(fold.train)} training, {len(fold.val)} validation, {len(fold.test)} test images ({fold.test_split})")
    if len(fold.train) < cfg.batch_size:
        raise UserError(f"{fold.name} has {len(fold.train)} training images, fewer than batch_size {cfg.batch_size}")
    train = train_dataset(faces[fold.train], labels[fold.train], cfg.preprocess, cfg.augment, cfg.batch_size,
                          cfg.model.num_classes, cfg.seed)
    val = eval_dataset(faces[fold.val], cfg.preprocess, labels[fold.val], cfg.model.num_classes)
    steps = len(fold.train) // cfg.batch_size
    with strategy().scope():
        model = compile_model(cfg)
    if cfg.init:
        warm_start(model, Path(cfg.init), log)
    history_path = fold_dir / "history.csv"
    best_so_far = max(read_history(history_path).get("val_accuracy", []), default=None) if history_path.exists() else None
    callbacks = [
        keras.callbacks.BackupAndRestore(str(fold_dir / "backup")),
        EpochSchedule(cfg, steps),
        keras.callbacks.ModelCheckpoint(str(fold_dir / "best.weights.h5"), monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True, initial_value_threshold=best_so_far),
        keras.callbacks.CSVLogger(str(history_path), append=True),
    ]
    class_weight = None
    if cfg.class_weight:
        counts = np.bincount(labels[fold.train], minlength=cfg.model.num_classes)
        class_weight = {i: float(len(fold.train) / (cfg.model.num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}
    model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=callbacks, class_weight=class_weight,
              verbose=1 if sys.stdout.isatty() else 2)


def init_weights_path(init: Path) -> Path:
    """The checkpoint a warm start loads: the file itself, or a run directory's first fold's best."""
    if init.is_file():
        return init
    fold = next((p for p in sorted(init.iterdir()) if (p / "best.weights.h5").exists()), None) if init.is_dir() else None
    if fold is None:
        raise UserError(f"init {init} is neither a .weights.h5 file nor a run directory with a trained fold")
    return fold / "best.weights.h5"


def warm_start(model: keras.Model, init: Path, log=print) -> None:
    path = init_weights_path(init)
    try:
        model.load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot warm-start from {path}: {str(exc).splitlines()[0]} "
                        "(it must come from a model of the same architecture)") from None
    log(f"warm start from {path}")


def load_trained(cfg: TrainConfig, fold_dir: Path) -> keras.Model:
    weights = fold_dir / "best.weights.h5"
    if not weights.exists():
        raise UserError(f"{weights} is missing: train this fold first (trainer fit ... --resume)")
    model = build_model(cfg.model)
    model.load_weights(str(weights))
    return model


def evaluate_fold(cfg: TrainConfig, experiment: Experiment, fold: Fold, fold_dir: Path) -> dict:
    """Score the fold's best checkpoint on its test images; write report.json and the plots."""
    model = load_trained(cfg, fold_dir)
    probs = predict(model, experiment.faces[fold.test], cfg)
    report = classification_report(experiment.labels[fold.test], probs.argmax(1))
    report.update(fold=fold.name, test_split=fold.test_split, tta_flip=cfg.tta_flip)
    write_json(fold_dir / "report.json", report)
    plot_confusion(report, fold_dir / "confusion.png", f"{cfg.dataset} {fold.name}")
    if (fold_dir / "history.csv").exists():
        plot_curves(read_history(fold_dir / "history.csv"), fold_dir / "curves.png", f"{cfg.dataset} {fold.name}")
    return report


def summarize(cfg: TrainConfig, experiment: Experiment, reports: list[dict], out: Path, log=print) -> dict:
    """Pool the folds' predictions into one report (what subject-independent accuracy means)."""
    confusion = np.sum([r["confusion"] for r in reports], axis=0)
    true = np.repeat(np.arange(len(confusion)), confusion.sum(1))
    pred = np.concatenate([np.repeat(np.arange(len(confusion)), row) for row in confusion])
    pooled = classification_report(true, pred)
    accuracies = [r["accuracy"] for r in reports]
    pooled.update(dataset=cfg.dataset, protocol=cfg.protocol or DEFAULT_PROTOCOL[cfg.dataset],
                  folds=len(reports), fold_accuracy_mean=float(np.mean(accuracies)),
                  fold_accuracy_std=float(np.std(accuracies)), notes=experiment.notes)
    write_json(out / "summary.json", pooled)
    plot_confusion(pooled, out / "confusion.png", f"{cfg.dataset}, {len(reports)} fold(s) pooled")
    log(format_report(pooled, f"{cfg.dataset}: {len(reports)} fold(s), test = {reports[0]['test_split'] if len(reports) == 1 else 'each fold'}"))
    if len(reports) > 1:
        log(f"per-fold accuracy {np.mean(accuracies):.4f} ± {np.std(accuracies):.4f}")
    return pooled
