"""``trainer fit``: train one model per fold, keep the best checkpoint, survive interruptions.

The run folder's layout is :mod:`trainer.run`'s. Options that change what is trained: ``ema``
(:mod:`trainer.averaging`), ``distill.teachers`` (:mod:`trainer.distill`), ``model.crop``
(:class:`trainer.model.ModelConfig`), ``augment.*`` (:mod:`trainer.pipeline`) and ``init`` (warm start).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from edge.errors import UserError
from trainer.averaging import WeightAverage
from trainer.config import TrainConfig
from trainer.distill import DistillationLoss, label_accuracy, teacher_probabilities
from trainer.evaluate import scored_report
from trainer.experiment import Experiment, load_experiment
from trainer.handoff import is_labels_file, read_labels, read_student, soften
from trainer.model import build_model
from trainer.pipeline import eval_dataset, train_dataset
from trainer.predict import keras_predictor, load_trained, target_config
from trainer.protocols import DEFAULT_PROTOCOL, Fold
from trainer.reports import classification_report, format_report, plot_confusion, plot_curves, read_history, write_json
from trainer.run import FoldDir, RunDir, fit_config, init_weights_path, recorded_config
from trainer.tta import describe_tta
from trainer.widen import widen


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
    classes = cfg.model.num_classes
    if cfg.distill.teachers:
        loss = DistillationLoss(classes, cfg.distill.temperature, cfg.distill.alpha, cfg.label_smoothing)
        metrics = [label_accuracy(classes)]
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing)
        metrics = ["accuracy"]
    model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=metrics)
    return model


def fit(cfg: TrainConfig, out: Path, resume: bool = False, log=print) -> dict:
    """Train every fold of the configured protocol into ``out``; return the summary."""
    run = RunDir(out)
    if run.has_run and not resume:
        raise UserError(f"run directory {out} already has a run: pass --resume to continue it or choose another --out")
    if resume and run.is_run and run.load_config().to_dict() != cfg.to_dict():
        raise UserError(f"{run.config} differs from this command's configuration: resume with the same options")
    check_options(cfg)
    run.write_config(cfg)
    keras.utils.set_random_seed(cfg.seed)
    experiment = load_experiment(cfg, log)
    reports = []
    for fold in experiment.folds:
        fold_dir = run.fold(fold.name)
        if fold_dir.done:
            log(f"{fold.name}: already trained, skipping")
        else:
            train_fold(cfg, experiment, fold, fold_dir, log)
        reports.append(evaluate_fold(cfg, experiment, fold, fold_dir))
    return summarize(cfg, experiment, reports, run, log)


def import_student(path: Path, out: Path, data: str | None = None, log=print) -> dict:
    """Make a run folder of a network trained on a GPU (:mod:`trainer.gpu.student`): its configuration, its weights
    as the fold's best checkpoint, and the fold scored as ``fit`` scores it; then evaluate, export, ``--init`` and
    ``--teacher`` take it like any run."""
    weights = read_student(path)
    run = RunDir(out)
    if run.has_run:
        raise UserError(f"run directory {out} is not empty: choose another --out")
    dataset, protocol, fold_name = (weights.details.get(k) for k in ("dataset", "protocol", "fold"))
    if dataset not in ("fer2013", "ckplus", "jaffe") or not isinstance(fold_name, str):
        raise UserError(f"{path} does not say which dataset and fold it was trained on")
    cfg = fit_config(dataset, "default", None, [student_config(weights.details, path)
                                                | {"model": weights.model, "preprocess": weights.preprocess,
                                                   "protocol": protocol, **({"data": data} if data else {})}])
    model = build_model(cfg.model)
    load_layers(model, weights.layers, path)
    experiment = load_experiment(cfg, log)
    fold = next((f for f in experiment.folds if f.name == fold_name), None)
    if fold is None:
        raise UserError(f"{path} was trained on fold {fold_name!r} of {dataset}, which this configuration does not have")
    run.write_config(cfg)
    fold_dir = run.fold(fold.name)
    fold_dir.path.mkdir(parents=True)
    model.save_weights(str(fold_dir.best))
    write_json(fold_dir.imported, weights.details)
    log(f"imported {path} ({weights.details.get('device')}, {len(weights.details.get('history', []))} epochs) into {out}")
    return summarize(cfg, experiment, [evaluate_fold(cfg, experiment, fold, fold_dir)], run, log)


def student_config(details: dict, source: Path) -> dict:
    """``fit``'s settings for how :mod:`trainer.gpu.student` trained the network (its recorded recipe), so that the
    run's config.yaml and a bundle's manifest tell its training, not ``fit``'s defaults; what has no ``fit``
    setting (bf16, batch-norm and loop details) is in ``imported.json`` beside the weights. Nothing for a file
    without a recipe (a test fixture)."""
    recipe = details.get("recipe")
    if recipe is None:
        return {}
    try:
        teacher = recipe["teacher"]
        return {"epochs": len(details["history"]), "batch_size": recipe["batch"], "seed": recipe["seed"],
                "weight_decay": recipe["weight_decay"], "label_smoothing": recipe["label_smoothing"],
                "ema": recipe.get("ema", 0.0),  # files from before the GPU loop averaged kept the last weights
                "schedule": {"kind": "cosine", "lr": recipe["lr"], "warmup_epochs": recipe["warmup"]},
                "augment": dict(recipe["augment"]),
                "distill": {"teachers": [teacher] if teacher else [], "temperature": recipe["temperature"],
                            "alpha": recipe["alpha"]}}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: its training recipe lacks {exc} or is damaged: write it again with "
                        "`python -m trainer.gpu.student`") from None


def load_layers(model: keras.Model, layers: dict[str, list[np.ndarray]], source: Path) -> None:
    """Set every layer's weights by name, refusing a file that does not fit the model exactly."""
    expected = {layer.name: layer for layer in model.layers if layer.weights}
    missing, unexpected = sorted(expected.keys() - layers.keys()), sorted(layers.keys() - expected.keys())
    if missing or unexpected:
        raise UserError(f"{source} does not fit the model it names: missing layers {missing[:3]}, "
                        f"unexpected layers {unexpected[:3]}")
    for name, layer in expected.items():
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in layers[name]] != shapes:
            raise UserError(f"{source}: layer {name} has weights of shapes {[a.shape for a in layers[name]]}, "
                            f"the model's are {shapes}")
        layer.set_weights(layers[name])


def check_options(cfg: TrainConfig) -> None:
    """Refuse what cannot work before the dataset loads (minutes on FER2013)."""
    if cfg.init:
        init_weights_path(Path(cfg.init))
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


def train_fold(cfg: TrainConfig, experiment: Experiment, fold: Fold, fold_dir: FoldDir, log=print) -> None:
    fold_dir.path.mkdir(parents=True, exist_ok=True)
    faces, labels = experiment.faces, experiment.labels
    log(f"{fold.name}: {len(fold.train)} training, {len(fold.val)} validation, {len(fold.test)} test images ({fold.test_split})")
    if len(fold.train) < cfg.batch_size:
        raise UserError(f"{fold.name} has {len(fold.train)} training images, fewer than batch_size {cfg.batch_size}")
    soft = None
    if cfg.distill.teachers:
        teacher = teacher_probabilities(cfg, fold_dir, faces[fold.train], log)
        agreement = float((teacher.argmax(1) == labels[fold.train]).mean())
        log(f"teachers agree with {agreement:.1%} of the training labels; distilling at T={cfg.distill.temperature}, "
            f"alpha={cfg.distill.alpha}")
        soft = soften(teacher, cfg.distill.temperature)
    train = train_dataset(faces[fold.train], labels[fold.train], cfg.preprocess, cfg.augment, cfg.batch_size,
                          cfg.model.num_classes, cfg.seed, cfg.model.crop_jitter, soft)
    val = eval_dataset(faces[fold.val], cfg.preprocess, labels[fold.val], cfg.model.num_classes)
    steps = len(fold.train) // cfg.batch_size
    with strategy().scope():
        model = compile_model(cfg)
    if cfg.init:
        warm_start(model, cfg, log)
    model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=callbacks(cfg, fold_dir, steps, val),
              class_weight=class_weights(cfg, labels[fold.train]), verbose=1 if sys.stdout.isatty() else 2)


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


def class_weights(cfg: TrainConfig, labels: np.ndarray) -> dict[int, float] | None:
    if not cfg.class_weight:
        return None
    counts = np.bincount(labels, minlength=cfg.model.num_classes)
    return {i: float(len(labels) / (cfg.model.num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def warm_start(model: keras.Model, cfg: TrainConfig, log=print) -> None:
    """Load ``cfg.init``'s weights; from a run or bundle of the same network at a smaller width, widen them into the
    model (:mod:`trainer.widen`)."""
    path = init_weights_path(Path(cfg.init))
    parent = recorded_config(Path(cfg.init))
    same_but_wider = parent and replace(parent.model, width=cfg.model.width, dropout=cfg.model.dropout,
                                        bn_momentum=cfg.model.bn_momentum) == cfg.model
    widening = same_but_wider and parent.model.width < cfg.model.width
    try:
        if widening:
            narrow = build_model(parent.model)
            narrow.load_weights(str(path))
            widen(narrow, model, cfg.seed)
        else:
            model.load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot warm-start from {path}: {str(exc).splitlines()[0]} "
                        "(it must come from a model of the same architecture)") from None
    log(f"warm start from {path}" + (f", widened from width {parent.model.width} to {cfg.model.width}" if widening else ""))


def evaluate_fold(cfg: TrainConfig, experiment: Experiment, fold: Fold, fold_dir: FoldDir) -> dict:
    """Score the fold's best checkpoint on its test images as the device runs it (one pass), with the
    flip-averaged accuracy beside it; write report.json and the plots."""
    model = load_trained(cfg, fold_dir.best)
    faces = experiment.faces[fold.test]
    report = scored_report(experiment, fold.test, keras_predictor(model, cfg, "none")(faces).argmax(1), "none")
    flip = keras_predictor(model, cfg, "flip")(faces).argmax(1)
    report.update(fold=fold.name, test_split=fold.test_split,
                  flip_accuracy=float((flip == experiment.labels[fold.test]).mean()))
    write_json(fold_dir.report, report)
    plot_confusion(report, fold_dir.confusion, f"{cfg.dataset} {fold.name}, tta none")
    if fold_dir.history.exists():
        plot_curves(read_history(fold_dir.history), fold_dir.curves, f"{cfg.dataset} {fold.name}")
    return report


def summarize(cfg: TrainConfig, experiment: Experiment, reports: list[dict], run: RunDir, log=print) -> dict:
    """Pool the folds' predictions into one report (what subject-independent accuracy means)."""
    confusion = np.sum([r["confusion"] for r in reports], axis=0)
    true = np.repeat(np.arange(len(confusion)), confusion.sum(1))
    pred = np.concatenate([np.repeat(np.arange(len(confusion)), row) for row in confusion])
    pooled = classification_report(true, pred)
    accuracies = [r["accuracy"] for r in reports]
    pooled.update(dataset=cfg.dataset, protocol=cfg.protocol or DEFAULT_PROTOCOL[cfg.dataset], tta="none",
                  folds=len(reports), fold_accuracy_mean=float(np.mean(accuracies)),
                  fold_accuracy_std=float(np.std(accuracies)), notes=experiment.notes)
    if len(reports) == 1:
        pooled.update({k: reports[0][k] for k in ("without_training_copies", "flip_accuracy") if k in reports[0]})
    write_json(run.summary, pooled)
    plot_confusion(pooled, run.confusion, f"{cfg.dataset}, {len(reports)} fold(s) pooled, tta none")
    where = reports[0]["test_split"] if len(reports) == 1 else "each fold"
    log(format_report(pooled, f"{cfg.dataset}: {len(reports)} fold(s), test = {where}, {describe_tta('none')}"))
    if len(reports) > 1:
        log(f"per-fold accuracy {np.mean(accuracies):.4f} ± {np.std(accuracies):.4f}")
    return pooled
