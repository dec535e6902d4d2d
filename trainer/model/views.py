"""Test-time views: which versions of a face a prediction averages over (numpy only, no TensorFlow).

``none`` is one pass, as the device runs by default (``model.tta_flip: false``); ``flip`` is the
face and its mirror, exactly the device's ``model.tta_flip: true``; ``crops`` the centre and four
corner crops; ``flip-crops`` both (the published ten-crop). Crops are made by moving the face
under a crop model's fixed centre window (:class:`trainer.model.resnet.ModelConfig` ``crop``), so every
view is still the 48 px face the model's input takes.

Here, beside the network, because everything that shows it a face at test time reads it: the predictors
(:mod:`trainer.evaluate.predict`), the configuration's ``distill.tta``, the command line's ``--tta``, and the GPU
path, which imports no TensorFlow.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from edge.errors import UserError

TTA_CHOICES = ("none", "flip", "crops", "flip-crops")
UNCROPPED_SHIFT = 4
"""Corner offset (px) of the ``crops`` views for a model without a crop layer: where a 40 px crop's
corners sit in the 48 px face, as in the published ten-crop evaluation."""

TTA_DESCRIPTIONS = {"none": "one pass, as the device runs by default",
                    "flip": "face and mirror averaged, as a device with model.tta_flip: true",
                    "crops": "centre and 4 corner crops averaged",
                    "flip-crops": "10 views averaged: 5 crops and their mirrors"}


def describe_tta(tta: str) -> str:
    """How every printed table and JSON report names its test-time averaging."""
    return f"tta {tta} ({TTA_DESCRIPTIONS[tta]})"


def check_tta(tta: str) -> str:
    if tta not in TTA_CHOICES:
        raise UserError(f"unknown test-time averaging {tta!r}; choose one of {', '.join(TTA_CHOICES)}")
    return tta


def shifted(faces: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The faces moved by (dy, dx) px, edges replicated: a crop model's centre window then sees an off-centre crop."""
    if not dy and not dx:
        return faces
    m = max(abs(dy), abs(dx))
    padded = np.pad(faces, ((0, 0), (m, m), (m, m)), mode="edge")
    size_y, size_x = faces.shape[1:]
    return padded[:, m + dy:m + dy + size_y, m + dx:m + dx + size_x]


def views(faces: np.ndarray, tta: str, shift: int) -> Iterator[np.ndarray]:
    """The test-time views of ``faces`` (uint8, N x S x S) that ``tta`` averages over."""
    offsets = [(0, 0)] + ([(-shift, -shift), (-shift, shift), (shift, -shift), (shift, shift)] if "crops" in tta else [])
    for dy, dx in offsets:
        view = shifted(faces, dy, dx)
        yield view
        if "flip" in tta:
            yield np.ascontiguousarray(view[:, :, ::-1])
