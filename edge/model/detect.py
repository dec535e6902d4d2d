"""Face detectors behind one interface: ``detect(image) -> list[Face]``.

BlazeFace (MediaPipe's short-range face detector) is the default. Its model file ships in
``edge/assets`` with its Apache-2.0 licence: newer mediapipe wheels no longer carry it, it
cannot be downloaded on an offline device, and running it through LiteRT directly keeps
mediapipe (and the TensorFlow it drags in when present) off the device. The decoding below
follows MediaPipe's ``face_detection_short_range`` graph: 896 SSD anchors, sigmoid scores,
weighted non-maximum suppression.

OpenCV's Haar cascade (shipped in ``cv2.data`` of opencv 4.x wheels) is the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.errors import UserError
from edge.model.litert import load_interpreter

BLAZEFACE_MODEL = Path(__file__).parent / "assets" / "face_detection_short_range.tflite"


@dataclass(frozen=True)
class Face:
    """A detected face: box in pixels (x, y, w, h) and a confidence in [0, 1]."""

    box: tuple[int, int, int, int]
    score: float


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a grayscale or BGR uint8 image, most confident first."""


def _blazeface_anchors() -> np.ndarray:
    """Anchor centres (896, 2) of the short-range model: 16x16 grid x 2, then 8x8 grid x 6."""
    centres = []
    for grid, per_cell in ((16, 2), (8, 6)):
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cell = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(cell, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x0, y0, x1, y1) box against many."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[tuple[np.ndarray, float]]:
    """MediaPipe's weighted NMS: overlapping boxes are averaged, weighted by score."""
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    kept = []
    while len(boxes):
        overlap = _iou(boxes[0], boxes) > iou_threshold
        weights = scores[overlap][:, None]
        kept.append(((boxes[overlap] * weights).sum(0) / weights.sum(), float(scores[0])))
        boxes, scores = boxes[~overlap], scores[~overlap]
    return kept


class BlazeFaceDetector:
    """MediaPipe BlazeFace short-range, run through LiteRT (about 1 ms per frame on one thread)."""

    name = "blazeface"
    size = 128

    def __init__(self, min_score: float = 0.5, iou_threshold: float = 0.3, min_size: int = 0,
                 threads: int = 1, model_path: str | Path = BLAZEFACE_MODEL):
        self.min_score, self.iou_threshold, self.min_size = min_score, iou_threshold, min_size
        self.interpreter = load_interpreter(model_path, threads)
        self._input = self.interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self._regressors, self._scores = outputs["regressors"], outputs["classificators"]
        self.anchors = _blazeface_anchors()

    def detect(self, image: np.ndarray) -> list[Face]:
        rgb = _to_rgb(image)
        height, width = rgb.shape[:2]
        side = max(height, width)  # letterbox to a square, as MediaPipe's FIT transform does
        square = cv2.copyMakeBorder(rgb, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        tensor = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR)
        tensor = tensor.astype(np.float32)[None] / 127.5 - 1.0
        self.interpreter.set_tensor(self._input, tensor)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._scores)[0, :, 0]
        candidates = logits > np.log(self.min_score / (1.0 - self.min_score))  # sigmoid(x) > min_score
        if not candidates.any():
            return []
        raw = self.interpreter.get_tensor(self._regressors)[0, candidates, :4] / self.size
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[candidates], -100, 100)))
        centre = raw[:, :2] + self.anchors[candidates]
        half = raw[:, 2:4] / 2.0
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        faces = []
        for (x0, y0, x1, y1), score in weighted_nms(boxes, scores, self.iou_threshold):
            x0, y0 = max(0.0, x0 * side), max(0.0, y0 * side)
            x1, y1 = min(float(width), x1 * side), min(float(height), y1 * side)
            w, h = int(round(x1 - x0)), int(round(y1 - y0))
            if w > 0 and h > 0 and min(w, h) >= self.min_size:
                faces.append(Face((int(round(x0)), int(round(y0)), w, h), score))
        return faces


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: slower and less accurate, but needs only OpenCV."""

    name = "haar"
    work_side = 320
    """Larger images are searched at this long side: 4x fewer pixels on a 640x480 frame, while the cascade's
    24-pixel window still finds faces of 48 pixels and up, the model's input size."""

    def __init__(self, min_size: int = 20, scale_factor: float = 1.1, min_neighbors: int = 5):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise UserError(f"OpenCV's Haar cascade is missing at {path}: install opencv-python-headless 4.x (5.x ships none)")
        self.min_size, self.scale_factor, self.min_neighbors = max(1, min_size), scale_factor, min_neighbors

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        scale = min(1.0, self.work_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        min_size = max(1, round(self.min_size * scale))
        boxes, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size), outputRejectLevels=True)
        if len(boxes) == 0:
            return []
        boxes = np.round(np.asarray(boxes) / scale).astype(int)
        # The cascade's level weights are unbounded; squash them into (0, 1) for a comparable score.
        scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, dtype=np.float64).ravel()))
        order = np.argsort(-scores)
        return [Face(tuple(int(v) for v in boxes[i]), float(scores[i])) for i in order]


DETECTORS = {"blazeface": BlazeFaceDetector, "haar": HaarDetector}


def make_detector(name: str, **options) -> FaceDetector:
    """Build a detector by name: ``blazeface`` (default) or ``haar``."""
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name](**options)


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
