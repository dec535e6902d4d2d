"""``trainer export``: a trained run -> QAT fine-tune -> full-INT8 TFLite -> a model bundle.

Besides the bundle (``model.tflite`` = QAT INT8, ``manifest.json``, and ``float.weights.h5``: the
float checkpoint it was made from, for fine-tuning with ``trainer fit --init BUNDLE``; its sha256 is
in the manifest, which the signature covers) it writes, into ``RUN_DIR/export/``, the float32 and
post-training-INT8 (PTQ) models and ``parity.json``: the accuracy of float Keras, float TFLite,
PTQ INT8 and QAT INT8 on the same validation images, one pass each as the device runs, and each
one's top-1 agreement with float Keras. With ``--onnx`` the bundle also holds ``model.onnx``
(the QAT INT8 network as QDQ INT8 ONNX, :mod:`trainer.onnx`) and the table an ``onnx_int8`` row,
run through the device's onnxruntime back-end, with its agreement with LiteRT's QAT INT8 as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tf_keras as keras

import edge
from edge.errors import UserError
from edge.model.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_FILE,
    SCHEMA_VERSION,
    Bundle,
    load_bundle,
    sha256_bytes,
    tensor_description,
)
from edge.model.litert import load_interpreter, non_int8_tensors
from edge.protocol.flash import FLOAT_WEIGHTS_FILE
from trainer.config import TrainConfig
from trainer.experiment import Experiment, load_experiment
from trainer.model import with_softmax
from trainer.pipeline import eval_dataset, train_dataset
from trainer.predict import describe_tta, keras_predictor, load_trained, tflite_predictor
from trainer.quantize import quantization_aware, to_tflite_float, to_tflite_int8
from trainer.reports import write_json
from trainer.run import RunDir, file_sha256

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def qat_finetune(model: keras.Model, cfg: TrainConfig, experiment: Experiment, train_index: np.ndarray,
                 epochs: int, lr: float) -> keras.Model:
    """Fine-tune the fake-quantized softmax model a few epochs at a low, cosine-decaying LR."""
    qat = quantization_aware(with_softmax(model))
    if epochs == 0:
        return qat
    steps = max(1, len(train_index) // cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps)
    qat.compile(optimizer=keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), metrics=["accuracy"])
    data = train_dataset(experiment.faces[train_index], experiment.labels[train_index], cfg.preprocess,
                         replace(cfg.augment, mixup=0.0, cutmix=0.0), min(cfg.batch_size, len(train_index)),
                         cfg.model.num_classes, cfg.seed, cfg.model.crop_jitter)
    qat.fit(data, epochs=epochs, verbose=2)
    return qat


INT8_CHOICES = ("best", "qat", "ptq")
"""Which INT8 model a bundle ships: the one of the two more accurate on the validation images (``best``; a tie
goes to QAT), or always quantization-aware (``qat``) or post-training (``ptq``)."""


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
    if int8 not in INT8_CHOICES:
        raise UserError(f"int8 must be one of {', '.join(INT8_CHOICES)}, not {int8!r}")
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
    if onnx:
        from trainer.onnx import require_converter, tflite_to_onnx_int8

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


def provenance(run_dir: Path, fold: str) -> dict:
    """What a run's config alone would not say about where its network came from: for a run made by ``trainer
    import-weights``, where it trained (a lent GPU, PyTorch); for a soup (``trainer average``), the runs it averages."""
    run, out = RunDir(run_dir), {}
    imported = read_record(run.fold(fold).imported, "import the weights again with `trainer import-weights`")
    if imported is not None:
        out["trained_on"] = f"{imported.get('device')} (PyTorch {imported.get('torch')}, python -m trainer.gpu.student)"
    averaged = read_record(run.averaged, "average the runs again with `trainer average`")
    if averaged is not None:
        if not isinstance(averaged.get("runs"), list):
            raise UserError(f"{run.averaged} is damaged (no list of runs): average the runs again with `trainer average`")
        out["averaged_from"] = [str(r) for r in averaged["runs"]]
    return out


def read_record(path: Path, fix: str) -> dict | None:
    """A JSON object a run keeps beside its weights, None where there is none; a damaged one is refused in one line."""
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}): {fix}") from None


def write_bundle(out: Path, name: str, version: str | None, model: bytes, cfg: TrainConfig, fold: str,
                 table: dict, run_dir: Path, kind: str = "qat_int8", onnx: bytes | None = None,
                 float_model: keras.Model | None = None, origin: dict | None = None) -> Bundle:
    """``kind`` names the parity-table row of ``model``; its accuracy is the bundle's validation accuracy.
    ``onnx``: the same network as QDQ INT8 ONNX, written beside it and recorded (sha256, size) in the manifest.
    ``float_model``: the float network, its weights saved beside it (for fine-tuning) and recorded the same way;
    only the layers' weights (a run's checkpoints also hold the optimizer's momenta: twice the size, and a warm
    start does not use them). ``origin``: more of ``training`` (:func:`provenance`)."""
    interpreter = load_interpreter(model)
    digest = sha256_bytes(model)
    created = datetime.now(timezone.utc)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "model_id": f"{name}@{digest[:12]}",
        "version": version or created.strftime("%Y.%m.%d"),
        "classes": list(edge.CLASS_NAMES),
        "input": tensor_description(interpreter.get_input_details()[0]),
        "output": tensor_description(interpreter.get_output_details()[0]) | {"kind": "probabilities"},
        "preprocessing": {"color": "gray", "detector": cfg.detector, "face_crop": "square box + margin",
                          "gamma_equalization": "global, mean -> gamma_target", "spec": cfg.preprocess.to_dict()},
        "training": {"dataset": cfg.dataset, "protocol": cfg.protocol or fold, "fold": fold, "run": str(run_dir),
                     "config": cfg.to_dict(), **(origin or {})},
        "metrics": {"validation_accuracy": table[kind]["accuracy"], "parity": table},
        "tflite": {"sha256": digest, "bytes": len(model)},
        "created": created.isoformat(timespec="seconds"),
        "project_version": edge.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    if onnx is not None:
        from trainer.onnx import FORMAT, OPSET

        manifest["onnx"] = {"sha256": sha256_bytes(onnx), "bytes": len(onnx), "format": FORMAT, "opset": OPSET}
        (out / ONNX_FILE).write_bytes(onnx)
    if float_model is not None:
        float_model.save_weights(str(out / FLOAT_WEIGHTS_FILE))
        manifest["float_weights"] = {"sha256": file_sha256(out / FLOAT_WEIGHTS_FILE),
                                     "bytes": (out / FLOAT_WEIGHTS_FILE).stat().st_size}
    (out / MODEL_FILE).write_bytes(model)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return load_bundle(out)
