"""The trainer's side of the one preprocessing path: the same tensors as the device, the report's pruning."""

import cv2
import numpy as np
import pytest
from skimage import data

from edge.model.detect import make_detector
from edge.model.preprocess import PreprocessSpec, crop_face, preprocess_face, to_gray


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real face (public domain, shipped by scikit-image), as a BGR frame like a camera gives."""
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def test_trainer_pipeline_and_edge_give_identical_tensors(astronaut):
    """One preprocessing path: the trainer's eval pipeline equals the device's preprocess_face exactly."""
    from trainer.data.datasets import FaceDataset, prepare_images
    from trainer.data.pipeline import eval_dataset

    spec = PreprocessSpec()
    detector = make_detector("blazeface")
    gray = to_gray(astronaut)
    dataset = FaceDataset("jaffe", [gray], np.array([3]), np.array(["A"]), np.array([""]), "test", cropped=False)
    faces, found = prepare_images(dataset, spec, detector)
    assert found.all()
    trainer_input = next(iter(eval_dataset(faces, spec))).numpy()[0]
    edge_input = preprocess_face(gray, spec, detector.detect(gray)[0].box)
    assert trainer_input.dtype == edge_input.dtype == np.float32
    assert trainer_input.shape == edge_input.shape == (48, 48, 1)
    assert np.array_equal(trainer_input, edge_input)


def test_pruning_flags_images_without_a_face(astronaut):
    """The report's pruning: pre-cropped images in which the detector finds no face are flagged."""
    from trainer.data.datasets import FaceDataset, prepare_images

    gray = to_gray(astronaut)
    x, y, w, h = make_detector("blazeface").detect(gray)[0].box
    face = cv2.resize(crop_face(gray, (x, y, w, h), 0.07), (48, 48), interpolation=cv2.INTER_AREA)
    blank = np.full((48, 48), 90, np.uint8)
    dataset = FaceDataset("fer2013", [face, blank], np.array([3, 6]), np.array(["", ""]),
                          np.array(["Training", "Training"]), "test", cropped=True)
    faces, found = prepare_images(dataset, PreprocessSpec(), make_detector("blazeface"))
    assert found.tolist() == [True, False] and faces.shape == (2, 48, 48)
