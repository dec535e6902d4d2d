"""Warm start (``init``): a new run starts from a trained network's weights, with a fresh schedule.

The parent is a run folder (its first trained fold's best checkpoint), a model bundle (its float weights, checked
against the sha256 its manifest carries) or a bare ``.weights.h5`` file of the same architecture. A run or a bundle
also hands down its network and preprocessing (:func:`fit_config`, which every new run's configuration goes
through); from a parent of the same network at a smaller width the weights are widened into the new model
(:mod:`trainer.model.widen`). The training loop calls :func:`check_init` before the dataset loads and
:func:`warm_start` once the model is built; the optimizer state does not carry over.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import tf_keras as keras

from edge.errors import UserError
from trainer.model.resnet import build_model
from trainer.model.widen import widen
from trainer.run.config import TrainConfig, load_config
from trainer.run.folder import init_weights_path, recorded_config


def fit_config(dataset: str, preset: str = "default", file: str | Path | None = None,
               overrides: list[dict] = ()) -> TrainConfig:
    """The configuration of a new run. A warm start from a run or a bundle inherits its parent's network and
    preprocessing (``model.*``, ``preprocess.*``): its weights fit only the architecture they were trained in
    (e.g. the shipped model's 40-px crop), and it should see faces as it was trained to. They take the
    preset's place; a config file and ``--set`` still override them."""
    cfg = load_config(dataset, preset, file, overrides)
    parent = recorded_config(Path(cfg.init)) if cfg.init else None
    if parent is None:
        return cfg
    return load_config(dataset, preset, file, overrides,
                       inherited={"model": parent.model.to_dict(), "preprocess": parent.preprocess.to_dict()})


def check_init(cfg: TrainConfig) -> None:
    """Refuse an ``init`` that cannot be loaded, before the dataset loads."""
    if cfg.init:
        init_weights_path(Path(cfg.init))


def warm_start(model: keras.Model, cfg: TrainConfig, log=print) -> None:
    """Load ``cfg.init``'s weights (nothing without one); from a run or bundle of the same network at a smaller
    width, widen them into the model (:mod:`trainer.model.widen`)."""
    if not cfg.init:
        return
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
