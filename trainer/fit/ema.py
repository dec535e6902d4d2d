"""The decay of the weight average both trainers keep: Keras's :mod:`trainer.fit.averaging` and the GPU loop.

It lives apart from both because the GPU machine has no TensorFlow and the build machine no PyTorch.
The decay warms up like TensorFlow's ``ExponentialMovingAverage(num_updates=t)``, so the average
forgets the weights it started from (random ones, from scratch) after a few hundred steps, not
after the ``1 / (1 - decay)`` steps the plain decay would take.
"""

from __future__ import annotations


def ema_decay(decay: float, step: int) -> float:
    """The decay at optimizer step ``step`` (0-based) for a target ``decay``."""
    return min(decay, (1.0 + step) / (10.0 + step))
