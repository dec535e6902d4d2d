"""One home for predictors: uint8 faces in, class probabilities out, from a Keras checkpoint or a bundle.

A bundle runs through :class:`edge.model.classifier.EmotionClassifier`, the device's own LiteRT
code, so what the trainer reports for a bundle is what a device computes. Test-time averaging
is the same for both: the probabilities of each view (``TTA_CHOICES``) are averaged; ``none`` is
one pass, as the device runs by default (``model.tta_flip: false``), and ``flip`` is exactly the
device's ``model.tta_flip: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

import edge
from edge.errors import UserError
from edge.model.bundle import Bundle, load_bundle
from edge.model.classifier import EmotionClassifier
from trainer.data.pipeline import eval_dataset
from trainer.model.resnet import ModelConfig, build_model
from trainer.model.views import UNCROPPED_SHIFT, check_tta, describe_tta, views
from trainer.run.config import TrainConfig
from trainer.run.folder import FoldDir, RunDir, file_sha256, is_bundle, recorded_config

Predictor = Callable[[np.ndarray], np.ndarray]
"""(N, S, S) uint8 faces -> (N, classes) float32 probabilities."""


def averaged(predict_once: Predictor, tta: str, shift: int) -> Predictor:
    """``predict_once`` averaged over the ``tta`` views: probabilities, as the device averages its flip."""
    def predict(faces: np.ndarray) -> np.ndarray:
        probs = [predict_once(view) for view in views(faces, check_tta(tta), shift)]
        return np.mean(probs, axis=0, dtype=np.float32)
    return predict


def crop_shift(model: ModelConfig) -> int:
    """Where the ``crops`` views' corners lie: the crop model's own margin, else a 40-of-48 crop's."""
    return model.crop_jitter or UNCROPPED_SHIFT


def keras_predictor(model: keras.Model, cfg: TrainConfig, tta: str = "none") -> Predictor:
    """A logits model's softmax probabilities, averaged over the ``tta`` views."""
    def once(faces: np.ndarray) -> np.ndarray:
        return tf.nn.softmax(model.predict(eval_dataset(faces, cfg.preprocess), verbose=0)).numpy()
    return averaged(once, tta, crop_shift(cfg.model))


def tflite_predictor(model: bytes, cfg: TrainConfig, onnx: bytes | None = None, tta: str = "none") -> Predictor:
    """A TFLite model through the device's classifier (its quantization and LiteRT code), ``tta`` views averaged;
    with ``onnx``, that model's ONNX twin through the device's onnxruntime back-end instead."""
    manifest = {"classes": list(edge.CLASS_NAMES), "preprocessing": {"spec": cfg.preprocess.to_dict()}}
    classifier = EmotionClassifier(Bundle(Path("<memory>"), manifest, model, onnx),
                                   backend="onnxruntime" if onnx is not None else "litert")

    def once(faces: np.ndarray) -> np.ndarray:
        return np.concatenate([classifier.predict(faces[i:i + 256]) for i in range(0, len(faces), 256)])
    return averaged(once, tta, crop_shift(cfg.model))


def load_trained(cfg: TrainConfig, weights: Path) -> keras.Model:
    if not Path(weights).exists():
        raise UserError(f"{weights} is missing: train this fold first (trainer fit ... --resume)")
    model = build_model(cfg.model)
    model.load_weights(str(weights))
    return model


@dataclass(frozen=True)
class Scorer:
    """A trained model as the trainer scores it: a run's checkpoint or a bundle's INT8 model."""

    predict: Predictor
    cfg: TrainConfig
    """The configuration it was trained with (a bundle's manifest records it)."""
    identity: str
    """sha256 of the weights or TFLite bytes: what caches keyed on this model compare."""
    description: str


def target_config(target: Path) -> TrainConfig:
    """The configuration a run folder, or a bundle's manifest, recorded."""
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target} does not exist: pass a run directory or a model bundle")
    return recorded_config(target) or RunDir(target).load_config()  # the latter's one-line error where neither


def open_scorer(target: Path, fold: str | None = None, tta: str = "none") -> Scorer:
    """A bundle, or a run's checkpoint: the fold named ``fold`` where the run has it, else its first trained fold."""
    cfg = target_config(target)
    if is_bundle(target):
        bundle = load_bundle(target)
        return Scorer(tflite_predictor(bundle.model_bytes, cfg, tta=tta), cfg, bundle.manifest["tflite"]["sha256"],
                      f"bundle {target} through LiteRT, {describe_tta(tta)}")
    run = RunDir(target)
    return fold_scorer(cfg, run.fold_or_first(fold) if fold else run.first_trained_fold(), tta)


def fold_scorer(cfg: TrainConfig, fold: FoldDir, tta: str = "none") -> Scorer:
    model = load_trained(cfg, fold.best)
    return Scorer(keras_predictor(model, cfg, tta), cfg, file_sha256(fold.best),
                  f"run checkpoint {fold.best}, {describe_tta(tta)}")
