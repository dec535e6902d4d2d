"""``trainer ensemble``: several trained networks as one full-INT8 graph that averages their probabilities inside.

A device runs one model file with one invoke per batch of faces; an ensemble exported this way needs nothing new
on the device (the same bundle format, self-check and signature) and costs the members' time together. Members are
bundles (their float weights, checked against the manifest's sha256) or run folders, trained on the same dataset with
the same preprocessing: each keeps its own network and crop, and their softmax outputs are averaged before the
graph's output, so the INT8 output stays one calibrated probability vector. Quantization is post-training: the
members are already trained (and each one's EMA optimum is where PTQ scored best, issue 12).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import tf_keras as keras

from edge.errors import UserError
from edge.model.litert import non_int8_tensors
from trainer.data.experiment import load_experiment
from trainer.data.pipeline import eval_dataset
from trainer.evaluate.predict import load_trained, target_config, tflite_predictor
from trainer.export.bundle import write_bundle
from trainer.export.export import NAME, format_parity, parity
from trainer.export.quantize import to_tflite_int8
from trainer.model.resnet import with_softmax
from trainer.run.config import TrainConfig
from trainer.run.folder import init_weights_path


def members_model(members: list[Path], weights: list[float] | None = None) -> tuple[keras.Model, list[TrainConfig]]:
    """One probabilities model averaging each member's softmax (weighted by ``weights``, normalised to sum 1; equal
    by default), and the members' configurations. Refuses members whose faces differ (preprocessing, input size) or
    that were trained on different datasets."""
    if len(members) < 2:
        raise UserError("an ensemble needs at least two members")
    weights = list(weights or [1.0] * len(members))
    if len(weights) != len(members) or not all(w > 0 for w in weights):
        raise UserError(f"--weights needs one positive weight per member ({len(members)}), got {weights}")
    configs = [target_config(m) for m in members]
    first = configs[0]
    for member, cfg in zip(members[1:], configs[1:]):
        if cfg.preprocess != first.preprocess or cfg.model.input_size != first.model.input_size:
            raise UserError(f"{member} prepares faces differently from {members[0]} (preprocess.* or input size): "
                            "an ensemble's members must see the same input")
        if cfg.dataset != first.dataset:
            raise UserError(f"{member} was trained on {cfg.dataset}, {members[0]} on {first.dataset}")
    inputs = keras.Input((first.model.input_size, first.model.input_size, 1), name="face")
    outputs = []
    for i, (member, cfg) in enumerate(zip(members, configs)):
        network = with_softmax(load_trained(cfg, init_weights_path(member)))
        network._name = f"member{i}"  # two copies of one architecture must not share a name in the graph
        outputs.append(keras.layers.Rescaling(weights[i] / sum(weights), name=f"weight{i}")(network(inputs)))
    return keras.Model(inputs, keras.layers.Add(name="probs")(outputs), name="ensemble"), configs


def ensemble(members: list[Path], out: Path, data: str | None = None, name: str | None = None,
             version: str | None = None, representative: int = 500, weights: list[float] | None = None,
             log=print) -> Path:
    """Write the members' averaging graph as a full-INT8 bundle to ``out``, with its parity table (float Keras vs
    INT8 on the first member's validation images) and each member's own accuracy on the same images."""
    members, out = [Path(m) for m in members], Path(out)
    name = name or out.name
    if not NAME.match(name):
        raise UserError(f"bundle name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-'")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty: choose another folder or remove it")
    model, configs = members_model(members, weights)
    cfg = replace(configs[0], data=data or configs[0].data)
    experiment = load_experiment(cfg, log)
    fold = experiment.folds[0]
    rng = np.random.default_rng(cfg.seed)
    calibration = experiment.faces[rng.choice(fold.train, min(representative, len(fold.train)), replace=False)]
    calibration = np.stack([x for x in eval_dataset(calibration, cfg.preprocess).unbatch().as_numpy_iterator()])
    log(f"converting the average of {len(members)} members to full INT8")
    int8 = to_tflite_int8(model, calibration)
    float_left = non_int8_tensors(int8)
    if float_left:
        raise UserError(f"the ensemble is not full INT8: {'; '.join(float_left[:3])}")
    faces, labels = experiment.faces[fold.val], experiment.labels[fold.val]
    predictions = {"float_keras": model.predict(eval_dataset(faces, cfg.preprocess), verbose=0).argmax(1),
                   "ptq_int8": tflite_predictor(int8, cfg)(faces).argmax(1)}
    for i in range(len(members)):  # each member alone: the graph's own sub-network
        member = model.get_layer(f"member{i}")
        predictions[f"member{i}_float"] = member.predict(eval_dataset(faces, cfg.preprocess), verbose=0).argmax(1)
    table = parity(predictions, labels, "ptq_int8")
    log(format_parity(table))
    write_bundle(out, name, version, int8, cfg, fold.name, table, " + ".join(map(str, members)), kind="ptq_int8",
                 origin={"ensemble_of": [str(m) for m in members], "ensemble_weights": [float(w) for w in weights]
                         if weights else [1.0] * len(members)})
    log(f"wrote bundle {out}: the average of {len(members)} members, INT8 ({len(int8) / 1e6:.1f} MB)")
    return out
