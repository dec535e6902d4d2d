"""The self-check catches wrong answers: XNNPACK against LiteRT's reference kernels always, golden outputs in the
signed manifest where present, and the face detector on a known face (``edge check``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundles import send_folder

from edge.cli import main as edge_main
from edge.device.config import SHIPPED_BUNDLE
from edge.device.updates import OtaReceiver
from edge.errors import UserError
from edge.model import detect, selfcheck
from edge.model.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, load_bundle, sha256_bytes
from edge.model.litert import load_interpreter
from edge.model.selfcheck import (
    GOLDEN_INPUTS,
    INPUT_NAMES,
    MAX_DIFFERENCE,
    fixed_inputs,
    record_golden,
    reference_probabilities,
    self_check,
    write_golden,
)
from tools.signing import sign_bundle


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def golden_bundle(tiny_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle with golden outputs in its manifest (unsigned)."""
    folder = tmp_path / "tiny-golden"
    shutil.copytree(tiny_bundle, folder)
    write_golden(folder)
    return folder


def final_weights(model: bytes) -> tuple[int, np.ndarray]:
    """The offset in the flatbuffer and the values of the model's last int8 weight matrix (the classifier's)."""
    interpreter = load_interpreter(model)
    n = interpreter.get_output_details()[0]["shape"][-1]
    matrices = [t for t in interpreter.get_tensor_details()
                if np.dtype(t["dtype"]) == np.int8 and len(t["shape"]) == 2 and t["shape"][0] == n]
    weights = interpreter.get_tensor(matrices[-1]["index"]).copy()
    offset = model.find(weights.tobytes())
    assert offset > 0 and model.find(weights.tobytes(), offset + 1) == -1, "the weights are not found once"
    return offset, weights


def altered(folder: Path, key: Path | None) -> Path:
    """The bundle with its classifier's weights negated (it still runs, its answers change), the manifest's checksum
    updated to the new file and, given a key, signed again: a bundle whose signature is fine but whose model is not
    the one its golden outputs were recorded for."""
    model = (folder / MODEL_FILE).read_bytes()
    offset, weights = final_weights(model)
    flipped = np.clip(-weights.astype(np.int16), -127, 127).astype(np.int8).tobytes()
    model = model[:offset] + flipped + model[offset + len(flipped):]
    (folder / MODEL_FILE).write_bytes(model)
    manifest = manifest_of(folder)
    manifest["tflite"] = {"sha256": sha256_bytes(model), "bytes": len(model)}
    write_manifest(folder, manifest)
    (folder / SIGNATURE_FILE).unlink(missing_ok=True)
    if key is not None:
        sign_bundle(folder, key)
    return folder


def test_the_fixed_inputs_are_the_same_bytes_everywhere():
    """Integer arithmetic: the set named GOLDEN_INPUTS is these bytes on every machine; change them, rename it."""
    faces = fixed_inputs(48)
    assert faces.shape == (len(INPUT_NAMES), 48, 48) and faces.dtype == np.uint8
    assert not faces[INPUT_NAMES.index("zeros")].any()
    assert len({face.tobytes() for face in faces}) == len(faces)
    assert hashlib.sha256(faces.tobytes()).hexdigest() == \
        "567829bb6c2f09579ac9547d47bb6ebb05311126ce27c5c3f3003cea2c98786b"
    with pytest.raises(UserError, match="unknown fixed input set"):
        fixed_inputs(48, "other-set-2")


def test_the_shipped_bundle_passes_and_agrees_with_the_reference_kernels():
    checked = self_check(load_bundle(SHIPPED_BUNDLE))
    assert checked.inputs == len(INPUT_NAMES) and checked.reference <= MAX_DIFFERENCE
    assert checked.golden is None or checked.golden <= MAX_DIFFERENCE


def test_edge_check_reports_the_comparisons_and_the_detector(capsys):
    assert edge_main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{SHIPPED_BUNDLE}: ok - model fer2013-resnet18-cbam@")
    assert "of LiteRT's reference kernels on 6 fixed inputs" in out and "detector found 1 face in the known face" in out


def test_recorded_goldens_are_the_reference_kernels_answers_and_pass(golden_bundle):
    bundle = load_bundle(golden_bundle)
    golden = bundle.manifest["golden"]
    assert golden["inputs"] == GOLDEN_INPUTS and len(golden["probabilities"]) == len(INPUT_NAMES)
    reference = reference_probabilities(bundle, fixed_inputs(48))
    assert np.abs(np.array(golden["probabilities"]) - reference).max() < 1e-6
    assert golden == record_golden(golden_bundle)  # deterministic
    checked = self_check(bundle)
    assert checked.golden is not None and checked.golden <= MAX_DIFFERENCE
    assert "golden outputs matched within" in checked.describe()


def test_an_altered_model_signed_again_fails_edge_check(golden_bundle, keys, capsys):
    folder = altered(golden_bundle, keys[0])
    assert edge_main(["check", "--bundle", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge: error: self-check failed: the model's answers differ from the golden outputs in its "
                          "signed manifest by ") and err.count("\n") == 1, err
    # It runs and its kernels agree: without the goldens nothing would have noticed.
    manifest = manifest_of(folder)
    del manifest["golden"]
    write_manifest(folder, manifest)
    assert self_check(load_bundle(folder)).golden is None


def test_an_altered_model_signed_again_is_refused_on_flash(store, golden_bundle, keys):
    manifest = manifest_of(golden_bundle)
    manifest["version"] = "v3"
    write_manifest(golden_bundle, manifest)
    before = store.current()
    result = send_folder(OtaReceiver(store), altered(golden_bundle, keys[0]), name="altered")
    assert result.status == "refused" and "differ from the golden outputs" in result.reason, result
    assert store.current() == before


def test_the_same_bundle_unaltered_is_installed_on_flash(store, golden_bundle, keys):
    manifest = manifest_of(golden_bundle)
    manifest["version"] = "v3"
    write_manifest(golden_bundle, manifest)
    sign_bundle(golden_bundle, keys[0])
    result = send_folder(OtaReceiver(store), golden_bundle, name="golden")
    assert result.installed, result


class ConstantClassifier:
    """A device whose INT8 kernels answer the same valid probabilities whatever the face (what qemu-user 7.2 did)."""

    backend, tta_flip = "litert", False

    def __init__(self, bundle):
        self.n = len(bundle.classes)

    def predict(self, faces):
        return np.full((len(faces), self.n), 1 / self.n, np.float32)


def test_wrong_kernels_fail_without_goldens(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert "golden" not in bundle.manifest
    with pytest.raises(UserError, match="XNNPACK's answers differ from LiteRT's reference kernels by .*compute wrong"):
        self_check(bundle, ConstantClassifier)


def test_golden_outputs_are_strict_and_an_unknown_input_set_is_skipped(golden_bundle, caplog):
    manifest = manifest_of(golden_bundle)
    for golden, problem in (({**manifest["golden"], "tolerance": 1}, "Additional properties"),
                            ({"inputs": GOLDEN_INPUTS, "probabilities": [[2.0, 0.0]]}, "greater than the maximum"),
                            ({"inputs": "../x", "probabilities": [[0.5, 0.5]]}, "not allowed")):
        write_manifest(golden_bundle, {**manifest, "golden": golden})
        with pytest.raises(UserError, match=problem):
            load_bundle(golden_bundle)
    write_manifest(golden_bundle, {**manifest, "golden": {**manifest["golden"], "probabilities": [[0.5, 0.5]]}})
    with pytest.raises(UserError, match="golden outputs are not 6 rows of 7 probabilities"):
        self_check(load_bundle(golden_bundle))
    write_manifest(golden_bundle, {**manifest, "golden": {**manifest["golden"], "inputs": "faces-2"}})
    with caplog.at_level(logging.WARNING, "edge.model.selfcheck"):
        assert self_check(load_bundle(golden_bundle)).golden is None
    assert "input set 'faces-2', which this runtime does not know" in caplog.text


def test_a_missing_detector_file_fails_edge_check(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "face_detection_short_range.tflite"
    monkeypatch.setattr(detect, "SHORT_RANGE", dataclasses.replace(detect.SHORT_RANGE, file=missing))
    assert edge_main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge: error: self-check failed: the auto face detector does not load: cannot load TFLite "
                          f"model {missing}") and err.count("\n") == 1, err


def test_a_detector_that_finds_no_known_face_fails_edge_check(monkeypatch, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    monkeypatch.setattr(selfcheck, "KNOWN_FACE", blank)
    assert edge_main(["check"]) == 2
    assert capsys.readouterr().err == ("edge: error: self-check failed: the auto face detector found no face in "
                                       "blank.png, a known face\n")
    monkeypatch.setattr(selfcheck, "KNOWN_FACE", tmp_path / "gone.jpg")
    assert edge_main(["check"]) == 2
    assert "the known face" in capsys.readouterr().err


def test_the_recording_command_writes_goldens_into_the_manifest(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, folder)
    before = manifest_of(folder)
    assert selfcheck.main(["record", str(folder)]) == 0
    assert "sign it again: tools sign" in capsys.readouterr().out
    after = manifest_of(folder)
    assert after.pop("golden")["inputs"] == GOLDEN_INPUTS and after == before
    assert selfcheck.main(["record", str(tmp_path / "nothing")]) == 2
