"""Recipe levers: random-crop training with the crop in the graph, CutMix, weight averaging (EMA)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from synthetic import TINY_RUN_OVERRIDES

from edge.model.litert import load_interpreter, non_int8_tensors
from trainer.data.augment import augment_batch, cutmix
from trainer.data.experiment import load_experiment
from trainer.data.pipeline import eval_dataset, train_dataset
from trainer.evaluate.reports import read_history
from trainer.export.quantize import quantization_aware, to_tflite_int8
from trainer.fit.averaging import WeightAverage
from trainer.fit.ema import ema_decay
from trainer.fit.loop import compile_model, fit
from trainer.model.resnet import ModelConfig, build_model, with_softmax
from trainer.run.config import AugmentConfig, load_config
from trainer.run.folder import FoldDir

NO_AUGMENT = AugmentConfig(flip=False, shift=0.0, rotation=0.0, zoom=0.0)


def test_crop_model_takes_the_48_px_face_and_runs_at_the_crop():
    model = build_model(ModelConfig(width=8, crop=40))
    assert model.input_shape == (None, 48, 48, 1)
    assert model.get_layer("centre_crop").output_shape == (None, 40, 40, 1)
    plain = build_model(ModelConfig(width=8, input_size=40))
    plain.set_weights(model.get_weights())  # the crop has no weights: checkpoints move between models with and without
    x = np.random.default_rng(0).random((2, 48, 48, 1), np.float32)
    assert np.allclose(model(x), plain(x[:, 4:44, 4:44]), atol=1e-5)  # the centre 40 px, nothing else


def test_crop_jitter_shows_the_model_random_whole_crops_of_the_face():
    x = tf.random.uniform((64, 48, 48, 1), seed=3)
    out = augment_batch(x, NO_AUGMENT, tf.random.Generator.from_seed(0), crop_jitter=4).numpy()
    offsets = set()
    for moved, face in zip(out, x.numpy()):
        window = moved[4:44, 4:44]
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if np.allclose(window, face[dy:dy + 40, dx:dx + 40], atol=1e-5)]
        assert found, "the centre window must be an exact 40 px crop of the face"
        offsets.add(found[0])
    assert len(offsets) > 10  # crops from all over the 9 x 9 positions, not one


def test_crop_model_converts_to_full_int8_with_the_48_px_input():
    keras.utils.set_random_seed(0)
    qat = quantization_aware(with_softmax(build_model(ModelConfig(depth=10, width=8, crop=40, cbam=False))))  # CBAM: test_export
    calibration = np.random.default_rng(0).random((8, 48, 48, 1), np.float32)
    tflite = to_tflite_int8(qat, calibration)
    assert non_int8_tensors(tflite) == []
    assert load_interpreter(tflite).get_input_details()[0]["shape"].tolist() == [1, 48, 48, 1]


def test_cutmix_mixes_targets_by_the_area_actually_pasted():
    classes = np.arange(7)
    x = tf.constant(np.broadcast_to(classes[:, None, None, None], (7, 48, 48, 1)).astype(np.float32))
    y = tf.one_hot(classes, 7)
    rng = tf.random.Generator.from_seed(2)
    for _ in range(5):
        mixed, target = (t.numpy() for t in cutmix(x, y, 1.0, rng))
        assert np.allclose(target.sum(1), 1.0)
        for i in classes:
            assert target[i, i] == pytest.approx((mixed[i] == i).mean())  # its own label keeps its own pixels' share


@pytest.mark.parametrize("mixing", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_teacher_targets_are_mixed_exactly_like_the_labels(mixing):
    """Soft labels follow the mixed images: a teacher that equals the labels stays equal to them after mixing."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 64)
    faces = rng.integers(0, 256, (64, 48, 48), dtype=np.uint8)
    soft = np.eye(7, dtype=np.float32)[labels]
    ds = train_dataset(faces, labels, load_config("ckplus").preprocess, AugmentConfig(**mixing), 16, 7, seed=1, soft=soft)
    for _, y in ds:
        y = y.numpy()
        assert y.shape == (16, 14) and np.allclose(y[:, :7], y[:, 7:]) and np.allclose(y.sum(1), 2.0)
        assert (y[:, :7].max(1) < 1).any()  # something was mixed


def test_ema_decay_warms_up_then_holds():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 10**6) == 0.999


def test_weight_average_update_rule(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    average = WeightAverage(0.9, steps_per_epoch=10, validation=None, fold=FoldDir(tmp_path), best_so_far=None)
    average.set_model(model)
    average.on_train_begin()
    start = model.get_weights()
    model.set_weights([w + 1.0 for w in start])
    average.on_epoch_begin(5)
    average.on_train_batch_end(0)  # step 50: decay min(0.9, 51 / 60) = 0.85
    for shadow, w in zip(average.shadow, start):  # batch-norm statistics are averaged too
        assert np.allclose(shadow.numpy(), w + 0.15)


def test_run_with_crop_cutmix_and_ema_resumes_and_keeps_the_averaged_best(synthetic_ck, tmp_path, monkeypatch):
    from test_training import Interrupt

    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck), "epochs": 4, "ema": 0.9,
                                            "model": {**TINY_RUN_OVERRIDES["model"], "crop": 40},
                                            "augment": {**TINY_RUN_OVERRIDES["augment"], "cutmix": 1.0}}])
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(keras.callbacks, "CSVLogger", Interrupt)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, out, log=lambda *a: None)
    fold = FoldDir(out / "random")
    assert fold.ema.exists() and fold.best.exists()
    summary = fit(cfg, out, resume=True, log=lambda *a: None)
    history = read_history(fold.history)
    assert history["epoch"] == [0, 1, 2, 3] and len(history["val_ema_accuracy"]) == 4
    assert summary["accuracy"] > 1 / 6 and summary["tta"] == "none"
    experiment = load_experiment(cfg, log=lambda *a: None)
    val = experiment.folds[0].val
    best = compile_model(cfg)
    best.load_weights(str(fold.best))
    _, accuracy = best.evaluate(eval_dataset(experiment.faces[val], cfg.preprocess, experiment.labels[val]), verbose=0)
    assert accuracy == pytest.approx(max(history["val_ema_accuracy"]))  # best.weights.h5: the averaged weights' best


def test_a_fold_says_how_long_it_will_take_a_few_batches_in():
    from trainer.fit.loop import TimeEstimate

    said = []
    estimate = TimeEstimate("fold-3", steps=100, epochs=20, folds_left=4, log=said.append)
    for batch in range(100):
        estimate.on_train_batch_end(batch)
    [line] = said
    assert line.startswith("fold-3: about ") and "per epoch of 100 batches" in line and "for 20 epochs" in line
    assert line.endswith("for the 4 folds left")
