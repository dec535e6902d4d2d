"""``trainer evaluate``: score a run (its best checkpoints) or a model bundle on a dataset.

- Same dataset as the run, no ``--split``: every fold's checkpoint on its own test images,
  pooled (the protocol's figure).
- ``--split`` (FER2013's Training, PublicTest, PrivateTest or ``all``), or another dataset
  (cross-dataset): the run's first fold's model, or the bundle, on those images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from edge.errors import UserError
from trainer.config import TrainConfig, config_from_dict
from trainer.experiment import Experiment, load_experiment
from trainer.reports import classification_report, format_report, plot_confusion, write_json

SPLITS = ("Training", "PublicTest", "PrivateTest", "all")


def load_run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is neither a run directory (no config.yaml) nor a model bundle (no manifest.json)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def select(experiment: Experiment, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(experiment.labels))
    if not experiment.dataset.usage.any():
        raise UserError(f"{experiment.dataset.name} has no official splits; use --split all")
    index = np.flatnonzero(experiment.dataset.usage == split)
    if not len(index):
        raise UserError(f"{experiment.dataset.source} has no {split} images")
    return index


def evaluate(target: Path, dataset: str | None, data: str | None, split: str | None, prune_no_face: bool,
             json_path: Path | None, log=print) -> dict:
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target} does not exist: pass a run directory or a model bundle")
    is_bundle = (target / "manifest.json").exists()
    if is_bundle:
        from trainer.export import bundle_predictor, bundle_train_config

        cfg = bundle_train_config(target)
    else:
        cfg = load_run_config(target)
    same_data = dataset in (None, cfg.dataset)
    cfg = replace(cfg, dataset=dataset or cfg.dataset, data=data or (cfg.data if same_data else None),
                  prune_no_face=prune_no_face, dedup=False, only_fold=None, protocol=cfg.protocol if same_data else "random")
    experiment = load_experiment(cfg, log)
    if is_bundle or split or not same_data:
        index = select(experiment, split or ("PublicTest" if cfg.dataset == "fer2013" and same_data else "all"))
        if prune_no_face:
            index = index[experiment.has_face[index]]
        predict = bundle_predictor(target, cfg) if is_bundle else _run_predictor(cfg, target / experiment.folds[0].name)
        true, pred = experiment.labels[index], predict(experiment.faces[index]).argmax(1)
        where = f"{cfg.dataset} {split or 'all'}"
    else:
        true, pred = [], []
        for fold in experiment.folds:
            predict = _run_predictor(cfg, target / fold.name)
            true.append(experiment.labels[fold.test])
            pred.append(predict(experiment.faces[fold.test]).argmax(1))
        true, pred = np.concatenate(true), np.concatenate(pred)
        where = f"{cfg.dataset} test folds of {cfg.protocol}"
    report = classification_report(true, pred)
    report.update(model=str(target), data=where, pruned_no_face=prune_no_face, notes=experiment.notes)
    log(format_report(report, f"{target} on {where}"))
    if json_path is not None:
        write_json(json_path, report)
        plot_confusion(report, json_path.with_suffix(".png"), f"{target.name} on {where}")
        log(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    return report


def _run_predictor(cfg: TrainConfig, fold_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    from trainer.train import load_trained, predict

    model = load_trained(cfg, fold_dir)
    return lambda faces: predict(model, faces, cfg)

