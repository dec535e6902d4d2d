"""``trainer evaluate``: score a run (its best checkpoints) or a model bundle on a dataset.

- Same dataset as the run, no ``--split``: every fold's checkpoint on its own test images,
  pooled (the protocol's figure).
- ``--split`` (FER2013's Training, PublicTest, PrivateTest or ``all``), or another dataset
  (cross-dataset): the run's first fold's model, or the bundle, on those images.

Scores are one pass per face unless ``--tta`` says otherwise, because that is how the device runs
by default (``model.tta_flip: false``): the figure a user gets. Every table and JSON report names
its test-time averaging. Where the dataset has a Training split (FER2013), the report also gives
the accuracy without the scored images that have an exact copy in Training (280 of PublicTest's
3589): the number a model cannot have memorized.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.errors import UserError
from trainer.data.experiment import Experiment, load_experiment
from trainer.evaluate.predict import fold_scorer, open_scorer, target_config
from trainer.evaluate.reports import format_report, plot_confusion, write_json
from trainer.evaluate.scoring import scored_report
from trainer.model.views import check_tta, describe_tta
from trainer.run.config import TrainConfig
from trainer.run.folder import RunDir, is_bundle

SPLITS = ("Training", "PublicTest", "PrivateTest", "all")


def select(experiment: Experiment, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(experiment.labels))
    if not experiment.dataset.usage.any():
        raise UserError(f"{experiment.dataset.name} has no official splits; use --split all")
    index = np.flatnonzero(experiment.dataset.usage == split)
    if not len(index):
        raise UserError(f"{experiment.dataset.source} has no {split} images")
    return index


def scoring_experiment(target: Path, dataset: str | None, data: str | None, prune_no_face: bool = False,
                       log=print) -> tuple[TrainConfig, Experiment, bool]:
    """The images ``target`` is scored on: its own dataset (its protocol) or another one (all of it), every
    image kept (no dedup); and whether that is the dataset it was trained on."""
    cfg = target_config(target)
    same_data = dataset in (None, cfg.dataset)
    cfg = replace(cfg, dataset=dataset or cfg.dataset, data=data or (cfg.data if same_data else None),
                  prune_no_face=prune_no_face, dedup=False, only_fold=None, protocol=cfg.protocol if same_data else "random")
    return cfg, load_experiment(cfg, log), same_data


def default_split(cfg: TrainConfig, same_data: bool = True) -> str:
    """FER2013's PublicTest (validation) for a FER2013 model; every image otherwise."""
    return "PublicTest" if cfg.dataset == "fer2013" and same_data else "all"


def evaluate(target: Path, dataset: str | None, data: str | None, split: str | None, prune_no_face: bool,
             json_path: Path | None, tta: str = "none", log=print) -> dict:
    target, tta = Path(target), check_tta(tta)
    cfg, experiment, same_data = scoring_experiment(target, dataset, data, prune_no_face, log)
    if is_bundle(target) or split or not same_data:
        index = select(experiment, split or default_split(cfg, same_data))
        if prune_no_face:
            index = index[experiment.has_face[index]]
        pred = open_scorer(target, tta=tta).predict(experiment.faces[index]).argmax(1)
        where = f"{cfg.dataset} {split or 'all'}"
    else:
        run = RunDir(target)
        index = np.concatenate([fold.test for fold in experiment.folds])
        pred = np.concatenate([fold_scorer(cfg, run.fold(fold.name), tta).predict(experiment.faces[fold.test]).argmax(1)
                               for fold in experiment.folds])
        where = f"{cfg.dataset} test folds of {cfg.protocol}"
    report = scored_report(experiment, index, pred, tta)
    report.update(model=str(target), data=where, pruned_no_face=prune_no_face, notes=experiment.notes)
    log(format_report(report, f"{target} on {where}, {describe_tta(tta)}"))
    if json_path is not None:
        write_json(json_path, report)
        plot_confusion(report, json_path.with_suffix(".png"), f"{target.name} on {where}, tta {tta}")
        log(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    return report
