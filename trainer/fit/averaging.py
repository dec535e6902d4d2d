"""Weight averaging (``ema``): an exponential moving average of the weights, validated and checkpointed each epoch.

Why: a model that has begun to overfit (the 70-epoch FER2013 run: 77 % train, 65 % validation)
or that ends a cycle at a small learning rate jitters around a region; the average of its recent
weights sits nearer that region's centre and usually scores better than any single step, for one
extra validation pass per epoch (Polyak averaging; timm's ModelEmaV2; a running cousin of SWA).

Every weight is averaged, batch-norm statistics included (as timm does), so the averaged model is
scored with statistics that belong to it. The decay warms up (:func:`trainer.fit.ema.ema_decay`, which
the GPU loop shares), so the random initial weights are forgotten fast. The averaged weights are
what ``best.weights.h5`` holds (their best validation epoch), so ``evaluate``, ``export``,
``--init`` and ``--teacher`` use them; the raw weights keep training. ``ema.weights.h5`` holds the
latest average and carries it over a resume.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.fit.ema import ema_decay
from trainer.run.folder import FoldDir


class WeightAverage(keras.callbacks.Callback):
    """Keeps the average, logs ``val_ema_loss``/``val_ema_accuracy``, writes ``ema.weights.h5`` and the best one."""

    def __init__(self, decay: float, steps_per_epoch: int, validation: tf.data.Dataset, fold: FoldDir,
                 best_so_far: float | None):
        super().__init__()
        self.decay, self.steps, self.validation, self.fold = decay, steps_per_epoch, validation, fold
        self.best = best_so_far
        self.epoch = 0
        self.shadow: list[tf.Variable] = []

    def on_train_begin(self, logs=None):
        """Start from the weights training starts from, or from the average a resumed run had reached."""
        start = self._weights_in(self.fold.ema) if self.fold.ema.exists() else self.model.get_weights()
        self.shadow = [tf.Variable(w, trainable=False) for w in start]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._update(tf.constant(ema_decay(self.decay, self.epoch * self.steps + batch), tf.float32))

    @tf.function
    def _update(self, decay: tf.Tensor) -> None:
        for average, weight in zip(self.shadow, self.model.weights):
            average.assign(decay * average + (1.0 - decay) * weight)

    def on_epoch_end(self, epoch, logs=None):
        raw = self.model.get_weights()
        self.model.set_weights([average.numpy() for average in self.shadow])
        loss, accuracy = self.model.evaluate(self.validation, verbose=0)
        self.model.save_weights(str(self.fold.ema))
        if self.best is None or accuracy > self.best:
            self.best = accuracy
            self.model.save_weights(str(self.fold.best))
        self.model.set_weights(raw)
        if logs is not None:
            logs.update(val_ema_loss=loss, val_ema_accuracy=accuracy)

    def _weights_in(self, path) -> list[np.ndarray]:
        raw = self.model.get_weights()
        self.model.load_weights(str(path))
        saved = self.model.get_weights()
        self.model.set_weights(raw)
        return saved
