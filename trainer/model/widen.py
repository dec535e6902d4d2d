"""Warm start into a wider network: Net2WiderNet (Chen, Goodfellow & Shlens 2016).

Why: the shipped model is the end of a long lineage of warm restarts at width 32; a wider model trained
from scratch starts that lineage over at twice the cost per epoch. Widening copies the trained network
into the wider one so that it computes (nearly) the same function, and training goes on from there.

Each new channel of a layer copies a randomly chosen old channel (its incoming weights, bias and
batch-norm statistics), and every layer that sums over those channels divides the weights it reads
from a copied channel by how many copies it has: a convolution or the classifier then sees the same
sums. Layers are matched by name (the builder names them alike at every width); a channel count
widened from ``old`` to ``new`` uses one mapping wherever it occurs, so the tensors joined by a
residual addition stay aligned. Everything per channel (ReLU, pooling, CBAM's channel attention,
the channel-wise max) is preserved exactly, and so is CBAM's channel-wise *mean* when the width doubles
(every channel copied once); at 1.5x the copied half counts twice in that mean, so the start is close
to, not exactly, the parent (the shipped model widened from 32 to 48 agrees with itself on 97 % of
PublicTest, at the same accuracy). A little noise on the copies' incoming weights lets them drift apart in training (identical
copies would get identical gradients for ever).
"""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from edge.errors import UserError

NOISE = 0.01
"""Standard deviation of the noise added to copied channels' incoming weights, relative to the layer's weights."""


class _Mappings:
    """One channel mapping per (old, new) channel count: new channel -> the old channel it copies (the first ``old``
    channels are the originals)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self._maps: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, old: int, new: int) -> np.ndarray:
        if new < old:
            raise UserError(f"cannot warm-start a narrower network ({old} -> {new} channels): widening only")
        if (old, new) not in self._maps:  # copies drawn without replacement: at twice the width, each channel twice
            rounds = [self.rng.permutation(old) for _ in range(-(-(new - old) // old))]
            self._maps[old, new] = np.concatenate([np.arange(old), *rounds])[:new]
        return self._maps[old, new]


def _read(weights: np.ndarray, mapping: np.ndarray, old: int, axis: int) -> np.ndarray:
    """Weights that sum over a widened input: each copy reads its channel's weights over its number of copies."""
    copies = np.bincount(mapping, minlength=old)
    shape = [1] * weights.ndim
    shape[axis] = -1
    return np.take(weights, mapping, axis=axis) / copies[mapping].reshape(shape)


def _noisy(weights: np.ndarray, mapping: np.ndarray, old: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Noise on the output channels (last axis) that are copies, scaled to the layer's weights."""
    copied = np.zeros(weights.shape[-1], bool)
    copied[old:] = True
    copied[mapping[copied]] = True  # the originals of copies too: each pair then differs
    return weights + (rng.normal(0.0, noise * (weights.std() or 1.0), weights.shape) * copied).astype(weights.dtype)


def widen(parent: keras.Model, child: keras.Model, seed: int = 0, noise: float = NOISE) -> None:
    """Set ``child``'s weights from ``parent``'s, a network built by the same builder at a larger width."""
    mappings, rng = _Mappings(seed), np.random.default_rng(seed + 1)
    old_layers = {layer.name: layer for layer in parent.layers}
    for layer in child.layers:
        if not layer.weights:
            continue
        if layer.name not in old_layers:
            raise UserError(f"cannot widen: the parent has no layer {layer.name} (another architecture)")
        old = old_layers[layer.name].get_weights()
        new_shapes = [w.shape for w in layer.get_weights()]
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, *bias = old
            old_in, old_out = kernel.shape[-2], kernel.shape[-1]
            into, out = mappings(old_in, new_shapes[0][-2]), mappings(old_out, new_shapes[0][-1])
            kernel = np.take(_read(kernel, into, old_in, kernel.ndim - 2), out, axis=-1)
            weights = [_noisy(kernel, out, old_out, rng, noise)] + [np.take(b, out) for b in bias]
        elif isinstance(layer, keras.layers.BatchNormalization):
            out = mappings(old[0].shape[0], new_shapes[0][0])
            weights = [np.take(w, out) for w in old]
        else:
            raise UserError(f"cannot widen layer {layer.name} ({type(layer).__name__})")
        layer.set_weights(weights)
