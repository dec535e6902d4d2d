"""The shared preprocessing, the face detectors, and the trainer/edge identity of model inputs."""

import cv2
import numpy as np
import pytest
from skimage import data

from edge.errors import UserError
from edge.model.detect import make_detector
from edge.model.preprocess import PreprocessSpec, crop_face, gamma_equalize, to_gray


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real face (public domain, shipped by scikit-image), as a BGR frame like a camera gives."""
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("level", [30, 128, 220])
def test_gamma_equalization_moves_mean_to_mid_grey(level):
    rng = np.random.default_rng(level)
    image = np.clip(rng.normal(level, 20, (48, 48)), 0, 255).astype(np.uint8)
    out = gamma_equalize(image, 0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert abs(out.mean() - 127.5) < 12, out.mean()
    # monotonic: gamma keeps the order of intensities
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_gamma_equalization_is_exactly_the_formula():
    """Byte for byte the docstring's formula with numpy's mean, on faces of every size and brightness: the
    trainer's cached faces and the device's must not drift apart when the implementation is made faster."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 130, size=2)
        image = np.clip(rng.normal(rng.uniform(0, 255), rng.uniform(1, 80), (h, w)), 0, 255).astype(np.uint8)
        target = rng.uniform(0.2, 0.8)
        mu = np.clip(image.mean() / 255.0, 1.0 / 255.0, 254.0 / 255.0)
        lut = np.round(255.0 * (np.arange(256) / 255.0) ** (np.log(target) / np.log(mu))).astype(np.uint8)
        assert np.array_equal(gamma_equalize(image, target), lut[image])


def test_gamma_equalization_of_blank_images_stays_finite():
    for value in (0, 255):
        out = gamma_equalize(np.full((48, 48), value, np.uint8))
        assert out.dtype == np.uint8


def test_crop_face_pads_at_the_frame_border():
    gray = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    crop = crop_face(gray, (80, 80, 30, 30), margin=0.25)
    assert crop.shape == (45, 45)
    with pytest.raises(UserError):
        crop_face(gray, (500, 500, 10, 10), margin=0.1)


def test_to_gray_refuses_wrong_input():
    with pytest.raises(UserError, match="uint8"):
        to_gray(np.zeros((4, 4), np.float32))
    with pytest.raises(UserError, match="shape"):
        to_gray(np.zeros((4, 4, 2), np.uint8))


def test_spec_round_trips_and_refuses_unknown_keys():
    spec = PreprocessSpec(input_size=40, crop_margin=0.1)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UserError, match="unknown"):
        PreprocessSpec.from_dict({"input_size": 48, "sharpen": True})


@pytest.mark.parametrize("name", ["blazeface", "haar"])
def test_detectors_find_the_astronaut(name, astronaut):
    faces = make_detector(name).detect(astronaut)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert abs(x + w / 2 - 224) < 20 and abs(y + h / 2 - 125) < 25 and 70 < w < 130, faces[0]
    assert make_detector(name).detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(UserError, match="blazeface"):
        make_detector("mtcnn")
