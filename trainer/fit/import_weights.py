"""``trainer import-weights``: a run folder of a network trained on a lent GPU without TensorFlow.

:mod:`trainer.gpu.student` writes the Keras model's weights by layer name (a student weights file,
:mod:`trainer.gpu.handoff`); here they are loaded into the model they name, written as the fold's best checkpoint
beside a configuration that tells how the GPU trained it, and the fold is scored as ``fit`` scores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tf_keras as keras

from edge.errors import UserError
from trainer.data.experiment import load_experiment
from trainer.evaluate.reports import write_json
from trainer.evaluate.scoring import evaluate_fold, summarize
from trainer.fit.warm_start import fit_config
from trainer.gpu.handoff import read_student
from trainer.model.resnet import build_model
from trainer.run.folder import RunDir


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
