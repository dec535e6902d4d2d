"""Batched augmentation of normalized (B, S, S, 1) faces, inside the tf.data pipeline (:mod:`trainer.data.pipeline`).

One projective-transform op for shift, rotation, zoom and crop position together, a mirrored copy selected per
image, vectorized random erasing, then mixup or CutMix over the batch's images and targets (``augment.*`` of
:class:`trainer.run.config.AugmentConfig`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from trainer.run.config import AugmentConfig


def augment_batch(x: tf.Tensor, aug: AugmentConfig, rng: tf.random.Generator, crop_jitter: int = 0) -> tf.Tensor:
    """Random flip, affine (shift/rotation/zoom) and erasing of a (B, S, S, 1) float batch.

    ``crop_jitter`` adds a whole-pixel translation of up to that many px each way, so a model that
    centre-crops its input (``model.crop``) sees a random crop of the face (see :class:`ModelConfig`).
    """
    batch, size = tf.shape(x)[0], x.shape[1]
    if aug.flip:
        flip = rng.uniform([batch]) < 0.5
        x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
    if aug.shift or aug.rotation or aug.zoom or crop_jitter:
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=_affine(batch, size, aug, rng, crop_jitter), output_shape=tf.constant([size, size]),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    if aug.erasing:
        x = _erase(x, aug.erasing, rng)
    return x


def _affine(batch, size: int, aug: AugmentConfig, rng: tf.random.Generator, crop_jitter: int) -> tf.Tensor:
    """Per-image 8-parameter transforms mapping output pixels to input pixels."""
    angle = rng.uniform([batch], -1.0, 1.0) * (aug.rotation * math.pi / 180.0)
    scale = 1.0 + rng.uniform([batch], -aug.zoom, aug.zoom)
    tx, ty = (rng.uniform([batch], -aug.shift, aug.shift) * size for _ in range(2))
    if crop_jitter:
        tx, ty = tx + _whole_pixels(batch, crop_jitter, rng), ty + _whole_pixels(batch, crop_jitter, rng)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (size - 1) / 2.0
    a2 = c - cos * (c + tx) - sin * (c + ty)
    b2 = c + sin * (c + tx) - cos * (c + ty)
    zeros = tf.zeros_like(angle)
    return tf.stack([cos, sin, a2, -sin, cos, b2, zeros, zeros], axis=1)


def _whole_pixels(batch, limit: int, rng: tf.random.Generator) -> tf.Tensor:
    """Uniform integers in [-limit, limit] as float32 (every crop position equally likely)."""
    return tf.floor(rng.uniform([batch], 0.0, 2.0 * limit + 1.0)) - limit


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


def mix(x: tf.Tensor, y: tf.Tensor, aug: AugmentConfig, rng: tf.random.Generator):
    """Mixup or CutMix as configured; with both on, each batch gets one of them (probability 1/2)."""
    if aug.mixup > 0 and aug.cutmix > 0:
        return tf.cond(rng.uniform([]) < 0.5, lambda: mixup(x, y, aug.mixup, rng), lambda: cutmix(x, y, aug.cutmix, rng))
    if aug.mixup > 0:
        return mixup(x, y, aug.mixup, rng)
    if aug.cutmix > 0:
        return cutmix(x, y, aug.cutmix, rng)
    return x, y


def _beta(alpha: float, rng: tf.random.Generator) -> tf.Tensor:
    g1 = tf.random.stateless_gamma([], rng.make_seeds(1)[:, 0], alpha)
    g2 = tf.random.stateless_gamma([], rng.make_seeds(1)[:, 0], alpha)
    return g1 / (g1 + g2)


def _partners(batch, rng: tf.random.Generator) -> tf.Tensor:
    return tf.random.experimental.stateless_shuffle(tf.range(batch), rng.make_seeds(1)[:, 0])


def mixup(x: tf.Tensor, y: tf.Tensor, alpha: float, rng: tf.random.Generator):
    """Mix each image with a random partner; one Beta(alpha, alpha) weight per batch."""
    lam, perm = _beta(alpha, rng), _partners(tf.shape(x)[0], rng)
    return lam * x + (1 - lam) * tf.gather(x, perm), lam * y + (1 - lam) * tf.gather(y, perm)


def cutmix(x: tf.Tensor, y: tf.Tensor, alpha: float, rng: tf.random.Generator):
    """Paste one box of a random partner into each image (Yun et al. 2019): the box covers 1 - lambda of
    the image for lambda ~ Beta(alpha, alpha), clipped at the borders; targets mix by the box's real area."""
    size = x.shape[1]
    half = size * tf.sqrt(1.0 - _beta(alpha, rng)) / 2
    centre = rng.uniform([2], 0.0, float(size))
    low, high = tf.maximum(centre - half, 0.0), tf.minimum(centre + half, float(size))
    grid = tf.range(size, dtype=tf.float32) + 0.5
    rows = (grid >= low[0]) & (grid < high[0])
    cols = (grid >= low[1]) & (grid < high[1])
    box = rows[:, None] & cols[None, :]
    area = tf.reduce_mean(tf.cast(box, tf.float32))
    perm = _partners(tf.shape(x)[0], rng)
    return tf.where(box[None, :, :, None], tf.gather(x, perm), x), (1 - area) * y + area * tf.gather(y, perm)
