"""Emotion inference on prepared faces with a bundle's TFLite model (LiteRT, XNNPACK, no TensorFlow)."""

from __future__ import annotations

import numpy as np

from edge.model.bundle import Bundle
from edge.model.litert import load_interpreter
from edge.model.preprocess import normalize


class EmotionClassifier:
    """Scores uint8 faces from :func:`edge.model.preprocess.prepare_face`; all faces of a frame in one batch."""

    def __init__(self, bundle: Bundle, threads: int = 1, tta_flip: bool = False):
        self.bundle, self.spec, self.tta_flip = bundle, bundle.spec, tta_flip
        self.interpreter = load_interpreter(bundle.model_bytes, threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 faces -> (N, classes) float32 probabilities."""
        if len(faces) == 0:
            return np.zeros((0, len(self.bundle.classes)), np.float32)
        batch = np.concatenate([faces, faces[:, :, ::-1]]) if self.tta_flip else faces
        probs = self._run(self.quantize(normalize(batch, self.spec)))
        return (probs[: len(faces)] + probs[len(faces):]) / 2 if self.tta_flip else probs

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float model input -> the model's input dtype (int8 through its scale and zero point)."""
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return x
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [len(x), *self._input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = len(x)
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._output["index"])
        if self._output["dtype"] != np.float32:
            scale, zero_point = self._output["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return y
