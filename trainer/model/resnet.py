"""ResNet with CBAM attention in every residual block (He et al. 2016; Woo et al. 2018).

Read top to bottom: the CBAM pieces, the two residual blocks, the stem, then ``build_model``
configured by :class:`ModelConfig`.

Built with ``tf_keras`` (Keras 2), not Keras 3, because tensorflow-model-optimization's
quantization-aware training refuses Keras 3 models (tensorflow/model-optimization #1119,
#1270); building the one model in tf_keras from the start means QAT needs no rebuild and no
weight transfer. The model is a flat functional graph (tfmot cannot quantize nested models)
and uses only ops that convert to full INT8: CBAM's shared MLP is a pair of 1x1 convolutions
(a Dense on 4-D pooled features converts into SHAPE/GATHER ops that XNNPACK rejects), and the
channel-wise mean/max is a small registered layer instead of a Lambda (which tfmot cannot clone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

STAGES = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
STEMS = ("3x3-pool", "3x3", "7x7")


@dataclass
class ModelConfig:
    depth: int = 18
    """10, 18 or 34 (basic blocks) or 50 (bottleneck blocks); 10 is one block per stage, half of 18's work."""
    width: int = 32
    """Channels of the first stage (ResNet's standard is 64); stages double it."""
    stem: str = "3x3-pool"
    """``3x3-pool``: 3x3 stride-1 conv + 2x2 max-pool (48 -> 24, the default: measured best
    accuracy per CPU-second); ``3x3``: no pool (3x slower); ``7x7``: ImageNet's 7x7/2 conv +
    3x3/2 pool (48 -> 12, fastest, but leaves 2x2 features in the last stage)."""
    cbam: bool = True
    reduction: int = 16
    """CBAM channel-attention MLP reduction ratio."""
    mlp_min_hidden: int = 8
    """Lower bound on the attention MLP's hidden units. At width 32, channels // 16 leaves 2 ReLU
    units; when they are dead on the calibration data their INT8 range collapses to ~1e-8 and
    XNNPACK refuses the model ("failed to prepare"). 8 units keep the range alive."""
    dropout: float = 0.2
    bn_momentum: float = 0.99
    """Batch-norm running-statistics momentum; lower it (0.9) for runs of only a few hundred steps."""
    input_size: int = 48
    crop: int = 0
    """Side of a centre crop taken by the model's first layer (e.g. 40 of the 48 px face; 0 = none).

    The published ~73 % FER2013 recipes train on random 40-44 px crops and test on crops. Here the
    crop is part of the graph, so the bundle's input stays the 48 px face the device feeds, and
    the network runs at 40 px (0.69x the compute). Training translates the face by up to
    ``crop_jitter`` px each way (:func:`trainer.data.augment.augment_batch`), so the fixed centre
    window lands on a random crop of the face: random-crop training, centre-crop testing. The
    crop has no weights: a checkpoint loads into the model with or without it."""
    num_classes: int = 7

    def __post_init__(self):
        if self.depth not in STAGES:
            raise ValueError(f"depth must be one of {sorted(STAGES)}, not {self.depth}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, not {self.stem!r}")
        if self.crop and not (self.input_size // 2 <= self.crop < self.input_size and (self.input_size - self.crop) % 2 == 0):
            raise ValueError(f"crop must be 0 or a side from {self.input_size // 2} to {self.input_size - 2} that leaves "
                             f"an equal margin on each side (e.g. 40 of {self.input_size}), not {self.crop}")

    @property
    def crop_jitter(self) -> int:
        """How far (px) the crop window may land from the centre: the margin the crop leaves on each side."""
        return (self.input_size - self.crop) // 2 if self.crop else 0

    def to_dict(self) -> dict:
        return asdict(self)


@keras.utils.register_keras_serializable(package="fer_edge")
class ChannelPool(layers.Layer):
    """Channel-wise mean and max, concatenated: (N, H, W, C) -> (N, H, W, 2). CBAM's spatial input.

    Why the max is taken of ``x / 2`` and doubled (exact in float: powers of two): an INT8 max gives its input
    the quantization of its output, and the channel-wise max is rarely below -1, so taken of ``x`` itself it
    gave the channel-attention output, which the block goes on to use, a range of about [-0.8, 13] where its
    values reach -8: 2-16 % of them clipped in every block of the shipped network. The halving is an op of its
    own, so only the max's input is tied (and the max is what it gives); the channel-attention output keeps
    its calibrated range. Post-training INT8 on the same networks and calibration images: 67.90 -> 68.49 %
    (the 2026.11.26.4 network) and 68.60 -> 68.77 % (its weight-averaged polish), one pass on PublicTest."""

    def call(self, x):
        return tf.concat([tf.reduce_mean(x, axis=-1, keepdims=True),
                          2.0 * tf.reduce_max(0.5 * x, axis=-1, keepdims=True)], axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[:-1]).concatenate([2])


def channel_attention(x, reduction: int, min_hidden: int, name: str):
    """Shared MLP over global average- and max-pooled features, summed, sigmoid, rescale channels."""
    channels = x.shape[-1]
    hidden = max(min_hidden, channels // reduction)
    squeeze = layers.Conv2D(hidden, 1, activation="relu", name=f"{name}_mlp1")
    excite = layers.Conv2D(channels, 1, name=f"{name}_mlp2")
    avg = excite(squeeze(layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_avg")(x)))
    mx = excite(squeeze(layers.GlobalMaxPooling2D(keepdims=True, name=f"{name}_max")(x)))
    weights = layers.Activation("sigmoid", name=f"{name}_sigmoid")(layers.Add(name=f"{name}_sum")([avg, mx]))
    return layers.Multiply(name=f"{name}_scale")([x, weights])


def spatial_attention(x, name: str):
    """7x7 conv over the channel-wise mean and max, sigmoid, rescale positions."""
    pooled = ChannelPool(name=f"{name}_pool")(x)
    weights = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name=f"{name}_conv")(pooled)
    return layers.Multiply(name=f"{name}_scale")([x, weights])


def cbam(x, cfg: ModelConfig, name: str):
    return spatial_attention(channel_attention(x, cfg.reduction, cfg.mlp_min_hidden, f"{name}_ca"), f"{name}_sa")


def conv_bn(x, filters: int, kernel: int, stride: int, cfg: ModelConfig, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def shortcut(x, filters: int, stride: int, cfg: ModelConfig, name: str):
    if stride == 1 and x.shape[-1] == filters:
        return x
    return conv_bn(x, filters, 1, stride, cfg, f"{name}_down", relu=False)


def basic_block(x, filters: int, stride: int, cfg: ModelConfig, name: str):
    """Two 3x3 convs; CBAM after the second, before the residual addition (Woo et al., Fig. 3)."""
    y = conv_bn(x, filters, 3, stride, cfg, f"{name}_1")
    y = conv_bn(y, filters, 3, 1, cfg, f"{name}_2", relu=False)
    if cfg.cbam:
        y = cbam(y, cfg, f"{name}_cbam")
    y = layers.Add(name=f"{name}_add")([shortcut(x, filters, stride, cfg, name), y])
    return layers.ReLU(name=f"{name}_out")(y)


def bottleneck_block(x, filters: int, stride: int, cfg: ModelConfig, name: str):
    """1x1 reduce, 3x3, 1x1 expand (x4); CBAM after the last conv."""
    y = conv_bn(x, filters, 1, 1, cfg, f"{name}_1")
    y = conv_bn(y, filters, 3, stride, cfg, f"{name}_2")
    y = conv_bn(y, filters * 4, 1, 1, cfg, f"{name}_3", relu=False)
    if cfg.cbam:
        y = cbam(y, cfg, f"{name}_cbam")
    y = layers.Add(name=f"{name}_add")([shortcut(x, filters * 4, stride, cfg, name), y])
    return layers.ReLU(name=f"{name}_out")(y)


def stem(x, cfg: ModelConfig):
    if cfg.stem == "7x7":
        x = conv_bn(x, cfg.width, 7, 2, cfg, "stem")
        return layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    x = conv_bn(x, cfg.width, 3, 1, cfg, "stem")
    return layers.MaxPooling2D(2, name="stem_pool")(x) if cfg.stem == "3x3-pool" else x


def build_model(cfg: ModelConfig) -> keras.Model:
    """Logits model: (N, S, S, 1) float input in [0, 1] -> (N, classes) logits."""
    kind, counts = STAGES[cfg.depth]
    block = basic_block if kind == "basic" else bottleneck_block
    inputs = keras.Input((cfg.input_size, cfg.input_size, 1), name="face")
    x = layers.Cropping2D(cfg.crop_jitter, name="centre_crop")(inputs) if cfg.crop else inputs
    x = stem(x, cfg)
    for stage, count in enumerate(counts):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(x, cfg.width * 2**stage, stride, cfg, f"s{stage + 1}b{i + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    outputs = layers.Dense(cfg.num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{cfg.depth}_cbam" if cfg.cbam else f"resnet{cfg.depth}")


def with_softmax(model: keras.Model) -> keras.Model:
    """The deployable model: the logits model followed by a softmax (probabilities out)."""
    probs = layers.Softmax(name="probs")(model.output)
    return keras.Model(model.input, probs, name=model.name)
