"""The self-check a bundle passes before a device lets it answer: it runs and returns probabilities."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edge.errors import UserError
from edge.model.bundle import Bundle
from edge.model.classifier import EmotionClassifier


def self_check(bundle: Bundle, classifier: Callable[[Bundle], EmotionClassifier] = EmotionClassifier) -> None:
    """Run the model on a built-in face (a bright oval on a dark ground) and insist on valid probabilities.

    The model need not be right about this face; it must load, run and produce one finite score
    per class that sum to 1 (within INT8 rounding), or a device would publish nonsense. ``classifier``
    builds it as the device will run it (its ``model.backend``): a bundle an onnxruntime device cannot
    run (no model.onnx) is refused here, before it replaces the one that works."""
    size = bundle.spec.input_size
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    face = np.where((xx / 0.35) ** 2 + (yy / 0.45) ** 2 <= 1, 170, 60).astype(np.uint8)
    try:
        probs = classifier(bundle).predict(face[None])
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the model does not run ({exc})") from None
    n = len(bundle.classes)
    if probs.shape != (1, n) or not np.all(np.isfinite(probs)) or probs.min() < -0.01 or probs.max() > 1.01 \
            or abs(float(probs.sum()) - 1) > 0.05:
        raise UserError(f"self-check failed: the model's output {np.round(probs, 3).tolist()} is not "
                        f"{n} probabilities summing to 1")
