"""Dataset loaders in every layout, label mapping, protocols and de-duplication."""

import csv

import cv2
import numpy as np
import pytest
from synthetic import synthetic_face

from edge.errors import UserError
from trainer.data.datasets import load_dataset, training_copies_of
from trainer.data.protocols import make_folds, subject_groups


def test_fer_csv_layout(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for i, usage in enumerate(["Training"] * 5 + ["PublicTest"] * 2 + ["PrivateTest"] * 2):
            writer.writerow([i % 7, " ".join(map(str, synthetic_face(i % 7, rng).ravel())), usage])
    ds = load_dataset("fer2013", path)
    assert len(ds) == 9 and ds.images[0].shape == (48, 48)
    assert list(ds.usage).count("PrivateTest") == 2
    assert "CSV" in ds.source
    fold = make_folds(ds, "official")[0]
    assert fold.test_split == "PrivateTest" and len(fold.train) == 5 and len(fold.val) == 2


def test_fer_folder_layout(tmp_path):
    rng = np.random.default_rng(0)
    for part, usage in (("train", "Training"), ("test", "PublicTest"), ("test", "PrivateTest")):
        for name in ("angry", "happy", "neutral"):
            (tmp_path / part / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / part / name / f"{usage}_{len(name)}{part}.jpg"), synthetic_face(0, rng))
    ds = load_dataset("fer2013", tmp_path)
    assert len(ds) == 9 and set(ds.usage) == {"Training", "PublicTest", "PrivateTest"}
    assert sorted(set(ds.labels.tolist())) == [0, 3, 6]


def test_ck_folder_layout_and_contempt_option(synthetic_ck):
    dropped = load_dataset("ckplus", synthetic_ck)
    assert len(dropped) == 6 * 12 * 3 and 1 in dropped.labels  # disgust present, contempt gone
    assert set(dropped.subjects) == {f"S{i:03d}" for i in range(10, 22)}
    as_neutral = load_dataset("ckplus", synthetic_ck.parent, contempt="neutral")  # parent of CK+48 works too
    assert len(as_neutral) == 7 * 12 * 3 and (as_neutral.labels == 6).sum() == 36
    with pytest.raises(UserError, match="contempt"):
        load_dataset("ckplus", synthetic_ck, contempt="happy")


def test_jaffe_tiff_layout(tmp_path):
    rng = np.random.default_rng(0)
    for subject in ("KA", "KL"):
        for code, number in (("AN", 1), ("HA", 2), ("NE", 3)):
            cv2.imwrite(str(tmp_path / f"{subject}.{code}{number}.{40 + number}.tiff"), synthetic_face(0, rng, 256))
    ds = load_dataset("jaffe", tmp_path)
    assert len(ds) == 6 and not ds.cropped and ds.images[0].shape == (256, 256)
    assert sorted(ds.labels.tolist()) == [0, 0, 3, 3, 6, 6] and set(ds.subjects) == {"KA", "KL"}


def test_corrupt_image_and_bad_paths_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "anger").mkdir()
    (tmp_path / "anger" / "S010_001_00000001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("ckplus", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("jaffe", tmp_path / "missing")
    monkeypatch.delenv("TRAINER_DATA", raising=False)
    with pytest.raises(UserError, match="TRAINER_DATA"):
        load_dataset("fer2013")
    with pytest.raises(UserError, match="no jaffe images"):
        load_dataset("jaffe", tmp_path / "anger")


def test_subject_folds_never_share_a_subject(synthetic_ck):
    ds = load_dataset("ckplus", synthetic_ck)
    folds = make_folds(ds, "subject-kfold", folds=4)
    assert len(folds) == 4
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(len(ds)))  # every image tested exactly once
    for fold in folds:
        sets = [set(ds.subjects[idx]) for idx in (fold.train, fold.val, fold.test)]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(subject_groups(ds.subjects, 0, seed=0)) == 12  # leave-one-subject-out


def test_random_split_is_stratified_80_10_10(synthetic_ck):
    ds = load_dataset("ckplus", synthetic_ck)
    fold = make_folds(ds, "random", seed=3)[0]
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(ds)
    for label in range(6):
        assert (ds.labels[fold.val] == label).sum() == 4  # round(0.1 * 36)
    with pytest.raises(UserError, match="no official split"):
        make_folds(ds, "official")


def test_training_copies_of_evaluation_images():
    faces = np.stack([np.full((4, 4), v, np.uint8) for v in (1, 2, 3, 2, 5)])
    assert training_copies_of(faces, np.array([0, 1, 2]), np.array([3, 4])).tolist() == [1]


def test_real_archives(shared_data):
    fer = load_dataset("fer2013", shared_data)
    assert (fer.usage == "Training").sum() == 28709 and (fer.usage == "PublicTest").sum() == 3589
    assert np.bincount(fer.labels[fer.usage == "Training"]).tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    ck = load_dataset("ckplus", shared_data)
    assert len(ck) == 981 - 54 and len(set(ck.subjects)) == 106  # 12 subjects have only contempt sequences
    assert len(set(load_dataset("ckplus", shared_data, contempt="disgust").subjects)) == 118
    jaffe = load_dataset("jaffe", shared_data)
    assert len(jaffe) == 213 and len(make_folds(jaffe, "subject-kfold", folds=0)) == 10
    assert np.bincount(jaffe.labels).tolist() == [30, 29, 32, 31, 31, 30, 30]
