"""Load a TFLite model with whichever LiteRT runtime is installed.

``ai-edge-litert`` is the maintained runtime; ``tflite-runtime`` (frozen at 2.14) is accepted
so older Raspberry Pi images keep working. Neither imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from edge.errors import UserError

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on the device's install
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        Interpreter = None


def load_interpreter(model: str | Path | bytes, threads: int = 1):
    """Return an allocated interpreter for a model file or its bytes (XNNPACK is LiteRT's default CPU path)."""
    if Interpreter is None:
        raise UserError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")
    try:
        if isinstance(model, bytes):
            interpreter = Interpreter(model_content=model, num_threads=threads)
        else:
            interpreter = Interpreter(model_path=str(model), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"cannot load TFLite model {model if not isinstance(model, bytes) else '<bytes>'}: {exc}") from None
    return interpreter
