"""The bundle's INT8 TFLite model as a QDQ INT8 ONNX model, for onnxruntime and TensorRT (Jetson).

Why this route (each alternative was tried or read first):

- tf2onnx cannot convert the QAT Keras model itself: it refuses ``narrow_range`` fake-quant nodes and
  has no handler for per-channel ones, and what it does convert is asymmetric uint8, which TensorRT
  rejects (TensorRT takes only symmetric INT8: zero point 0, per-channel weights, per-tensor activations).
- Converting the INT8 TFLite as it is keeps TFLite's asymmetric activation zero points: refused too.
- So: tf2onnx reads the QAT INT8 TFLite with ``dequantize`` (float ONNX whose weights are exactly the
  INT8 weights times their scales: the same network as ``model.tflite``), the int8 input/output
  (de)quantization around it is replaced by float32 ``face`` in and ``probabilities`` out, the batch
  is made dynamic (the device classifies all faces of a frame at once), and onnxruntime's static
  quantizer writes it back as QDQ INT8, symmetric, per-channel weights, calibrated on the same
  images as the TFLite model. TFLite's per-channel symmetric convolution weight scales are
  max|w|/127, which the quantizer computes again, so those weights come back bit-identical (the
  final dense layer, per-tensor in TFLite, gets per-channel scales); the activation ranges are
  calibrated again, symmetric where QAT's were asymmetric, with the 99.999th percentile of |x|
  (on the release model, 95.3 % top-1 agreement with LiteRT against 93.5 % for min/max ranges, on
  1500 PublicTest images; the same float network with float activations agrees 95.5 %).

The result runs on onnxruntime's CPU provider (tested here) and is what TensorRT's explicit
quantization reads. Needs the trainer's TensorFlow plus tf2onnx, onnx and onnxruntime (``.[train,onnx-export]``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from edge.errors import UserError
from edge.model.onnx_backend import INPUT_NAME, OUTPUT_NAME

OPSET = 17
"""Per-channel Q/DQ needs opset 13 or later; TensorRT 8.5 (JetPack 5) and 10.x (JetPack 6) parse 17."""
FORMAT = "QDQ INT8, symmetric, per-channel weights"
"""What the manifest's ``onnx.format`` says the file is."""
BATCH = "batch"


def require_converter() -> None:
    """Refuse in one line, before any work, where the converter's packages are missing."""
    for module in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--onnx needs tf2onnx, onnx and onnxruntime ({module} is missing): "
                            "pip install -e '.[train,onnx-export]'") from None


def tflite_to_onnx_int8(tflite_int8: bytes, calibration: np.ndarray) -> bytes:
    """``calibration``: (N, S, S, 1) float32 model inputs (normalized faces), as given to the TFLite converter."""
    require_converter()
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict | None:
            x = next(self.items, None)
            return None if x is None else {INPUT_NAME: x[None].astype(np.float32)}

    model = float_io(dequantized_onnx(tflite_int8))
    dynamic_batch(model)
    onnx.checker.check_model(model, full_check=True)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, prepared, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, float_path)
        quant_pre_process(float_path, prepared)  # shape inference, as onnxruntime's quantizer asks
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(prepared, int8_path, Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        return int8_path.read_bytes()


def dequantized_onnx(tflite: bytes):
    """tf2onnx's reading of a TFLite model with quantization removed (weights dequantized, ops in float)."""
    import tensorflow as tf
    from tf2onnx import optimizer
    from tf2onnx.tfonnx import process_tf_graph

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        with tf.Graph().as_default() as graph, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")  # tf2onnx reads with it
            g = process_tf_graph(graph, tflite_path=str(path), dequantize=True, opset=OPSET)
            return optimizer.optimize_graph(g).make_model("fer-edge emotion model")


def float_io(model):
    """Replace the int8 input's Cast/Sub/Mul dequantization and the output's QuantizeLinear by float32 tensors."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise UserError(f"expected one input and one output, the converted model has {len(graph.input)} and "
                        f"{len(graph.output)}")
    chain, tensor = [], graph.input[0].name
    for op in ("Cast", "Sub", "Mul"):
        users = [n for n in graph.node if tensor in n.input]
        if len(users) != 1 or users[0].op_type != op:
            break
        chain.append(users[0])
        tensor = users[0].output[0]
    if graph.input[0].type.tensor_type.elem_type != TensorProto.FLOAT and len(chain) != 3:
        raise UserError("the converted model's integer input is not dequantized by Cast, Sub, Mul: cannot give it "
                        "a float input")
    producer = next(n for n in graph.node if graph.output[0].name in n.output)
    tail = [producer] if producer.op_type == "QuantizeLinear" else []
    source = producer.input[0] if tail else graph.output[0].name
    for node in chain + tail:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [INPUT_NAME if name == tensor else OUTPUT_NAME if name == source else name for name in node.input]
        node.output[:] = [OUTPUT_NAME if name == source else name for name in node.output]
    shape_in = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    shape_out = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    used = {name for node in graph.node for name in node.input}
    for initializer in [t for t in graph.initializer if t.name not in used]:  # the removed nodes' scales, zero points
        graph.initializer.remove(initializer)
    del graph.input[:], graph.output[:], graph.value_info[:]
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape_in))
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape_out))
    return onnx.shape_inference.infer_shapes(model)


def dynamic_batch(model) -> None:
    """Make the batch dimension symbolic: the TFLite graph's Reshape targets are all batch-1 constants.

    Every Reshape in this network keeps the batch first, so a target starting with 1 becomes 0
    (ONNX: copy that dimension from the input)."""
    from onnx import numpy_helper

    graph = model.graph
    initializers, done = {t.name: t for t in graph.initializer}, set()
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers or node.input[1] in done:
            continue
        done.add(node.input[1])
        target = numpy_helper.to_array(initializers[node.input[1]]).copy()
        if target.ndim != 1 or target[0] != 1:
            raise UserError(f"Reshape {node.name} does not keep a batch of 1 first ({target.tolist()}): cannot make "
                            "the batch dynamic")
        target[0] = 0
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(target, node.input[1]))
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH
    del graph.value_info[:]
