"""A fold's report as ``fit`` writes it, the folds pooled into a run's summary, and the report every score gets.

``fit``, ``trainer average`` and ``trainer import-weights`` score a fold's best checkpoint on its test images as the
device runs it (one pass), the flip-averaged accuracy beside it (:func:`evaluate_fold`), and pool the folds
(:func:`summarize`). Every report, ``trainer evaluate``'s too, comes from :func:`scored_report`: it names its
test-time averaging and, where the dataset has a Training split, gives the accuracy without the scored images that
have an exact copy in it.
"""

from __future__ import annotations

import numpy as np

from trainer.data.datasets import copies_in_training
from trainer.data.experiment import Experiment
from trainer.data.protocols import DEFAULT_PROTOCOL, Fold
from trainer.evaluate.predict import keras_predictor, load_trained
from trainer.evaluate.reports import (
    classification_report,
    format_report,
    plot_confusion,
    plot_curves,
    read_history,
    write_json,
)
from trainer.model.views import describe_tta
from trainer.run.config import TrainConfig
from trainer.run.folder import FoldDir, RunDir


def scored_report(experiment: Experiment, index: np.ndarray, pred: np.ndarray, tta: str) -> dict:
    """The classification report of ``pred`` for the images ``index``, naming its test-time averaging, with
    ``without_training_copies`` where the dataset has a Training split that ``index`` lies outside of."""
    true = experiment.labels[index]
    report = classification_report(true, pred)
    report.update(tta=tta, tta_description=describe_tta(tta))
    copies = copies_in_training(experiment.dataset, index)
    if copies is not None:
        kept = classification_report(true[~copies], pred[~copies])
        report["without_training_copies"] = {"excluded": int(copies.sum()), "n": kept["n"],
                                             "accuracy": kept["accuracy"], "macro_f1": kept["macro_f1"]}
    return report


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
