"""ResNet+CBAM structure and trainability; augmentation of batches."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.data.augment import augment_batch, mixup
from trainer.model.resnet import ModelConfig, build_model
from trainer.run.config import AugmentConfig


def _names(model, suffix):
    return [layer.name for layer in model.layers if layer.name.endswith(suffix)]


@pytest.mark.parametrize("depth, blocks", [(10, 4), (18, 8), (34, 16), (50, 16)])
def test_cbam_in_every_residual_block(depth, blocks):
    model = build_model(ModelConfig(depth=depth, width=8))
    adds = _names(model, "_add")
    assert len(adds) == blocks
    for add in adds:
        block = add[: -len("_add")]
        assert f"{block}_cbam_ca_scale" in _names(model, "_ca_scale")  # channel attention
        assert f"{block}_cbam_sa_scale" in _names(model, "_sa_scale")  # spatial attention
        assert model.get_layer(f"{block}_cbam_sa_conv").kernel_size == (7, 7)
    assert model.output_shape == (None, 7)


def test_channel_attention_mlp_is_shared_and_reduces_by_16():
    model = build_model(ModelConfig(width=64))
    mlp1 = model.get_layer("s4b1_cbam_ca_mlp1")
    assert mlp1.filters == 512 // 16 and len(mlp1.inbound_nodes) == 2  # applied to avg- and max-pooled
    assert model.get_layer("s1b1_cbam_ca_mlp1").filters == 8  # 64 // 16 = 4, raised to mlp_min_hidden


@pytest.mark.parametrize("stem, size", [("3x3-pool", 24), ("3x3", 48), ("7x7", 12)])
def test_stems(stem, size):
    model = build_model(ModelConfig(width=8, stem=stem))
    assert model.get_layer("s1b1_add").output_shape[1] == size


def test_model_trains():
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(width=8, dropout=0.0))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((32, 48, 48, 1), np.float32)
    y = np.arange(32) % 7
    losses = model.fit(x, y, epochs=15, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < losses[0] * 0.7  # training-mode loss; BN running statistics need more steps


def test_augmentation_off_is_identity_and_flip_mirrors():
    x = tf.random.uniform((8, 48, 48, 1), seed=1)
    rng = tf.random.Generator.from_seed(0)
    off = AugmentConfig(flip=False, shift=0, rotation=0, zoom=0)
    assert np.array_equal(augment_batch(x, off, rng).numpy(), x.numpy())
    flipped = augment_batch(x, AugmentConfig(flip=True, shift=0, rotation=0, zoom=0), rng).numpy()
    for a, b in zip(flipped, x.numpy()):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


def test_shift_moves_content_and_erasing_changes_pixels():
    x = np.zeros((4, 48, 48, 1), np.float32)
    x[:, 20:28, 20:28] = 1.0
    rng = tf.random.Generator.from_seed(1)
    shifted = augment_batch(tf.constant(x), AugmentConfig(flip=False, shift=0.2, rotation=0, zoom=0), rng).numpy()
    assert shifted.shape == x.shape and not np.allclose(shifted, x)
    assert np.allclose(shifted.sum(axis=(1, 2, 3)), 64, atol=8)  # the square moved, it did not vanish
    erased = augment_batch(tf.constant(x), AugmentConfig(flip=False, shift=0, rotation=0, zoom=0, erasing=1.0), rng)
    assert (erased.numpy() != x).any(axis=(1, 2, 3)).all()


def test_mixup_keeps_label_mass():
    x = tf.random.uniform((16, 48, 48, 1))
    y = tf.one_hot(tf.range(16) % 7, 7)
    mx, my = mixup(x, y, 0.4, tf.random.Generator.from_seed(0))
    assert mx.shape == x.shape and np.allclose(my.numpy().sum(1), 1.0)
