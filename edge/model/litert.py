"""Load a TFLite model with whichever LiteRT runtime is installed.

``ai-edge-litert`` is the maintained runtime; ``tflite-runtime`` (frozen at 2.14) is accepted
so older Raspberry Pi images keep working. Neither imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge.errors import UserError

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on the device's install
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        Interpreter = None

XNNPACK_NOTICE = b"Created TensorFlow Lite XNNPACK delegate for CPU."
"""Printed by LiteRT's native code on the first interpreter's allocation; noise on a device's console."""


@contextlib.contextmanager
def _without_xnnpack_notice():
    """Capture file descriptor 2 (native code writes there) and pass on every line but the XNNPACK notice."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = [line for line in captured.read().splitlines(keepends=True) if XNNPACK_NOTICE not in line]
            if lines:
                os.write(2, b"".join(lines))


def load_interpreter(model: str | Path | bytes, threads: int = 1):
    """Return an allocated interpreter for a model file or its bytes (XNNPACK is LiteRT's default CPU path)."""
    if Interpreter is None:
        raise UserError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")
    try:
        with _without_xnnpack_notice():  # LiteRT creates the delegate in the first allocate_tensors()
            if isinstance(model, bytes):
                interpreter = Interpreter(model_content=model, num_threads=threads)
            else:
                interpreter = Interpreter(model_path=str(model), num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load TFLite model {model if not isinstance(model, bytes) else '<bytes>'}: {exc}") from None
    return interpreter


def non_int8_tensors(model: bytes) -> list[str]:
    """Tensors that are neither int8 nor int32 (biases): empty for a full-INT8 model, whose every op is then INT8."""
    return [f"{t['name']} is {np.dtype(t['dtype']).name}" for t in load_interpreter(model).get_tensor_details()
            if np.dtype(t["dtype"]) not in (np.int8, np.int32)]


def quantize(x: np.ndarray, tensor: dict) -> np.ndarray:
    """Float values -> a tensor's dtype: through its scale and zero point for an integer tensor, as they are for float."""
    dtype = np.dtype(tensor["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = tensor["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantization(tensor: dict) -> tuple[float, float]:
    """(scale, zero point) that map a tensor's values to real ones: (1, 0) for a float tensor."""
    scale, zero_point = tensor["quantization"]
    return (float(scale), float(zero_point)) if np.dtype(tensor["dtype"]) != np.float32 else (1.0, 0.0)
