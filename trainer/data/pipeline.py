"""tf.data input pipelines over faces prepared by the shared edge preprocessing.

Faces stay uint8 in memory (a quarter of the float size); each batch is normalized with the
same float32 constants as :func:`edge.model.preprocess.normalize`, then augmented as a whole batch
(:mod:`trainer.data.augment`). Batched ops keep both cores on the model instead of on thousands of
tiny per-image ops.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from edge.model.preprocess import PreprocessSpec
from trainer.data.augment import augment_batch, mix
from trainer.run.config import AugmentConfig

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
                  batch_size: int, num_classes: int, seed: int, crop_jitter: int = 0,
                  soft: np.ndarray | None = None) -> tf.data.Dataset:
    """Shuffled, augmented batches of (faces, targets); the last partial batch is dropped.

    Targets are one-hot labels; with ``soft`` (N x classes teacher targets) each row is
    ``[one-hot | soft]``, so mixup and CutMix mix the teacher's targets with the same weights as
    the labels: the soft labels follow the mixed images. ``crop_jitter``: see :func:`augment_batch`.
    """
    rng = tf.random.Generator.from_seed(seed)

    def augment(x, y, *teacher):
        x = augment_batch(normalize(x, spec), aug, rng, crop_jitter)
        y = tf.concat([tf.one_hot(y, num_classes), *teacher], axis=-1)
        return mix(x, y, aug, rng)

    columns = (faces, labels.astype(np.int32)) + (() if soft is None else (soft.astype(np.float32),))
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).map(augment, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
