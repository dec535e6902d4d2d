"""tf.data input pipelines over faces prepared by the shared edge preprocessing.

Faces stay uint8 in memory (a quarter of the float size); each batch is normalized with the
same float32 constants as :func:`edge.model.preprocess.normalize`, then augmented as a whole batch:
one projective-transform op for shift, rotation and zoom together, a mirrored copy selected
per image, vectorized random erasing, and mixup. Batched ops keep both cores on the model
instead of on thousands of tiny per-image ops.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from edge.model.preprocess import PreprocessSpec
from trainer.config import AugmentConfig

AUTOTUNE = tf.data.AUTOTUNE


def normalize(faces: tf.Tensor, spec: PreprocessSpec) -> tf.Tensor:
    """TensorFlow twin of :func:`edge.model.preprocess.normalize`, bit-identical (tests prove it)."""
    x = tf.cast(faces, tf.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    return x[..., None]


def eval_dataset(faces: np.ndarray, spec: PreprocessSpec, labels: np.ndarray | None = None, num_classes: int = 7,
                 batch_size: int = 256) -> tf.data.Dataset:
    """Normalized batches in order; with ``labels``, (faces, one-hot) pairs for validation."""
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(faces).batch(batch_size).map(lambda x: normalize(x, spec))
    else:
        ds = tf.data.Dataset.from_tensor_slices((faces, labels.astype(np.int32))).batch(batch_size)
        ds = ds.map(lambda x, y: (normalize(x, spec), tf.one_hot(y, num_classes)))
    return ds.prefetch(AUTOTUNE)


def train_dataset(faces: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, aug: AugmentConfig,
                  batch_size: int, num_classes: int, seed: int) -> tf.data.Dataset:
    """Shuffled, augmented, one-hot batches; the last partial batch is dropped."""
    rng = tf.random.Generator.from_seed(seed)

    def augment(x, y):
        x = augment_batch(normalize(x, spec), aug, rng)
        y = tf.one_hot(y, num_classes)
        if aug.mixup > 0:
            x, y = mixup(x, y, aug.mixup, rng)
        return x, y

    ds = tf.data.Dataset.from_tensor_slices((faces, labels.astype(np.int32)))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def augment_batch(x: tf.Tensor, aug: AugmentConfig, rng: tf.random.Generator) -> tf.Tensor:
    """Random flip, affine (shift/rotation/zoom) and erasing of a (B, S, S, 1) float batch."""
    batch, size = tf.shape(x)[0], x.shape[1]
    if aug.flip:
        flip = rng.uniform([batch]) < 0.5
        x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
    if aug.shift or aug.rotation or aug.zoom:
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=_affine(batch, size, aug, rng), output_shape=tf.constant([size, size]),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    if aug.erasing:
        x = _erase(x, aug.erasing, rng)
    return x


def _affine(batch, size: int, aug: AugmentConfig, rng: tf.random.Generator) -> tf.Tensor:
    """Per-image 8-parameter transforms mapping output pixels to input pixels."""
    angle = rng.uniform([batch], -1.0, 1.0) * (aug.rotation * math.pi / 180.0)
    scale = 1.0 + rng.uniform([batch], -aug.zoom, aug.zoom)
    tx, ty = (rng.uniform([batch], -aug.shift, aug.shift) * size for _ in range(2))
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (size - 1) / 2.0
    a2 = c - cos * (c + tx) - sin * (c + ty)
    b2 = c + sin * (c + tx) - cos * (c + ty)
    zeros = tf.zeros_like(angle)
    return tf.stack([cos, sin, a2, -sin, cos, b2, zeros, zeros], axis=1)


def _erase(x: tf.Tensor, probability: float, rng: tf.random.Generator) -> tf.Tensor:
    """Random erasing: a rectangle of 2-25 % of the area, aspect 0.3-3.3, filled with noise."""
    batch, size = tf.shape(x)[0], x.shape[1]
    area = rng.uniform([batch], 0.02, 0.25) * size * size
    aspect = tf.exp(rng.uniform([batch], math.log(0.3), math.log(3.3)))
    h = tf.minimum(tf.sqrt(area * aspect), size - 1.0)
    w = tf.minimum(tf.sqrt(area / aspect), size - 1.0)
    y0 = rng.uniform([batch]) * (size - h)
    x0 = rng.uniform([batch]) * (size - w)
    grid = tf.range(size, dtype=tf.float32)
    rows = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    cols = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
    chosen = rng.uniform([batch]) < probability
    mask = rows[:, :, None] & cols[:, None, :] & chosen[:, None, None]
    return tf.where(mask[..., None], rng.uniform(tf.shape(x)), x)


def mixup(x: tf.Tensor, y: tf.Tensor, alpha: float, rng: tf.random.Generator):
    """Mix each image with a random partner; one Beta(alpha, alpha) weight per batch."""
    g1 = tf.random.stateless_gamma([], rng.make_seeds(1)[:, 0], alpha)
    g2 = tf.random.stateless_gamma([], rng.make_seeds(1)[:, 0], alpha)
    lam = g1 / (g1 + g2)
    perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(x)[0]), rng.make_seeds(1)[:, 0])
    return lam * x + (1 - lam) * tf.gather(x, perm), lam * y + (1 - lam) * tf.gather(y, perm)
