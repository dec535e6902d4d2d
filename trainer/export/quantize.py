"""Quantization-aware fine-tuning and TFLite conversion (float32, post-training INT8, QAT INT8).

tensorflow-model-optimization inserts fake-quantization into a tf_keras functional model (the
reason :mod:`trainer.model.resnet` builds with tf_keras). Its default 8-bit registry does not know
three of CBAM's layers: ``Multiply`` (the attention rescaling), ``GlobalMaxPooling2D`` and our
``ChannelPool``. They get :class:`OutputQuantizeConfig`, which quantizes their output like the
registry does for Add or Concatenate, so the whole attention path is INT8, not left in float.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tf_keras import layers

from trainer.data.experiment import Experiment
from trainer.data.pipeline import train_dataset
from trainer.model.resnet import ChannelPool, with_softmax
from trainer.run.config import TrainConfig

quantizers = tfmot.quantization.keras.quantizers


class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """No weights to quantize; quantize the layer's output with an 8-bit moving-average range."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}


OUTPUT_QUANTIZED = (layers.Multiply, layers.GlobalMaxPooling2D, ChannelPool)


def quantization_aware(model: keras.Model) -> keras.Model:
    """The same model with fake-quantization everywhere; weights are kept."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def custom(layer):
        return annotate(layer, OutputQuantizeConfig()) if isinstance(layer, OUTPUT_QUANTIZED) else layer

    annotated = tfmot.quantization.keras.quantize_annotate_model(keras.models.clone_model(model, clone_function=custom))
    annotated.set_weights(model.get_weights())
    with tfmot.quantization.keras.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig, "ChannelPool": ChannelPool}):
        return tfmot.quantization.keras.quantize_apply(annotated)


def qat_finetune(model: keras.Model, cfg: TrainConfig, experiment: Experiment, train_index: np.ndarray,
                 epochs: int, lr: float) -> keras.Model:
    """Fine-tune the fake-quantized softmax model a few epochs at a low, cosine-decaying LR."""
    qat = quantization_aware(with_softmax(model))
    if epochs == 0:
        return qat
    steps = max(1, len(train_index) // cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps)
    qat.compile(optimizer=keras.optimizers.SGD(schedule, momentum=cfg.momentum, nesterov=True),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing), metrics=["accuracy"])
    data = train_dataset(experiment.faces[train_index], experiment.labels[train_index], cfg.preprocess,
                         replace(cfg.augment, mixup=0.0, cutmix=0.0), min(cfg.batch_size, len(train_index)),
                         cfg.model.num_classes, cfg.seed, cfg.model.crop_jitter)
    qat.fit(data, epochs=epochs, verbose=2)
    return qat


def to_tflite_float(model: keras.Model) -> bytes:
    return _converter(model).convert()


def to_tflite_int8(model: keras.Model, representative: np.ndarray) -> bytes:
    """Full-integer model: int8 input and output, every op in int8 (calibrated on ``representative``)."""
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def samples() -> Iterator[list[np.ndarray]]:
        for x in representative:
            yield [x[None].astype(np.float32)]

    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """Convert through a concrete function with batch 1 (tf_keras models are not Keras 3 models)."""
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="face")
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
