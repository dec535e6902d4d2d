"""``trainer quantize-detector``: a full-INT8 copy of MediaPipe's short-range BlazeFace.

Why: MediaPipe publishes the detector with float16 weights, run in float32. An INT8 model is
smaller and runs faster where integer arithmetic is (XNNPACK's INT8 kernels; a Raspberry Pi's
Cortex-A cores), at a small cost in recall measured by ``bench/detection.py``. TensorFlow cannot
quantize a ``.tflite`` file, so the graph is read back from its flatbuffer (LiteRT's schema, which
TensorFlow ships), rebuilt as TensorFlow ops with the same weights, and converted again with
full-integer post-training quantization.

Calibration frames are the 640x480 streams of ``edge bench`` (scikit-image's public-domain astronaut
on noise), letterboxed by the device's own detector code. The score logits are clipped to [-20, 20]
before the output: on background they reach -300, and an INT8 output scaled to that range would step
by 1.2 logits around the 0.5 threshold (sigmoid(-20) = 2e-9: nothing the decoder keeps changes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from edge.device.bench import synthetic_stream
from edge.device.tracking import iou
from edge.errors import UserError
from edge.model.detectors.blazeface import SHORT_RANGE, SHORT_RANGE_INT8, BlazeFace

LOGIT_CLIP = 20.0
TYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16, schema.TensorType.INT32: np.int32}
OPERATORS = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
PADDING = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}
SUPPORTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "PAD", "MAX_POOL_2D", "RESHAPE", "CONCATENATION", "DEQUANTIZE"}
"""The operators of MediaPipe's short-range BlazeFace: all :func:`rebuild` needs to know."""
CALIBRATION_STREAMS = ((1, 1), (3, 2), (10, 3))
"""(faces per frame, seed) of the ``edge bench`` streams that calibrate the quantization."""
PARITY_STREAMS = ((1, 11), (3, 12), (10, 13))
"""Other draws of the same streams, for the float/INT8 parity the command prints."""


def _activation(x: tf.Tensor, code: int) -> tf.Tensor:
    if code == schema.ActivationFunctionType.NONE:
        return x
    if code == schema.ActivationFunctionType.RELU:
        return tf.nn.relu(x)
    raise UserError(f"fused activation {code} is not supported by the detector rebuild")


def _options(op, kind):
    table = op.BuiltinOptions()
    options = kind()
    options.Init(table.Bytes, table.Pos)
    return options


def rebuild(path: Path) -> tuple[Callable[[tf.Tensor], dict[str, tf.Tensor]], tuple[int, ...]]:
    """A float TFLite model's graph as a TensorFlow function (outputs by name) and its input shape; its operators
    must be among :data:`SUPPORTED` (the DEQUANTIZE ones turn float16 weights into float32 constants)."""
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    tensors = [graph.Tensors(i) for i in range(graph.TensorsLength())]

    def constant(i: int) -> np.ndarray | None:
        buffer = model.Buffers(tensors[i].Buffer())
        if buffer.DataLength() == 0:
            return None
        data = np.frombuffer(buffer.DataAsNumpy().tobytes(), TYPES[tensors[i].Type()])
        return data.reshape(tensors[i].ShapeAsNumpy()).astype(np.float32 if data.dtype == np.float16 else data.dtype)

    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        ops.append((OPERATORS[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], list(op.InputsAsNumpy()),
                    int(op.OutputsAsNumpy()[0]), op))
    unknown = sorted({name for name, *_ in ops} - SUPPORTED)
    if unknown:
        raise UserError(f"{path}: operator {', '.join(unknown)} is not supported by the detector rebuild")
    constants = {i: c for _, inputs, _, _ in ops for i in inputs if i >= 0 and (c := constant(i)) is not None}
    (source,), outputs = graph.InputsAsNumpy(), graph.OutputsAsNumpy()

    def run(x: tf.Tensor) -> dict[str, tf.Tensor]:
        values = {int(source): x}

        def get(i: int):
            return values[i] if i in values else constants[i]

        for name, inputs, output, op in ops:
            x = get(inputs[0])
            if name == "DEQUANTIZE":
                y = constants[inputs[0]]
            elif name == "CONV_2D":
                o = _options(op, schema.Conv2DOptions)
                y = tf.nn.conv2d(x, np.transpose(get(inputs[1]), (1, 2, 3, 0)), (1, o.StrideH(), o.StrideW(), 1),
                                 PADDING[o.Padding()], dilations=(1, o.DilationHFactor(), o.DilationWFactor(), 1))
                y = _activation(y + get(inputs[2]), o.FusedActivationFunction())
            elif name == "DEPTHWISE_CONV_2D":
                o = _options(op, schema.DepthwiseConv2DOptions)
                kernel = get(inputs[1])  # (1, kh, kw, channels * multiplier)
                kernel = kernel.reshape(kernel.shape[1], kernel.shape[2], x.shape[-1], -1)
                y = tf.nn.depthwise_conv2d(x, kernel, (1, o.StrideH(), o.StrideW(), 1), PADDING[o.Padding()])
                y = _activation(y + get(inputs[2]), o.FusedActivationFunction())
            elif name == "ADD":
                y = _activation(x + get(inputs[1]), _options(op, schema.AddOptions).FusedActivationFunction())
            elif name == "RELU":
                y = tf.nn.relu(x)
            elif name == "PAD":
                y = tf.pad(x, constants[inputs[1]])
            elif name == "MAX_POOL_2D":
                o = _options(op, schema.Pool2DOptions)
                y = tf.nn.max_pool2d(x, (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW()), PADDING[o.Padding()])
                y = _activation(y, o.FusedActivationFunction())
            elif name == "RESHAPE":
                y = tf.reshape(x, tensors[output].ShapeAsNumpy())
            else:  # CONCATENATION
                o = _options(op, schema.ConcatenationOptions)
                y = _activation(tf.concat([get(i) for i in inputs], o.Axis()), o.FusedActivationFunction())
            values[output] = y
        return {tensors[i].Name().decode(): values[int(i)] for i in outputs}

    return run, tuple(int(n) for n in tensors[source].ShapeAsNumpy())


def frames(streams: tuple[tuple[int, int], ...], per_stream: int) -> list[np.ndarray]:
    """``edge bench``'s 640x480 synthetic frames of these (faces, seed) streams."""
    return [frame for faces, seed in streams for frame in synthetic_stream(faces, per_stream, seed)]


def quantize_detector(out: Path | None = None, per_stream: int = 20, log=print) -> dict:
    """Write the INT8 short-range model to ``out`` (default: the edge package's asset); return (and log) its parity
    with the float one."""
    run, shape = rebuild(SHORT_RANGE.file)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def model(x):
        outputs = run(x)
        outputs["classificators"] = tf.clip_by_value(outputs["classificators"], -LOGIT_CLIP, LOGIT_CLIP)
        return outputs

    letterbox = BlazeFace(SHORT_RANGE)

    def calibration() -> Iterator[list[np.ndarray]]:
        for frame in frames(CALIBRATION_STREAMS, per_stream):
            yield [letterbox.model_input(frame)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    out = Path(out or SHORT_RANGE_INT8.file)
    out.write_bytes(converter.convert())
    report = parity(BlazeFace(SHORT_RANGE), BlazeFace(replace(SHORT_RANGE_INT8, file=out)))
    log(f"wrote {out} ({out.stat().st_size:,} bytes); on {report['frames']} other frames it finds "
        f"{report['matched']} of the float model's {report['faces']} faces (median box IoU {report['median_iou']:.3f}) "
        f"and {report['extra']} it does not")
    return report


def parity(reference: BlazeFace, candidate: BlazeFace, per_stream: int = 20) -> dict:
    """How closely ``candidate`` finds the faces ``reference`` finds, on frames calibration did not see."""
    faces = matched = extra = 0
    overlaps: list[float] = []
    test = frames(PARITY_STREAMS, per_stream)
    for frame in test:
        expected, found = reference.detect(frame), candidate.detect(frame)
        best = [max((iou(f.box, g.box) for g in found), default=0.0) for f in expected]
        faces, matched = faces + len(expected), matched + sum(b >= 0.5 for b in best)
        extra += sum(max((iou(g.box, f.box) for f in expected), default=0.0) < 0.5 for g in found)
        overlaps += [b for b in best if b >= 0.5]
    return {"frames": len(test), "faces": faces, "matched": matched, "extra": extra,
            "median_iou": float(np.median(overlaps)) if overlaps else 0.0}
