"""Distillation: the loss, cached teacher targets (run or bundle teachers), and a student that learns from its teacher."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from synthetic import TINY_RUN_OVERRIDES, synthetic_face

from edge.errors import UserError
from trainer.evaluate.predict import keras_predictor, load_trained, open_scorer
from trainer.fit.distill import DistillationLoss, teacher_probabilities
from trainer.fit.loop import fit
from trainer.gpu.handoff import soften
from trainer.model.resnet import build_model
from trainer.run.config import load_config
from trainer.run.folder import FoldDir, RunDir


def test_loss_is_smoothed_ce_plus_t_squared_kl():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    labels = np.eye(7, dtype=np.float32)[rng.integers(0, 7, 5)]
    teacher = soften(rng.dirichlet(np.ones(7), 5), 2.0)
    loss = DistillationLoss(7, temperature=2.0, alpha=0.75, label_smoothing=0.1)
    smoothed = labels * 0.9 + 0.1 / 7
    ce = -(smoothed * tf.nn.log_softmax(logits).numpy()).sum(1)
    student = tf.nn.log_softmax(logits / 2.0).numpy()
    kl = (teacher * (np.log(teacher) - student)).sum(1)
    expected = (0.25 * ce + 0.75 * 4.0 * kl).mean()
    assert float(loss(np.concatenate([labels, teacher], 1), logits)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(labels, logits)) == pytest.approx(ce.mean(), rel=1e-5)  # validation rows: labels only


def test_soften_is_a_temperature_on_the_teachers_logits():
    probs = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(soften(probs, 1.0), probs)
    assert np.allclose(soften(probs, 2.0), np.sqrt(probs) / np.sqrt(probs).sum())
    assert soften(probs, 4.0).max() < soften(probs, 2.0).max()  # hotter is flatter


@pytest.fixture(scope="module")
def rotated_teacher(tiny_run, tmp_path_factory):
    """The tiny run with its answers rotated (class c -> c + 1 mod 6): a teacher the labels disagree with,
    so a student that agrees with it can only have learned it from the teacher."""
    out = tmp_path_factory.mktemp("teachers") / "rotated"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("backup", "export"))
    cfg = RunDir(out).load_config()
    model = build_model(cfg.model)
    model.load_weights(str(FoldDir(out / "random").best))
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    order = [5, 0, 1, 2, 3, 4, 6]  # new column c+1 takes old column c, among the 6 CK+ classes
    logits.set_weights([kernel[:, order], bias[order]])
    model.save_weights(str(FoldDir(out / "random").best))
    return out


def _faces(n: int, seed: int):
    """Generated gratings; their class is an orientation, so a mirror changes it: no flip views or flip augmentation."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 6
    return np.stack([synthetic_face(int(label), rng) for label in labels]), labels


def test_rotated_teacher_answers_the_next_class(tiny_run, rotated_teacher):
    faces, _ = _faces(60, 1)
    original = open_scorer(tiny_run).predict(faces).argmax(1)
    rotated = open_scorer(rotated_teacher).predict(faces).argmax(1)
    assert np.array_equal(rotated, np.where(original < 6, (original + 1) % 6, original))


def test_student_learns_from_its_teacher_and_resume_reuses_the_cached_targets(synthetic_ck, rotated_teacher, tmp_path,
                                                                             monkeypatch):
    from test_training import Interrupt

    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck), "epochs": 6,
                                            "augment": {**TINY_RUN_OVERRIDES["augment"], "mixup": 0.2},
                                            "distill": {"teachers": [str(rotated_teacher)], "alpha": 1.0,
                                                        "temperature": 2.0, "tta": "none"}}])
    out = tmp_path / "student"
    with monkeypatch.context() as m:
        m.setattr(keras.callbacks, "CSVLogger", Interrupt)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, out, log=lambda *a: None)
    cached = sorted((out / "random" / "teachers").glob("*.npz"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    lines = []
    fit(cfg, out, resume=True, log=lines.append)
    assert any("cached targets" in line for line in lines) and not any("labelling" in line for line in lines)
    assert cached[0].stat().st_mtime_ns == written
    faces, labels = _faces(120, 2)
    # the last weights: checkpoint selection scores against the labels, which this teacher contradicts on purpose
    student = keras_predictor(load_trained(cfg, FoldDir(out / "random").last), cfg)(faces).argmax(1)
    teacher = open_scorer(rotated_teacher).predict(faces).argmax(1)
    # alpha = 1: it never saw a label's gradient. A student of the labels would agree with this teacher almost
    # never (the teacher answers the next class), chance is 1/6; after 6 epochs with mixup the agreement is
    # 0.45-0.73 in four runs (the tiny teacher itself is trained anew each session), with the labels 0.05-0.13.
    assert (student == teacher).mean() > 0.35
    assert (student == labels).mean() < (student == teacher).mean()


def test_a_bundle_teaches_through_litert_and_its_targets_are_cached(tiny_bundle, synthetic_ck, tmp_path):
    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck),
                                            "distill": {"teachers": [str(tiny_bundle)], "tta": "crops"}}])
    faces, labels = _faces(30, 3)
    lines = []
    probs = teacher_probabilities(cfg, FoldDir(tmp_path / "random"), faces, lines.append)
    assert probs.shape == (30, 7) and np.allclose(probs.sum(1), 1.0, atol=0.01)  # INT8 outputs step by 1/256
    assert (probs.argmax(1) == labels).mean() > 0.5
    assert "labelling 30 training images" in lines[0] and "4 corner crops" in lines[0]
    again = teacher_probabilities(cfg, FoldDir(tmp_path / "random"), faces, lines.append)
    assert np.array_equal(again, probs) and "cached targets" in lines[1]
    other_images = teacher_probabilities(cfg, FoldDir(tmp_path / "random"), faces[::-1].copy(), lines.append)
    assert "labelling" in lines[2] and np.allclose(other_images, probs[::-1], atol=1e-6)
    assert len(list((tmp_path / "random" / "teachers").glob("*.npz"))) == 2


def test_a_teacher_with_other_preprocessing_is_refused(tiny_bundle, synthetic_ck, tmp_path):
    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck), "preprocess": {"gamma_target": 0.4},
                                            "distill": {"teachers": [str(tiny_bundle)]}}])
    with pytest.raises(UserError, match="other preprocessing"):
        teacher_probabilities(cfg, FoldDir(tmp_path), _faces(6, 0)[0])
