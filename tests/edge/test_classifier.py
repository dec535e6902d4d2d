"""The emotion classifier feeds the model exactly what the preprocessing spec and the model's quantization say."""

from __future__ import annotations

import numpy as np
import pytest

from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.litert import load_interpreter


def reference_scores(bundle, faces: np.ndarray) -> np.ndarray:
    """Per pixel, as the manifest describes it: x * scale + offset, then the input tensor's own quantization."""
    interpreter = load_interpreter(bundle.model_bytes)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = (faces.astype(np.float32) * np.float32(bundle.spec.scale) + np.float32(bundle.spec.offset))[..., None]
    if source["dtype"] == np.int8:
        scale, zero_point = source["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(target["index"])
    if target["dtype"] == np.int8:
        scale, zero_point = target["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return y


@pytest.mark.parametrize("name", ["tiny-ck", "tiny-ck-float"])
def test_faces_reach_the_model_exactly_as_normalized_and_quantized(tiny_bundle, name):
    bundle = load_bundle(tiny_bundle.parent / name)
    classifier = EmotionClassifier(bundle)
    rng = np.random.default_rng(5)
    for count in (1, 3, 1, 2):  # the batch grows and shrinks with the faces in a frame
        faces = rng.integers(0, 256, (count, 48, 48), dtype=np.uint8)
        faces[0, :2] = [[0], [255]]  # both ends of the byte range
        assert np.array_equal(classifier.predict(faces), reference_scores(bundle, faces))
