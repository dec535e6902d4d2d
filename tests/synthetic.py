"""Generated stand-ins for face datasets: learnable gratings, never real faces (those are research-use only)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CK_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")


def synthetic_face(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A learnable stand-in for a face: a grating whose orientation encodes the class, plus noise."""
    angle = np.pi * label / 7
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.5 + phase)
    brightness = rng.uniform(60, 190)
    image = brightness + 50 * wave + rng.normal(0, 12, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_ck_layout(root: Path, subjects: int = 12, frames: int = 3) -> Path:
    """A CK+48 folder layout (``<class>/S###_###_########.png``) of generated images."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(CK_CLASSES):
        (root / name).mkdir(parents=True)
        for subject in range(subjects):
            for frame in range(frames):
                label = (0, 6, 1, 2, 3, 4, 5)[k]  # contempt gets its own pattern (label 6 slot) when kept
                path = root / name / f"S{subject + 10:03d}_{k + 1:03d}_{frame + 10:08d}.png"
                cv2.imwrite(str(path), synthetic_face(label, rng))
    return root


TINY_RUN_OVERRIDES = {
    "protocol": "random", "epochs": 5, "batch_size": 16,
    "model": {"depth": 10, "width": 8, "dropout": 0.0, "bn_momentum": 0.8}, "schedule": {"lr": 0.05, "warmup_epochs": 0.5},
    "augment": {"rotation": 0.0, "zoom": 0.0, "shift": 0.05, "flip": False}}
"""The tiny run's recipe: a width-8 ResNet10+CBAM (one block per stage, CBAM in each) that learns the gratings in
seconds; the export path is the same for every depth, and half the blocks halve its tracing and conversion."""
