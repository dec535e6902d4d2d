"""The face detectors on real faces: scikit-image's astronaut alone and pasted into composed multi-face frames.

Correctness only (``edge bench`` and ``bench/detection.py`` measure speed and recall): every detector
finds the astronaut where she is, the room-scale detectors find small faces the whole-frame model
cannot, detecting every n-th frame follows a moving face and re-detects a lost one, and the emotion
crop does not depend on the detector's internals.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.device.bench import astronaut, astronaut_face, compose, moving_stream, noise_background
from edge.device.config import load_config
from edge.device.pipeline import Analyzer
from edge.device.sources import Frame
from edge.device.tracking import iou
from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.detect import DETECTORS, make_detector
from edge.model.detectors.base import weighted_nms
from edge.model.detectors.tiles import tile_grid
from edge.model.preprocess import crop_face, prepare_face, to_gray

ASTRONAUT_BOX = (178, 81, 94, 94)


def found(faces, truth: list[tuple], overlap: float = 0.5) -> int:
    """How many true boxes some detected face overlaps at IoU >= ``overlap``."""
    return sum(any(iou(f.box, t) >= overlap for f in faces) for t in truth)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_finds_the_astronaut_and_nothing_in_a_blank_frame(name):
    detector = make_detector(name)
    faces = detector.detect(astronaut())
    assert len(faces) == 1 and iou(faces[0].box, ASTRONAUT_BOX) > (0.5 if name == "haar" else 0.75), faces
    assert 0 < faces[0].score <= 1
    assert detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("convert", [lambda bgr: np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]),
                                     lambda bgr: to_gray(bgr), lambda bgr: to_gray(bgr)[:, :, None],
                                     lambda bgr: np.ascontiguousarray(bgr[:501, :333])],
                         ids=["bgra", "gray", "gray-hw1", "odd-size"])
def test_blazeface_takes_every_image_layout_and_size(convert):
    detector = make_detector("blazeface")
    reference = detector.detect(astronaut())
    faces = detector.detect(convert(astronaut()))
    assert len(faces) == 1 and iou(faces[0].box, reference[0].box) > 0.8, faces
    assert detector.detect(astronaut()) == reference  # buffers kept per frame size do not leak between sizes


def test_other_detectors_frame_faces_like_the_short_range_model():
    """The emotion model was trained on crops around short-range boxes: another detector must frame a face alike."""
    short = make_detector("blazeface").detect(astronaut())[0].box
    for name in ("blazeface-full", "blazeface-tiles", "blazeface-int8"):
        assert iou(make_detector(name).detect(astronaut())[0].box, short) > 0.8, name  # full-range raw: 0.76


def test_three_faces_of_a_composed_frame_are_found_by_the_whole_frame_model():
    frame, truth = compose(noise_background(np.random.default_rng(1)), [(astronaut_face(), 130)] * 3,
                           np.random.default_rng(1))
    faces = make_detector("blazeface").detect(frame)
    assert len(faces) == 3 and found(faces, truth) == 3
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def test_room_scale_detectors_find_ten_small_faces_the_whole_frame_model_misses():
    rng = np.random.default_rng(2)
    frames = [compose(noise_background(rng), [(astronaut_face(0.5), int(s)) for s in rng.integers(32, 49, 10)], rng)
              for _ in range(3)]
    for name in ("blazeface-tiles", "auto"):
        detector = make_detector(name)
        hits = sum(found(detector.detect(frame), truth) for frame, truth in frames)
        assert hits >= 28, (name, hits)  # of 30
    assert sum(found(make_detector("blazeface").detect(frame), truth) for frame, truth in frames) == 0


def test_auto_uses_one_invoke_for_a_near_face_and_tiles_for_a_room():
    auto = make_detector("auto")
    near, _ = compose(noise_background(np.random.default_rng(3)), [(astronaut_face(), 200)], np.random.default_rng(3))
    auto.detect(near)
    assert auto.chosen is auto.near
    room, _ = compose(noise_background(np.random.default_rng(4)), [(astronaut_face(0.5), 40)] * 6, np.random.default_rng(4))
    for _ in range(auto.probe_every):
        auto.detect(room)
    assert auto.chosen is auto.room
    assert make_detector("blazeface-tiles").detect(room) == auto.detect(room)


def test_tiles_cover_the_frame_with_equal_overlapping_tiles():
    tiles = tile_grid(640, 480, 208, 64)
    assert len({(w, h) for _, _, w, h in tiles}) == 1 and len(tiles) == 12
    covered = np.zeros((480, 640), bool)
    for x, y, w, h in tiles:
        assert x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    xs = sorted({x for x, _, _, _ in tiles})
    assert all(b - a <= 208 - 64 for a, b in zip(xs, xs[1:]))
    assert tile_grid(200, 150, 208, 64) == [(0, 0, 200, 150)]


def test_weighted_nms_merges_overlapping_boxes_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.9, 0.6, 0.8, 0.3], np.float32)
    merged, best = weighted_nms(boxes, scores, 0.3)
    assert best.tolist() == pytest.approx([0.9, 0.8])
    expected = (0.9 * boxes[0] + 0.6 * boxes[1] + 0.3 * boxes[3]) / 1.8
    assert merged[0] == pytest.approx(expected) and merged[1] == pytest.approx(boxes[2])


def test_every_n_follows_a_moving_face_between_detections():
    images, truth = moving_stream(frames=40)
    detector = make_detector("blazeface", every_n=5)
    for image, box in zip(images, truth):
        faces = detector.detect(image)
        assert len(faces) == 1 and iou(faces[0].box, box) > 0.7, (faces, box)
    assert detector.detections == 8  # frames 0, 5, ..., 35: the face was never lost


def test_every_n_detects_again_at_once_when_a_face_is_lost():
    images, truth = moving_stream(frames=40)
    detector = make_detector("blazeface", every_n=10)
    detector.detect(images[0])
    jumped = detector.detect(images[10])  # the face is elsewhere: the match fails, the detector runs on this frame
    assert detector.detections == 2 and iou(jumped[0].box, truth[10]) > 0.7
    assert detector.detect(noise_background(np.random.default_rng(0))) == [] and detector.detections == 3
    assert detector.detect(images[11]) == [] and detector.detections == 3  # no face to follow until the next detection


def test_analyzer_crops_are_the_training_crops_whatever_the_detector(tiny_bundle):
    """The device crops the colour frame and converts only the crop to gray: bit-identical to the shared path."""
    image = astronaut()
    classifier = EmotionClassifier(load_bundle(tiny_bundle))
    spec = classifier.spec
    for box in (ASTRONAUT_BOX, (480, 470, 60, 60), (-20, 5, 90, 90)):  # inside, past two borders, past the left
        assert np.array_equal(prepare_face(to_gray(crop_face(image, box, spec.crop_margin)), spec),
                              prepare_face(crop_face(to_gray(image), box, spec.crop_margin), spec))
    for name in ("blazeface", "blazeface-full", "blazeface-tiles", "blazeface-int8"):
        analysis = Analyzer(make_detector(name), classifier, max_faces=5)(Frame(0, 0.0, image))
        crops = np.stack([prepare_face(crop_face(to_gray(image), f.box, spec.crop_margin), spec) for f in analysis.faces])
        assert np.array_equal(analysis.probs, classifier.predict(crops)), name


def test_detector_config_defaults_and_builder_refusals():
    cfg = load_config(None)
    assert (cfg.detector.name, cfg.detector.every_n) == ("auto", 1)
    with pytest.raises(UserError, match="choose one of blazeface"):
        make_detector("yolo")
    with pytest.raises(UserError, match="every_n must be at least 1"):
        make_detector("blazeface", every_n=0)
