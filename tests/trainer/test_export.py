"""QAT export: a full-INT8 model that agrees with float, and a bundle loader that refuses broken bundles."""

import json
import shutil

import numpy as np
import pytest
from synthetic import synthetic_face

from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.litert import non_int8_tensors


def test_export_writes_a_full_int8_bundle(exported_bundle, tiny_run):
    bundle = load_bundle(exported_bundle)
    assert non_int8_tensors(bundle.model_bytes) == []
    manifest = bundle.manifest
    assert manifest["input"]["dtype"] == "int8" and manifest["output"]["dtype"] == "int8"
    assert manifest["input"]["shape"] == [1, 48, 48, 1]
    assert manifest["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert manifest["preprocessing"]["spec"]["crop_margin"] == pytest.approx(0.07)
    assert manifest["training"]["dataset"] == "ckplus"
    parity = json.loads((tiny_run / "export" / "parity.json").read_text())
    assert set(parity) - {"onnx_int8"} == {"float_keras", "float_tflite", "ptq_int8", "qat_int8", "n", "tta", "shipped"}
    shipped, other = parity["shipped"], ({"ptq_int8", "qat_int8"} - {parity["shipped"]}).pop()
    assert parity[shipped]["accuracy"] >= parity[other]["accuracy"]  # --int8 best: the validation images decide
    assert bundle.model_bytes == (tiny_run / "export" / f"{shipped}.tflite").read_bytes()
    assert manifest["metrics"]["validation_accuracy"] == parity[shipped]["accuracy"]
    assert parity["tta"] == "none"  # one pass, as the device runs by default
    assert parity["float_tflite"]["agreement_with_float"] > 0.95
    assert parity["ptq_int8"]["agreement_with_float"] > 0.7
    assert manifest["metrics"]["parity"] == parity


def test_float_model_is_detected_as_not_int8(tiny_run):
    assert non_int8_tensors((tiny_run / "export" / "float_tflite.tflite").read_bytes())


def test_float_twin_bundle_runs_on_the_edge_classifier(exported_bundle, tiny_run):
    """The float twin is the run's float model, run by the device's classifier: the same scores as Keras."""
    from trainer.evaluate.predict import open_scorer

    float_bundle = load_bundle(exported_bundle.with_name("tiny-ck-float"))
    manifest = float_bundle.manifest
    assert manifest["input"]["dtype"] == "float32" and manifest["name"] == "tiny-ck-float"
    assert manifest["metrics"]["validation_accuracy"] == manifest["metrics"]["parity"]["float_tflite"]["accuracy"]
    rng = np.random.default_rng(3)
    faces = np.stack([synthetic_face(label % 6, rng) for label in range(20)])
    scores = EmotionClassifier(float_bundle).predict(faces)
    keras = open_scorer(tiny_run).predict(faces)
    assert np.allclose(scores.sum(1), 1.0, atol=1e-3) and np.allclose(scores, keras, atol=1e-3)


def test_int8_model_agrees_with_float_tflite_on_most_inputs(exported_bundle, tiny_run):
    rng = np.random.default_rng(7)
    faces = np.stack([synthetic_face(label % 6, rng) for label in range(60)])
    int8 = EmotionClassifier(load_bundle(exported_bundle)).predict(faces)
    assert int8.shape == (60, 7) and np.allclose(int8.sum(1), 1.0, atol=0.05)
    labels = np.array([label % 6 for label in range(60)])
    assert (int8.argmax(1) == labels).mean() > 0.5  # chance is 1/6


def test_int8_keeps_the_range_of_every_channel_attention_output(tiny_run, exported_bundle):
    """An INT8 max ties its input's quantization to its output's: CBAM's channel-wise max taken of the
    channel-attention output clipped 2-16 % of that output's (negative) values in the shipped network. Here every
    ``*_ca_scale`` tensor of the post-training INT8 model must hold the float model's values, on faces the run
    was calibrated for, to within 1 % of them."""
    from ai_edge_litert.interpreter import Interpreter

    from trainer.data.pipeline import eval_dataset
    from trainer.run.folder import RunDir

    spec = RunDir(tiny_run).load_config().preprocess
    rng = np.random.default_rng(5)
    faces = np.stack([synthetic_face(label % 6, rng) for label in range(12)])
    inputs = np.concatenate([batch.numpy() for batch in eval_dataset(faces, spec)])
    models = {}
    for kind in ("float_tflite", "ptq_int8"):
        models[kind] = Interpreter(str(tiny_run / "export" / f"{kind}.tflite"), experimental_preserve_all_tensors=True)
        models[kind].allocate_tensors()
    int8 = models["ptq_int8"]
    attention = {d["name"].split(";")[0]: d for d in int8.get_tensor_details() if "_ca_scale" in d["name"]}
    floats = {d["name"].split(";")[0]: d["index"] for d in models["float_tflite"].get_tensor_details()}
    assert attention and set(attention) <= set(floats)
    outside, total = 0, 0
    for x in inputs:
        models["float_tflite"].set_tensor(models["float_tflite"].get_input_details()[0]["index"], x[None])
        models["float_tflite"].invoke()
        for name, d in attention.items():
            value = models["float_tflite"].get_tensor(floats[name])
            scale, zero = d["quantization"]
            low, high = (-128 - zero - 0.5) * scale, (127 - zero + 0.5) * scale
            outside += int(((value < low) | (value > high)).sum())
            total += value.size
    assert outside / total < 0.01, f"{outside / total:.1%} of the channel-attention outputs fall outside their INT8 range"


def test_classifier_batches_any_number_of_faces(exported_bundle):
    classifier = EmotionClassifier(load_bundle(exported_bundle), tta_flip=True)
    rng = np.random.default_rng(0)
    one = classifier.predict(np.stack([synthetic_face(3, rng)]))
    three = classifier.predict(np.stack([synthetic_face(3, rng) for _ in range(3)]))
    assert one.shape == (1, 7) and three.shape == (3, 7)
    assert classifier.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def _broken(exported_bundle, tmp_path, change):
    copy = tmp_path / "bundle"
    shutil.copytree(exported_bundle, copy)
    change(copy)
    return copy


def _edit_manifest(edit):
    def change(path):
        manifest = json.loads((path / "manifest.json").read_text())
        edit(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest))
    return change


@pytest.mark.parametrize("change, message", [
    (lambda p: (p / "model.tflite").unlink(), "missing model.tflite"),
    (lambda p: (p / "notes.txt").write_text("hi"), "unexpected files notes.txt"),
    (lambda p: (p / "model.tflite").write_bytes((p / "model.tflite").read_bytes()[:-10] + b"0123456789"), "checksum"),
    (lambda p: (p / "manifest.json").write_text("{not json"), "not JSON"),
    (_edit_manifest(lambda m: m.update(schema_version=99)), "schema version 99"),
    (_edit_manifest(lambda m: m.pop("classes")), "classes"),
    (_edit_manifest(lambda m: m["input"].update(scale=0.5)), "does not match the model"),
    (_edit_manifest(lambda m: m["preprocessing"]["spec"].update(blur=3)), "preprocessing/spec"),
])
def test_broken_bundles_are_refused_with_one_line(exported_bundle, tmp_path, change, message):
    with pytest.raises(UserError, match=message) as info:
        load_bundle(_broken(exported_bundle, tmp_path, change))
    assert "\n" not in str(info.value)


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_bundle(tmp_path / "nothing")


def test_edge_modules_do_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, edge.model.bundle, edge.model.classifier, edge.model.detect, edge.model.preprocess; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'torch') if m in sys.modules]; sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
