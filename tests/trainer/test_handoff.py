"""Teachers trained without TensorFlow: the faces archive out, the teacher labels file back, and the check that the
labels meet exactly the faces, preprocessing and classes of the student that learns from them."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import TEST_DATA
from synthetic import TINY_RUN_OVERRIDES

from edge.errors import UserError
from trainer.cli import main
from trainer.data.experiment import load_experiment
from trainer.fit.distill import teacher_probabilities
from trainer.gpu.handoff import (
    TeacherLabels,
    images_digest,
    read_faces,
    read_labels,
    read_student,
    write_faces,
    write_labels,
    write_student,
)
from trainer.run.config import load_config
from trainer.run.folder import FoldDir, RunDir


@pytest.fixture(scope="module")
def ck_config(synthetic_ck):
    return load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck)}])


@pytest.fixture(scope="module")
def archive_path(synthetic_ck, tmp_path_factory):
    path = tmp_path_factory.mktemp("handoff") / "faces.npz"
    assert main(["faces", "--dataset", "ckplus", "--data", str(synthetic_ck), "--set", "protocol=random",
                 "--out", str(path)]) == 0
    return path


def test_the_archive_holds_the_faces_fit_trains_on_exactly(archive_path, ck_config):
    experiment = load_experiment(ck_config, log=lambda *a: None)
    fold = experiment.folds[0]
    archive = read_faces(archive_path)
    assert np.array_equal(archive.train, experiment.faces[fold.train])  # lossless, same order
    assert np.array_equal(archive.val, experiment.faces[fold.val])
    assert np.array_equal(archive.train_labels, experiment.labels[fold.train])
    assert archive.preprocess == ck_config.preprocess.to_dict() and len(archive.classes) == 7


def test_a_damaged_or_foreign_archive_is_refused_in_one_line(archive_path, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="is not a fer-edge faces archive"):
        read_faces(tmp_path / "junk.npz")
    archive = read_faces(archive_path)
    damaged = archive.train.copy()
    damaged[0, 0, 0] ^= 1
    write_faces(tmp_path / "damaged.npz", replace(archive, train=damaged))
    mixed = {**dict(np.load(archive_path)), "faces": np.load(tmp_path / "damaged.npz")["faces"]}
    np.savez(tmp_path / "mixed.npz", **mixed)  # the damaged faces under the good archive's digest
    with pytest.raises(UserError, match="do not match their recorded digest"):
        read_faces(tmp_path / "mixed.npz")
    np.savez(tmp_path / "partial.npz", meta=mixed["meta"])
    with pytest.raises(UserError, match="lacks"):
        read_faces(tmp_path / "partial.npz")


def _labels_for(faces: np.ndarray, classes: int, preprocess: dict, probabilities=None) -> TeacherLabels:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes), len(faces)).astype(np.float32) if probabilities is None else probabilities
    return TeacherLabels(probs, images_digest(faces), preprocess, "flip-crops", "test teachers", {"teachers": []})


def test_a_labels_file_teaches_the_faces_it_was_made_for(archive_path, ck_config, tmp_path):
    archive = read_faces(archive_path)
    labels = _labels_for(archive.train, 7, archive.preprocess)
    write_labels(tmp_path / "teachers.npz", labels, fold=np.zeros(len(archive.train), np.int64))
    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": ck_config.data,
                                            "distill": {"teachers": [str(tmp_path / "teachers.npz")]}}])
    lines = []
    probs = teacher_probabilities(cfg, FoldDir(tmp_path / "random"), archive.train, lines.append)
    assert np.allclose(probs, labels.probabilities) and "test teachers" in lines[0]
    assert not (tmp_path / "random" / "teachers").exists()  # nothing to cache: the file is the cache
    with pytest.raises(UserError, match="labels other images"):
        teacher_probabilities(cfg, FoldDir(tmp_path), archive.train[::-1].copy())
    other = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": ck_config.data,
                                              "preprocess": {"gamma_target": 0.4},
                                              "distill": {"teachers": [str(tmp_path / "teachers.npz")]}}])
    with pytest.raises(UserError, match="other preprocessing"):
        teacher_probabilities(other, FoldDir(tmp_path), archive.train)


@pytest.mark.parametrize("probabilities, message", [
    (np.full((4, 7), 0.5, np.float32), "rows that sum to 1"),
    (np.full((4, 7), np.nan, np.float32), "rows that sum to 1"),
    (np.full(4, 1.0, np.float32), "rows that sum to 1"),
])
def test_bad_labels_files_are_refused_in_one_line(tmp_path, probabilities, message):
    faces = np.zeros((4, 48, 48), np.uint8)
    write_labels(tmp_path / "teachers.npz", _labels_for(faces, 7, {}, probabilities))
    with pytest.raises(UserError, match=message):
        read_labels(tmp_path / "teachers.npz")


def test_fit_refuses_a_file_that_is_no_labels_file_before_loading_data(archive_path, synthetic_ck, tmp_path, capfd):
    args = ["fit", "--dataset", "ckplus", "--data", str(synthetic_ck), "--out", str(tmp_path / "r")]
    assert main(args + ["--teacher", str(archive_path)]) == 2  # a faces archive is not a labels file
    assert "is not a fer-edge teacher labels file" in capfd.readouterr().err.strip().splitlines()[-1]
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 64)
    assert main(args + ["--teacher", str(tmp_path / "junk.npz")]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "is not a fer-edge teacher labels file" in err.strip().splitlines()[-1]


torch_missing = importlib.util.find_spec("torch") is None


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU teachers' trainer needs it; "
                    "pip install torch to run this test)")
def test_cross_fitted_teachers_label_every_training_face_with_a_teacher_that_never_saw_it(archive_path, ck_config,
                                                                                            tmp_path):
    out = tmp_path / "teachers.npz"
    result = subprocess.run([sys.executable, "-m", "trainer.gpu.teachers", str(archive_path), "--out", str(out),
                             "--epochs", "3", "--folds", "2", "--width", "8", "--batch", "16"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    archive, labels = read_faces(archive_path), read_labels(out)
    data = np.load(out)
    fold, per_teacher = data["fold"], data["teacher_train_probabilities"]
    assert per_teacher.shape == (2, len(archive.train), 7) and set(fold) == {0, 1}
    assert np.array_equal(labels.probabilities, per_teacher[fold, np.arange(len(fold))])  # each face: its held-out teacher
    for k in (0, 1):  # stratified: each class is split evenly between the parts
        assert abs((fold == k).sum() - len(fold) / 2) <= 7
    assert labels.details["ensemble"]["cross_fitted_train_accuracy"] == pytest.approx(
        float((labels.probabilities.argmax(1) == archive.train_labels).mean()))
    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": ck_config.data,
                                            "distill": {"teachers": [str(out)]}}])
    assert np.allclose(teacher_probabilities(cfg, FoldDir(tmp_path / "random"), archive.train), labels.probabilities)


AUGMENTATION_CHECK = """
import numpy as np, torch
from trainer.gpu.faces import augment, views
from trainer.model.views import views as trainer_views
x = torch.rand(32, 1, 48, 48)
crops = augment(x, rotation=0.0, zoom=0.0, erasing=0.0)
for face, crop in zip(x[:, 0], crops[:, 0]):
    candidates = [face[dy:dy + 40, dx:dx + 40] for dy in range(9) for dx in range(9)]
    assert any(torch.allclose(crop, c, atol=1e-5) or torch.allclose(crop, c.flip(-1), atol=1e-5) for c in candidates)
faces = (np.random.default_rng(0).random((3, 48, 48)) * 255).astype(np.uint8)
ours = views(torch.from_numpy(faces).unsqueeze(1), "flip-crops")
theirs = [v[:, 4:44, 4:44] for v in trainer_views(faces, "flip-crops", 4)]
assert sorted(c.numpy()[:, 0].tobytes() for c in ours) == sorted(t.tobytes() for t in theirs)
"""


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed")
def test_teacher_augmentation_without_rotation_or_zoom_is_an_exact_crop_and_the_views_are_the_trainers():
    # in a process of its own, like every PyTorch test here: PyTorch and TensorFlow in one process can crash it
    result = subprocess.run([sys.executable, "-c", AUGMENTATION_CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fixture", ["gpu-student-w4.npz", "gpu-student-d10-w4.npz"])
def test_the_keras_model_computes_what_the_gpu_student_computed_from_the_same_weights(fixture):
    """tests/data/gpu-student-*.npz: a PyTorch student's weights (ResNet-18 and ResNet-10) and its logits on six faces
    (from tests/data/make_gpu_student_fixture.py); the Keras model built from the file must give the same logits."""
    from edge.model.preprocess import PreprocessSpec, normalize
    from trainer.fit.import_weights import load_layers
    from trainer.model.resnet import ModelConfig, build_model

    path = TEST_DATA / fixture
    weights = read_student(path)
    model = build_model(ModelConfig(**weights.model))
    load_layers(model, weights.layers, path)
    with np.load(path) as data:
        faces, expected = data["test_faces"], data["test_logits"]
    logits = model(normalize(faces, PreprocessSpec(**weights.preprocess)), training=False).numpy()
    tolerance = 1e-4 * max(1.0, np.abs(expected).max())
    assert np.abs(logits - expected).max() < tolerance
    # a real check, not two constant models: logits that differ between classes, and between faces by far more
    # than the tolerance
    assert expected.std() > 0.05 and expected.std(axis=0).max() > 10 * tolerance


def test_weights_that_do_not_fit_the_model_are_refused_in_one_line(tmp_path):
    from trainer.fit.import_weights import load_layers
    from trainer.model.resnet import ModelConfig, build_model

    weights = read_student(TEST_DATA / "gpu-student-w4.npz")
    model = build_model(ModelConfig(**weights.model))
    del weights.layers["logits"]
    with pytest.raises(UserError, match=r"missing layers \['logits'\]"):
        load_layers(model, weights.layers, tmp_path / "w.npz")
    wider = build_model(ModelConfig(**{**weights.model, "width": 8}))
    with pytest.raises(UserError, match="has weights of shapes"):
        load_layers(wider, read_student(TEST_DATA / "gpu-student-w4.npz").layers, tmp_path / "w.npz")


def test_import_weights_makes_a_run_that_evaluate_and_warm_starts_take(synthetic_ck, tmp_path):
    out = tmp_path / "imported"
    assert main(["import-weights", str(TEST_DATA / "gpu-student-w4.npz"), "--data", str(synthetic_ck),
                 "--out", str(out)]) == 0
    assert (out / "config.yaml").is_file() and (out / "random" / "best.weights.h5").is_file()
    assert (out / "random" / "report.json").is_file() and (out / "summary.json").is_file()
    assert main(["evaluate", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert main(["fit", "--dataset", "ckplus", "--data", str(synthetic_ck), "--init", str(out), "--protocol", "random",
                 "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "warm")]) == 0
    assert RunDir(tmp_path / "warm").load_config().model.width == 4  # the imported network handed down
    assert main(["import-weights", str(TEST_DATA / "gpu-student-w4.npz"), "--data", str(synthetic_ck),
                 "--out", str(out)]) == 2  # never over an existing run


def test_an_imported_run_records_the_gpu_recipe_and_refuses_a_damaged_one(synthetic_ck, tmp_path, capsys):
    weights = read_student(TEST_DATA / "gpu-student-w4.npz")
    recipe = {"batch": 256, "seed": 1, "lr": 0.1, "weight_decay": 5e-4, "label_smoothing": 0.1, "warmup": 2,
              "teacher": None, "temperature": 4.0, "alpha": 0.9,
              "augment": {"flip": True, "shift": 0.0, "rotation": 10.0, "zoom": 0.1, "erasing": 0.5, "mixup": 0.2}}
    write_student(tmp_path / "s.npz", replace(weights, details=weights.details | {"recipe": recipe}))
    assert main(["import-weights", str(tmp_path / "s.npz"), "--data", str(synthetic_ck), "--out", str(tmp_path / "a")]) == 0
    cfg = RunDir(tmp_path / "a").load_config()
    assert (cfg.epochs, cfg.seed, cfg.schedule.lr, cfg.augment.mixup, cfg.augment.shift, cfg.distill.teachers) == (
        len(weights.details["history"]), 1, 0.1, 0.2, 0.0, [])
    write_student(tmp_path / "s.npz", replace(weights, details=["not", "an", "object"]))
    capsys.readouterr()
    assert main(["import-weights", str(tmp_path / "s.npz"), "--data", str(synthetic_ck), "--out", str(tmp_path / "c")]) == 2
    assert "must be JSON objects" in capsys.readouterr().err.strip().splitlines()[-1]
    for i, (damaged, message) in enumerate([({k: v for k, v in recipe.items() if k != "lr"}, "lacks 'lr'"),
                                            (recipe | {"augment": "crops"}, "recipe lacks"),
                                            (recipe | {"lr": "fast"}, "schedule.lr")]):
        write_student(tmp_path / "s.npz", replace(weights, details=weights.details | {"recipe": damaged}))
        capsys.readouterr()
        assert main(["import-weights", str(tmp_path / "s.npz"), "--data", str(synthetic_ck),
                     "--out", str(tmp_path / f"b{i}")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0]


def test_a_bundle_from_an_imported_run_says_where_it_trained(synthetic_ck, tmp_path, capsys):
    run = tmp_path / "imported"
    assert main(["import-weights", str(TEST_DATA / "gpu-student-w4.npz"), "--data", str(synthetic_ck),
                 "--out", str(run)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "bundle"), "--int8", "ptq",  # as README's recipe
                 "--representative", "16"]) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["trained_on"].startswith(read_student(TEST_DATA / "gpu-student-w4.npz").details["device"])
    (run / "random" / "imported.json").write_text("{not json")
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "again"), "--qat-epochs", "1"]) == 2
    assert "imported.json is damaged" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU student's trainer needs it)")
def test_a_gpu_student_distils_from_cross_fitted_labels_and_comes_back_as_a_run(archive_path, synthetic_ck, tmp_path):
    labels = tmp_path / "teachers.npz"
    student = tmp_path / "student.npz"
    for module, args in (("trainer.gpu.teachers", ["--out", str(labels), "--folds", "2", "--width", "4"]),
                         ("trainer.gpu.student", ["--out", str(student), "--teacher", str(labels),
                                                  "--model", '{"width": 4, "crop": 40}'])):
        result = subprocess.run([sys.executable, "-m", module, str(archive_path), *args, "--epochs", "3",
                                 "--batch", "16"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert "distilling from" in result.stdout
    weights = read_student(student)
    assert weights.model["width"] == 4 and len(weights.details["history"]) == 3
    assert main(["import-weights", str(student), "--data", str(synthetic_ck), "--out", str(tmp_path / "run")]) == 0
    cfg = RunDir(tmp_path / "run").load_config()  # the run says how the GPU trained it
    assert (cfg.epochs, cfg.batch_size, cfg.distill.teachers, cfg.augment.erasing) == (3, 16, [str(labels)], 0.5)
    assert cfg.ema == 0.999 and set(weights.details["val_accuracy_last_epoch"]) == {"none", "flip-crops"}
    result = subprocess.run([sys.executable, "-m", "trainer.gpu.student", str(archive_path), "--out", str(student),
                             "--model", '{"crop": 0}', "--epochs", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "model.crop must be 40" in result.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU trainers need it)")
@pytest.mark.parametrize("module", ["trainer.gpu.teachers", "trainer.gpu.student"])
def test_the_gpu_commands_refuse_a_bad_archive_in_one_line(module, tmp_path):
    (tmp_path / "faces.npz").write_bytes(b"junk")
    result = subprocess.run([sys.executable, "-m", module, str(tmp_path / "faces.npz"), "--out", str(tmp_path / "o.npz")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a fer-edge faces archive" in result.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU trainers need it)")
def test_a_budgeted_run_fits_its_epochs_into_the_time_left(archive_path, tmp_path):
    student = tmp_path / "student.npz"
    result = subprocess.run([sys.executable, "-m", "trainer.gpu.student", str(archive_path), "--out", str(student),
                             "--model", '{"width": 4, "crop": 40}', "--batch", "16", "--minutes", "0.1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    history = read_student(student).details["history"]
    assert len(history) >= 3 and result.stdout.count("s an epoch") == (2 if len(history) > 5 else 1)
    pace = float(np.median([h["seconds"] for h in history[1:5]]))
    assert sum(h["seconds"] for h in history) < 6.0 + 2 * pace  # the budget, give or take the last epochs' noise


AVERAGE_CHECK = """
import torch
from torch import nn
from trainer.gpu.loop import Average
model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
average = Average(model, decay=0.99)
before = {k: v.clone() for k, v in average.model.state_dict().items()}
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
model.train()(torch.randn(4, 1, 8, 8))  # moves the batch-norm statistics and counts a step
average.update()  # the first step's decay is (1 + 0) / (10 + 0) = 0.1 (the warm-up), not 0.99
for key, now in model.state_dict().items():
    if key.endswith("num_batches_tracked"):
        assert average.model.state_dict()[key] == 0 and now == 1
    else:
        assert torch.allclose(average.model.state_dict()[key], 0.1 * before[key] + 0.9 * now), key
assert all(not p.requires_grad for p in average.model.parameters()) and not average.model.training
"""


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU trainers need it)")
def test_the_gpu_weight_average_follows_every_weight_and_batch_norm_statistic_with_the_warming_up_decay():
    result = subprocess.run([sys.executable, "-c", AVERAGE_CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU trainers need it)")
def test_without_averaging_the_student_keeps_its_last_weights_and_a_bad_decay_is_refused(archive_path, tmp_path):
    student, common = tmp_path / "s.npz", [sys.executable, "-m", "trainer.gpu.student", str(archive_path),
                                          "--model", '{"width": 4, "crop": 40}', "--epochs", "1", "--batch", "16"]
    result = subprocess.run(common + ["--out", str(student), "--ema", "0"], capture_output=True, text=True)
    assert result.returncode == 0 and "(last epoch, float" in result.stdout, result.stderr
    details = read_student(student).details
    assert details["recipe"]["ema"] == 0 and details["val_accuracy_last_epoch"] == details["val_accuracy"]
    result = subprocess.run(common + ["--out", str(student), "--ema", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "must be below 1" in result.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed (the GPU trainers need it)")
@pytest.mark.parametrize("model, message", [("[1]", "a JSON object"), ("{bad", "not JSON"),
                                            ('{"colour": 1}', "unknown keys ['colour']"),
                                            ('{"width": "wide"}', "must have the types"),
                                            ('{"width": 0, "crop": 40}', "must be positive")])
def test_the_student_refuses_a_bad_model_in_one_line(archive_path, tmp_path, model, message):
    result = subprocess.run([sys.executable, "-m", "trainer.gpu.student", str(archive_path), "--out",
                             str(tmp_path / "s.npz"), "--model", model, "--epochs", "1"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("text, ok", [("0", True), ("0.5", True), ("-0.1", False), ("nan", False), ("inf", False),
                                      ("x", False)])
def test_non_negative_numbers_for_the_gpu_flags(text, ok):
    import argparse

    from edge.commandline import non_negative_float

    if ok:
        assert non_negative_float(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="is not a finite number >= 0"):
            non_negative_float(text)
