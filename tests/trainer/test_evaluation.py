"""Evaluation as the device runs: test-time views, the run folder, copies of Training images, bundles' float weights."""

import csv
import hashlib
import json
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
from synthetic import synthetic_face

from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from trainer.data.datasets import copies_in_training, load_dataset
from trainer.evaluate.evaluate import evaluate
from trainer.evaluate.predict import load_trained, open_scorer, tflite_predictor
from trainer.fit.loop import fit
from trainer.model.views import shifted, views
from trainer.run.config import config_from_dict, load_config
from trainer.run.folder import RunDir, init_weights_path


def _faces(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_face(i % 6, rng) for i in range(n)])


def test_views_are_one_pass_mirror_and_corner_crops():
    faces = np.arange(2 * 48 * 48, dtype=np.uint16).reshape(2, 48, 48).astype(np.uint8)
    assert [v.shape for v in views(faces, "none", 4)] == [(2, 48, 48)]
    none, mirror = views(faces, "flip", 4)
    assert np.array_equal(none, faces) and np.array_equal(mirror, faces[:, :, ::-1])
    assert len(list(views(faces, "crops", 4))) == 5 and len(list(views(faces, "flip-crops", 4))) == 10
    corner = shifted(faces, 4, -4)
    assert np.array_equal(corner[:, 4:44, 4:44], faces[:, 8:48, 0:40])  # a crop model's window sees that corner


def test_flip_is_exactly_the_devices_tta_flip(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    cfg = config_from_dict(bundle.manifest["training"]["config"])  # an older manifest: its tta_flip key is dropped
    faces = _faces(12)
    for tta, device_flip in (("none", False), ("flip", True)):
        ours = tflite_predictor(bundle.model_bytes, cfg, tta=tta)(faces)
        device = EmotionClassifier(bundle, tta_flip=device_flip).predict(faces)
        assert np.allclose(ours, device, atol=1e-6)


def test_retired_tta_flip_key_is_refused_with_the_new_way():
    with pytest.raises(UserError, match="trainer evaluate --tta flip"):
        load_config("ckplus", overrides=[{"tta_flip": True}])


def test_run_folder_knows_its_files(tiny_run):
    run = RunDir(tiny_run)
    assert run.is_run and [f.name for f in run.trained_folds()] == ["random"]
    fold = run.fold("random")
    assert fold.done and fold.best.is_file() and fold.last.is_file() and fold.history.is_file()
    assert run.fold_or_first("fold-03") == fold  # a single-fold run teaches every fold of a k-fold student
    assert init_weights_path(tiny_run) == fold.best
    assert run.load_config().model.width == 8


def test_evaluate_says_its_test_time_averaging(tiny_run, tmp_path):
    one = evaluate(tiny_run, None, None, None, False, tmp_path / "one.json", log=lambda *a: None)
    lines = []
    flip = evaluate(tiny_run, None, None, None, False, tmp_path / "flip.json", tta="flip", log=lines.append)
    assert one["tta"] == "none" and flip["tta"] == "flip" and one["n"] == flip["n"]
    assert json.loads((tmp_path / "flip.json").read_text())["tta_description"].startswith("tta flip (face and mirror")
    assert "tta flip" in lines[-2].splitlines()[0]  # the table's title line
    with pytest.raises(UserError, match="unknown test-time averaging"):
        evaluate(tiny_run, None, None, None, False, None, tta="ten", log=lambda *a: None)


def test_copies_of_training_images_are_found_by_their_pixels(tmp_path):
    faces = _faces(6)
    path = tmp_path / "fer2013.csv"
    rows = [(faces[i], "Training") for i in range(4)] + [(faces[1], "PublicTest"), (faces[5], "PublicTest")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([i % 6, " ".join(map(str, face.ravel())), usage] for i, (face, usage) in enumerate(rows))
    dataset = load_dataset("fer2013", path)
    assert copies_in_training(dataset, np.array([4, 5])).tolist() == [True, False]
    assert copies_in_training(dataset, np.array([0, 4])) is None  # Training images themselves: no such view


def test_bundle_report_has_the_view_without_training_copies(tiny_bundle, tmp_path):
    faces = _faces(10, 4)
    path = tmp_path / "fer2013.csv"
    usage = ["Training"] * 6 + ["PublicTest"] * 4
    images = list(faces[:6]) + [faces[0], faces[2], faces[8], faces[9]]  # two PublicTest images are Training copies
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([i % 6, " ".join(map(str, face.ravel())), u] for i, (face, u) in enumerate(zip(images, usage)))
    lines = []
    report = evaluate(tiny_bundle, "fer2013", str(path), "PublicTest", False, None, log=lines.append)
    assert report["n"] == 4 and report["without_training_copies"]["excluded"] == 2
    assert report["without_training_copies"]["n"] == 2
    assert "without the 2 images that have an exact copy in Training" in lines[-1]


def test_fer2013_publictest_has_280_copies_of_training_images(shared_data):
    dataset = load_dataset("fer2013", shared_data)
    assert copies_in_training(dataset, np.flatnonzero(dataset.usage == "PublicTest")).sum() == 280  # SOURCES.md


def test_bundle_ships_float_weights_that_warm_start_a_run(exported_bundle, tiny_run, tmp_path):
    manifest = load_bundle(exported_bundle).manifest
    weights = exported_bundle / "float.weights.h5"
    assert manifest["float_weights"] == {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                                         "bytes": weights.stat().st_size}
    assert init_weights_path(exported_bundle) == weights
    with h5py.File(weights) as shipped, h5py.File(tiny_run / "random" / "best.weights.h5") as checkpoint:
        assert "optimizer" in checkpoint and "optimizer" not in shipped  # the layers' weights only: half the size

    parent_cfg = RunDir(tiny_run).load_config()
    cfg = replace(parent_cfg, init=str(exported_bundle), epochs=1, schedule=replace(parent_cfg.schedule, lr=0.0))
    lines = []
    fit(cfg, tmp_path / "fine-tuned", log=lines.append)
    assert any(line == f"warm start from {weights}" for line in lines)
    parent = load_trained(cfg, weights)
    child = load_trained(cfg, RunDir(tmp_path / "fine-tuned").fold("random").best)
    kernels = [(a, b) for a, b in zip(parent.weights, child.weights) if "kernel" in a.name]
    assert kernels and all(np.array_equal(a.numpy(), b.numpy()) for a, b in kernels)  # LR 0: still the bundle's


def test_tampered_or_missing_float_weights_are_refused(exported_bundle, tiny_bundle, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(exported_bundle, tampered)
    data = (tampered / "float.weights.h5").read_bytes()
    (tampered / "float.weights.h5").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="does not match the checksum"):
        init_weights_path(tampered)
    with pytest.raises(UserError, match="ships no float.weights.h5"):
        init_weights_path(tiny_bundle)


def test_a_bundle_scores_through_litert_with_its_recorded_config(tiny_bundle):
    scorer = open_scorer(tiny_bundle, tta="flip")
    assert scorer.identity == load_bundle(tiny_bundle).manifest["tflite"]["sha256"]
    assert "tta flip" in scorer.description and scorer.predict(_faces(3)).shape == (3, 7)
