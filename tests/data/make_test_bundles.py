"""Regenerate the small committed bundles that the device and tools tests run (they need no TensorFlow).

    python tests/data/make_test_bundles.py         # needs the trainer: pip install -e .[train,onnx-export]
    python tests/data/make_test_bundles.py --onnx  # only tiny-ck-onnx, from the committed tiny-ck

Trains the tiny width-8 ResNet18+CBAM of ``tests/synthetic.py`` on generated gratings (a CK+-style
layout, never real faces), then exports it exactly as ``trainer export`` does: QAT, full-INT8
``tests/data/tiny-ck`` and its float32 twin ``tests/data/tiny-ck-float``. Both are unsigned, like any
fresh export; tests sign copies with keys they make. Also ``constant-scores.tflite``: a model that
runs but answers 3.0 for every class (not probabilities), the bundle that must fail the self-check; and
``one-class.tflite``: valid probabilities (any batch size), 0.94 for ``disgust`` whatever the face, a bundle that passes
the self-check but answers one class for every face (what ``tools rollout``'s class-mix gate must stop).
And ``tests/data/tiny-ck-onnx``: ``tiny-ck`` plus its ``model.onnx`` converted as ``trainer export --onnx``
converts (calibrated on generated faces), so the onnxruntime back-end's tests need no TensorFlow.
Regenerate after a change to the bundle format or the model's graph; the trainer's own tests export
a fresh one every run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from synthetic import TINY_RUN_OVERRIDES, write_ck_layout  # noqa: E402


def main() -> None:
    if sys.argv[1:] == ["--onnx"]:
        write_onnx_bundle(HERE / "tiny-ck", HERE / "tiny-ck-onnx")
        return
    from trainer.export.export import export
    from trainer.fit.loop import fit
    from trainer.run.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        data = write_ck_layout(Path(tmp) / "CK+48")
        cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(data)}])
        fit(cfg, Path(tmp) / "run", log=lambda *a: None)
        for name in ("tiny-ck", "tiny-ck-float"):
            shutil.rmtree(HERE / name, ignore_errors=True)
        export(Path(tmp) / "run", HERE / "tiny-ck", qat_epochs=1, representative=64, version="test",
               float_out=HERE / "tiny-ck-float", log=lambda *a: None)
    write_constant_model(HERE / "constant-scores.tflite")
    write_one_class_model(HERE / "one-class.tflite")
    write_onnx_bundle(HERE / "tiny-ck", HERE / "tiny-ck-onnx")
    for name in ("tiny-ck", "tiny-ck-float"):
        print(f"wrote {HERE / name}: {', '.join(sorted(p.name for p in (HERE / name).iterdir()))}")


def write_onnx_bundle(source: Path, out: Path, calibration_faces: int = 64) -> None:
    """``source`` with its INT8 model converted to ONNX beside it, recorded in the manifest as the export records it."""
    import numpy as np
    from synthetic import synthetic_face

    from edge.model.bundle import MANIFEST_FILE, MODEL_FILE, ONNX_FILE, load_bundle, sha256_bytes
    from edge.model.preprocess import normalize
    from trainer.export.onnx import FORMAT, OPSET, tflite_to_onnx_int8

    bundle = load_bundle(source)
    rng = np.random.default_rng(1)
    faces = np.stack([synthetic_face(i % 7, rng) for i in range(calibration_faces)])
    onnx = tflite_to_onnx_int8(bundle.model_bytes, normalize(faces, bundle.spec))
    manifest = dict(bundle.manifest, name=out.name,
                    onnx={"sha256": sha256_bytes(onnx), "bytes": len(onnx), "format": FORMAT, "opset": OPSET})
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / MODEL_FILE).write_bytes(bundle.model_bytes)
    (out / ONNX_FILE).write_bytes(onnx)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(out)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


def write_constant_model(path: Path, classes: int = 7) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((48, 48, 1), batch_size=1)
    dense = tf.keras.layers.Dense(classes, kernel_initializer="zeros", bias_initializer=tf.keras.initializers.Constant(3.0))
    model = tf.keras.Model(inputs, dense(tf.keras.layers.Flatten()(inputs)))
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def write_one_class_model(path: Path, classes: int = 7, answer: int = 1) -> None:
    import tensorflow as tf

    probabilities = [0.01] * classes
    probabilities[answer] = 1 - 0.01 * (classes - 1)
    inputs = tf.keras.Input((48, 48, 1))  # no fixed batch: the self-check runs a batch of fixed inputs
    dense = tf.keras.layers.Dense(classes, kernel_initializer="zeros",
                                  bias_initializer=tf.keras.initializers.Constant(probabilities))
    model = tf.keras.Model(inputs, dense(tf.keras.layers.Flatten()(inputs)))
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


if __name__ == "__main__":
    main()
