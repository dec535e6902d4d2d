"""``trainer export``: a trained run -> QAT fine-tune -> full-INT8 TFLite -> a model bundle.

Besides the bundle (``model.tflite`` = QAT INT8, ``manifest.json``, and ``float.weights.h5``: the
float checkpoint it was made from, for fine-tuning with ``trainer fit --init BUNDLE``; its sha256 is
in the manifest, which the signature covers) it writes, into ``RUN_DIR/export/``, the float32 and
post-training-INT8 (PTQ) models and ``parity.json``: the accuracy of float Keras, float TFLite,
PTQ INT8 and QAT INT8 on the same validation images, one pass each as the device runs, and each
one's top-1 agreement with float Keras. With ``--onnx`` the bundle also holds ``model.onnx``
(the QAT INT8 network as QDQ INT8 ONNX, :mod:`trainer.export.onnx`) and the table an ``onnx_int8`` row,
run through the device's onnxruntime back-end, with its agreement with LiteRT's QAT INT8 as well.

Read top to bottom: :func:`export` (QAT fine-tuning and conversion, :mod:`trainer.export.quantize`; the ONNX twin,
:mod:`trainer.export.onnx`; the bundle, :mod:`trainer.export.bundle`), then the parity table it chooses by.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.model.bundle import ONNX_FILE
from edge.model.litert import non_int8_tensors
from trainer.data.experiment import load_experiment
from trainer.data.pipeline import eval_dataset
from trainer.evaluate.predict import keras_predictor, load_trained, tflite_predictor
from trainer.evaluate.reports import write_json
from trainer.export.bundle import provenance, write_bundle
from trainer.export.quantize import qat_finetune, to_tflite_float, to_tflite_int8
from trainer.model.resnet import with_softmax
from trainer.model.views import describe_tta
from trainer.run.folder import RunDir

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

INT8_CHOICES = ("best", "qat", "ptq")
"""Which INT8 model a bundle ships: the one of the two more accurate on the validation images (``best``; a tie
goes to QAT), or always quantization-aware (``qat``) or post-training (``ptq``, which skips the fine-tuning)."""


def export(run_dir: Path, out: Path, qat_epochs: int = 2, representative: int = 500, qat_lr: float = 1e-3,
           name: str | None = None, version: str | None = None, float_out: Path | None = None, onnx: bool = False,
           int8: str = "best", log=print) -> Path:
    """Write an INT8 bundle to ``out``: post-training or quantization-aware, as ``int8`` chooses (see
    :data:`INT8_CHOICES`); with ``onnx``, its QDQ INT8 ONNX twin inside; and the float32 model as a bundle to
    ``float_out``, for comparisons.

    Why a choice: two QAT epochs move the weights off a weight-averaged (``ema``) optimum with plain SGD, and on
    such a model post-training quantization has scored higher (issue 12: PTQ 68.10 % vs QAT 67.21 % one pass for
    the width-48 run); on others QAT won back more than PTQ kept. Both are full INT8; the validation images
    decide, as they decide the checkpoint."""
    run_dir, out = Path(run_dir), Path(out)
    name = name or out.name
    if not NAME.match(name):
        raise UserError(f"bundle name {name!r} must be 1-64 lowercase letters, digits, '.', '_' or '-'")
    if int8 not in INT8_CHOICES:
        raise UserError(f"int8 must be one of {', '.join(INT8_CHOICES)}, not {int8!r}")
    if onnx:
        from trainer.export.onnx import require_converter, tflite_to_onnx_int8

        require_converter()  # before minutes of fine-tuning, not after
    run = RunDir(run_dir)
    cfg = run.load_config()
    for folder in filter(None, (out, float_out)):
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder} already exists and is not empty: choose another folder or remove it")
    experiment = load_experiment(cfg, log)
    fold = experiment.folds[0]
    origin = provenance(run_dir, fold.name)  # a damaged record is refused before minutes of fine-tuning
    model = load_trained(cfg, run.fold(fold.name).best)
    rng = np.random.default_rng(cfg.seed)
    calibration = experiment.faces[rng.choice(fold.train, min(representative, len(fold.train)), replace=False)]
    calibration = np.stack([x for x in eval_dataset(calibration, cfg.preprocess).unbatch().as_numpy_iterator()])
    deploy = with_softmax(model)
    log("converting float32 and post-training INT8 models")
    models = {"float_tflite": to_tflite_float(deploy), "ptq_int8": to_tflite_int8(deploy, calibration)}
    if int8 == "ptq":  # minutes of fine-tuning for a model that would not ship
        log("quantization-aware fine-tuning skipped (--int8 ptq)")
    else:
        log(f"quantization-aware fine-tuning: {qat_epochs} epoch(s) at LR {qat_lr}")
        qat = qat_finetune(model, cfg, experiment, fold.train, qat_epochs, qat_lr)
        models["qat_int8"] = to_tflite_int8(qat, calibration)
    export_dir = run.export
    export_dir.mkdir(exist_ok=True)
    for key, data in models.items():
        (export_dir / f"{key}.tflite").write_bytes(data)
    predictors = {"float_keras": keras_predictor(model, cfg)}
    predictors |= {key: tflite_predictor(data, cfg) for key, data in models.items()}
    faces, labels = experiment.faces[fold.val], experiment.labels[fold.val]
    predictions = {key: predict(faces).argmax(1) for key, predict in predictors.items()}
    shipped = choose_int8(predictions, labels, int8)
    float_left = non_int8_tensors(models[shipped])
    if float_left:
        raise UserError(f"the {shipped} model is not full INT8: {'; '.join(float_left[:3])}")
    onnx_model = None
    if onnx:
        log(f"converting the shipped INT8 model ({shipped}) to QDQ INT8 ONNX")
        onnx_model = tflite_to_onnx_int8(models[shipped], calibration)
        (export_dir / "int8.onnx").write_bytes(onnx_model)
        predictions["onnx_int8"] = tflite_predictor(models[shipped], cfg, onnx_model)(faces).argmax(1)
    table = parity(predictions, labels, shipped)
    write_json(export_dir / "parity.json", table)
    log(format_parity(table))
    write_bundle(out, name, version, models[shipped], cfg, fold.name, table, run_dir, kind=shipped, onnx=onnx_model,
                 float_model=load_trained(cfg, run.fold(fold.name).best), origin=origin)
    log(f"wrote bundle {out} with the {shipped} model ({len(models[shipped]) / 1e6:.1f} MB"
        + (f", {ONNX_FILE} {len(onnx_model) / 1e6:.1f} MB)" if onnx_model else ")"))
    if float_out:
        write_bundle(float_out, f"{name}-float", version, models["float_tflite"], cfg, fold.name, table, run_dir,
                     kind="float_tflite", origin=origin)
        log(f"wrote float32 bundle {float_out} ({len(models['float_tflite']) / 1e6:.1f} MB)")
    return out


def parity(predictions: dict[str, np.ndarray], labels: np.ndarray, shipped: str, tta: str = "none") -> dict:
    """Accuracy and top-1 agreement with float Keras per model (top-1 predictions by name); the ONNX model's
    agreement with the shipped LiteRT INT8 model too; ``shipped`` names that model's row."""
    reference = predictions["float_keras"]
    table = {name: {"accuracy": float((p == labels).mean()), "agreement_with_float": float((p == reference).mean())}
             for name, p in predictions.items()}
    if "onnx_int8" in table:
        table["onnx_int8"]["agreement_with_litert_int8"] = float((predictions["onnx_int8"] == predictions[shipped]).mean())
    return table | {"n": int(len(labels)), "tta": tta, "shipped": shipped}


def choose_int8(predictions: dict[str, np.ndarray], labels: np.ndarray, int8: str) -> str:
    """The row name of the INT8 model to ship (see :data:`INT8_CHOICES`), from the models' top-1 predictions."""
    if int8 != "best":
        return f"{int8}_int8"
    accuracy = {key: (predictions[key] == labels).mean() for key in ("ptq_int8", "qat_int8")}
    return "ptq_int8" if accuracy["ptq_int8"] > accuracy["qat_int8"] else "qat_int8"


def format_parity(table: dict) -> str:
    lines = [f"{'model':<14}{'accuracy':>10}{'agreement':>11}{'vs LiteRT':>11}"]
    lines += [f"{name:<14}{row['accuracy']:>10.4f}{row['agreement_with_float']:>11.4f}"
              + (f"{row['agreement_with_litert_int8']:>11.4f}" if "agreement_with_litert_int8" in row else "")
              for name, row in table.items() if isinstance(row, dict)]
    lines.append(f"on {table['n']} validation images, {describe_tta(table['tta'])}; agreement = same top-1 as float Keras, "
                 f"vs LiteRT = same top-1 as the shipped INT8 model ({table['shipped']}) on LiteRT")
    return "\n".join(lines)
