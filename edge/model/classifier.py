"""Emotion inference on prepared faces with a bundle's model: LiteRT (default) or onnxruntime, no TensorFlow.

Callers (the device's pipeline, the update self-check, the trainer's parity table) see one
interface whichever back-end runs the model: uint8 faces in, float32 probabilities out.
"""

from __future__ import annotations

import numpy as np

from edge.errors import UserError
from edge.model.bundle import Bundle
from edge.model.litert import dequantization, load_interpreter, quantize
from edge.model.preprocess import PreprocessSpec, normalize

BACKENDS = ("litert", "onnxruntime")
"""``litert``: the bundle's ``model.tflite`` on the CPU (XNNPACK); ``onnxruntime``: its ``model.onnx`` (TensorRT, CUDA or CPU)."""


class LiteRTRunner:
    """uint8 faces -> probabilities through the TFLite interpreter.

    Normalizing and quantizing a pixel depend on its byte value alone, so both are done once, for the 256
    values, into a table; a face then goes into the interpreter's own input buffer with one lookup per pixel
    (bit-identical to normalizing and quantizing it, without the float copies: 0.40 -> 0.33 ms CPU for one
    face on the build machine, ``bench/detect_steps.py``)."""

    def __init__(self, model: bytes, spec: PreprocessSpec, threads: int = 1):
        self.interpreter = load_interpreter(model, threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self._table = quantize(normalize(np.arange(256, dtype=np.uint8), spec)[:, 0], self._input)
        self._scale, self._zero_point = dequantization(self._output)

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        if len(faces) != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [len(faces), *self._input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = len(faces)
        np.take(self._table, faces, out=self.interpreter.tensor(self._input["index"])()[..., 0], mode="clip")
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._output["index"])
        return y if self._output["dtype"] == np.float32 else (y.astype(np.float32) - self._zero_point) * self._scale


class EmotionClassifier:
    """Scores uint8 faces from :func:`edge.model.preprocess.prepare_face`; all faces of a frame in one batch.

    ``backend`` and ``providers`` are the device config's ``model.backend`` and ``model.providers``."""

    def __init__(self, bundle: Bundle, threads: int = 1, tta_flip: bool = False, backend: str = "litert",
                 providers: list[str] | None = None):
        self.bundle, self.spec, self.tta_flip, self.backend = bundle, bundle.spec, tta_flip, backend
        self.providers: list[str] = []
        """The onnxruntime execution providers the session runs on, first one preferred (empty for LiteRT)."""
        if backend == "litert":
            self._run = LiteRTRunner(bundle.model_bytes, self.spec, threads)
        elif backend == "onnxruntime":
            from edge.model.onnx_backend import OnnxRunner

            if bundle.onnx_bytes is None:
                raise UserError(f"model.backend onnxruntime needs a bundle with model.onnx, and {bundle.path} has none: "
                                "export it with `trainer export ... --onnx`, or set model.backend: litert")
            self._run = OnnxRunner(bundle.onnx_bytes, self.spec, threads, providers)
            self.providers = self._run.providers
        else:
            raise UserError(f"unknown model backend {backend!r}; known: {', '.join(BACKENDS)}")

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 faces -> (N, classes) float32 probabilities."""
        if len(faces) == 0:
            return np.zeros((0, len(self.bundle.classes)), np.float32)
        batch = np.concatenate([faces, faces[:, :, ::-1]]) if self.tta_flip else faces
        probs = self._run(batch)
        return (probs[: len(faces)] + probs[len(faces):]) / 2 if self.tta_flip else probs
