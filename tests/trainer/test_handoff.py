"""Teachers trained without TensorFlow: the faces archive out, the teacher labels file back, and the check that the
labels meet exactly the faces, preprocessing and classes of the student that learns from them."""

import importlib.util
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from synthetic import TINY_RUN_OVERRIDES

from edge.errors import UserError
from trainer.cli import main
from trainer.config import load_config
from trainer.distill import teacher_probabilities
from trainer.experiment import load_experiment
from trainer.handoff import TeacherLabels, images_digest, read_faces, read_labels, write_faces, write_labels
from trainer.run import FoldDir


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


@pytest.mark.skipif(torch_missing, reason="PyTorch is not installed")
def test_teacher_augmentation_without_rotation_or_zoom_is_an_exact_crop_and_the_views_are_the_trainers():
    import torch

    from trainer.gpu.common import augment, views
    from trainer.tta import views as trainer_views

    x = torch.rand(32, 1, 48, 48)
    crops = augment(x, rotation=0.0, zoom=0.0, erasing=0.0)
    for face, crop in zip(x[:, 0], crops[:, 0]):
        candidates = [face[dy:dy + 40, dx:dx + 40] for dy in range(9) for dx in range(9)]
        assert any(torch.allclose(crop, c, atol=1e-5) or torch.allclose(crop, c.flip(-1), atol=1e-5) for c in candidates)
    faces = (np.random.default_rng(0).random((3, 48, 48)) * 255).astype(np.uint8)
    ours = views(torch.from_numpy(faces).unsqueeze(1), "flip-crops")
    theirs = [v[:, 4:44, 4:44] for v in trainer_views(faces, "flip-crops", 4)]
    assert sorted(c.numpy()[:, 0].tobytes() for c in ours) == sorted(t.tobytes() for t in theirs)
