"""Shared fixtures: generated datasets, a tiny trained run and a real exported bundle, the real datasets."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRAINER_DATA", ROOT.parent / "shared" / "data"))
CK_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (research use only, never committed); tests using them skip where absent."""
    if not (SHARED_DATA / "fer2013.npz").exists():
        pytest.skip(f"real datasets not found in {SHARED_DATA} (set TRAINER_DATA to the folder with the .npz archives)")
    return SHARED_DATA


def synthetic_face(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A learnable stand-in for a face: a grating whose orientation encodes the class, plus noise."""
    angle = np.pi * label / 7
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 0.5 + phase)
    brightness = rng.uniform(60, 190)
    image = brightness + 50 * wave + rng.normal(0, 12, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def synthetic_ck(tmp_path_factory) -> Path:
    """A CK+48 folder layout (<class>/S###_###_########.png) of generated images: 12 subjects."""
    root = tmp_path_factory.mktemp("ck") / "CK+48"
    rng = np.random.default_rng(0)
    for k, name in enumerate(CK_CLASSES):
        (root / name).mkdir(parents=True)
        for subject in range(12):
            for frame in range(3):
                label = (0, 6, 1, 2, 3, 4, 5)[k]  # contempt gets its own pattern (label 6 slot) when kept
                path = root / name / f"S{subject + 10:03d}_{k + 1:03d}_{frame + 10:08d}.png"
                cv2.imwrite(str(path), synthetic_face(label, rng))
    return root


@pytest.fixture(scope="session")
def tiny_run(synthetic_ck, tmp_path_factory) -> Path:
    """A run directory from `trainer fit` on the generated CK+ layout with a tiny model."""
    from trainer.config import load_config
    from trainer.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config("ckplus", overrides=[{
        "data": str(synthetic_ck), "protocol": "random", "epochs": 5, "batch_size": 16, "tta_flip": False,
        "model": {"width": 8, "dropout": 0.0, "bn_momentum": 0.8}, "schedule": {"lr": 0.05, "warmup_epochs": 0.5},
        "augment": {"rotation": 0.0, "zoom": 0.0, "shift": 0.05, "flip": False}}])
    fit(cfg, out, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    """A real model bundle exported by the trainer (QAT INT8) from the tiny run; its float32 twin beside it."""
    from trainer.export import export

    out = tmp_path_factory.mktemp("models") / "tiny-ck"
    export(tiny_run, out, qat_epochs=1, representative=64, float_out=out.with_name("tiny-ck-float"), log=lambda *a: None)
    return out
