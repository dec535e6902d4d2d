"""``trainer quantize-detector``: the float BlazeFace rebuilt op for op, then an INT8 twin that frames faces alike."""

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from edge.device.bench import astronaut
from edge.device.tracking import iou
from edge.errors import UserError
from edge.model.detectors.blazeface import FULL_RANGE, SHORT_RANGE, SHORT_RANGE_INT8, BlazeFace
from edge.model.litert import load_interpreter, non_int8_tensors
from trainer.cli import main
from trainer.export.detector import rebuild


def test_the_rebuilt_graph_computes_what_the_tflite_model_does():
    detector = BlazeFace(SHORT_RANGE)
    x = detector.model_input(astronaut())
    run, shape = rebuild(SHORT_RANGE.file)
    assert shape == x.shape
    outputs = {name: y.numpy() for name, y in run(tf.constant(x)).items()}
    interpreter = load_interpreter(SHORT_RANGE.file)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    for d in interpreter.get_output_details():
        expected = interpreter.get_tensor(d["index"])
        assert np.allclose(outputs[d["name"]], expected, atol=1e-3 * np.abs(expected).max()), d["name"]


def test_the_command_writes_a_full_int8_detector_that_frames_faces_like_the_float_one(tmp_path, capsys):
    out = tmp_path / "detector.tflite"
    assert main(["quantize-detector", "--out", str(out), "--frames", "4"]) == 0
    line = capsys.readouterr().out
    assert f"wrote {out}" in line and "median box IoU" in line
    assert non_int8_tensors(out.read_bytes()) == []
    reference = BlazeFace(SHORT_RANGE).detect(astronaut())
    for model in (replace(SHORT_RANGE_INT8, file=out), SHORT_RANGE_INT8):  # this build and the shipped one
        faces = BlazeFace(model).detect(astronaut())
        assert len(faces) == 1 and iou(faces[0].box, reference[0].box) > 0.85, model.file
        assert abs(faces[0].score - reference[0].score) < 0.1


def test_an_operator_the_rebuild_does_not_know_is_one_clear_error():
    with pytest.raises(UserError, match="operator DENSIFY, DEPTH_TO_SPACE, RESIZE_BILINEAR is not supported"):
        rebuild(FULL_RANGE.file)  # sparse weights, upsampling
