"""A model bundle as ``trainer export`` writes it: the INT8 model, its manifest, and what travels beside them.

The manifest records how the network was trained (the run's configuration, and :func:`provenance`: a lent GPU's
run, a soup's ingredients), its parity table and the checksums a device checks (``model.tflite``; ``model.onnx``
with ``--onnx``; ``float.weights.h5``, the float checkpoint ``trainer fit --init BUNDLE`` warm-starts from).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

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
from edge.model.litert import load_interpreter
from edge.model.selfcheck import write_golden
from edge.protocol.flash import FLOAT_WEIGHTS_FILE
from trainer.run.config import TrainConfig
from trainer.run.folder import RunDir, file_sha256


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
                 table: dict, run_dir: Path | str, kind: str = "qat_int8", onnx: bytes | None = None,
                 float_model: keras.Model | None = None, origin: dict | None = None) -> Bundle:
    """``kind`` names the parity-table row of ``model``; its accuracy is the bundle's validation accuracy.
    ``onnx``: the same network as QDQ INT8 ONNX, written beside it and recorded (sha256, size) in the manifest.
    ``float_model``: the float network, its weights saved beside it (for fine-tuning) and recorded the same way;
    only the layers' weights (a run's checkpoints also hold the optimizer's momenta: twice the size, and a warm
    start does not use them). ``origin``: more of ``training`` (:func:`provenance`, an ensemble's members);
    ``run_dir`` is recorded as where the network was trained."""
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
        from trainer.export.onnx import FORMAT, OPSET

        manifest["onnx"] = {"sha256": sha256_bytes(onnx), "bytes": len(onnx), "format": FORMAT, "opset": OPSET}
        (out / ONNX_FILE).write_bytes(onnx)
    if float_model is not None:
        float_model.save_weights(str(out / FLOAT_WEIGHTS_FILE))
        manifest["float_weights"] = {"sha256": file_sha256(out / FLOAT_WEIGHTS_FILE),
                                     "bytes": (out / FLOAT_WEIGHTS_FILE).stat().st_size}
    (out / MODEL_FILE).write_bytes(model)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    write_golden(out)  # the answers every device's self-check compares with, before the bundle is signed
    return load_bundle(out)
