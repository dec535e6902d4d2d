"""What every detector shares: the :class:`Face` it returns, the interface, and box merging.

A detector is anything with a ``name`` and ``detect(image) -> list[Face]``; the plug-ins beside this
module (BlazeFace short- and full-range, tiles, Haar, auto, every-n following) all return boxes in
the same convention, so the emotion crop (:func:`edge.model.preprocess.crop_face`) is the same
whichever detector found the face.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Face:
    """A detected face: box in pixels (x, y, w, h) and a confidence in [0, 1]."""

    box: tuple[int, int, int, int]
    score: float


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a grayscale, BGR or BGRA uint8 image, most confident first."""


def corners(faces: list[Face], dx: int = 0, dy: int = 0) -> np.ndarray:
    """(n, 4) float32 (x0, y0, x1, y1) of the faces' boxes shifted by (dx, dy)."""
    return np.array([(dx + x, dy + y, dx + x + w, dy + y + h) for x, y, w, h in (f.box for f in faces)],
                    np.float32).reshape(-1, 4)


def _intersections(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection areas (n, n) of (x0, y0, x1, y1) boxes, in one broadcast instead of a loop per box, and the areas."""
    sides = np.clip(np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - np.maximum(boxes[:, None, :2], boxes[None, :, :2]),
                    0, None)
    return sides[..., 0] * sides[..., 1], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU matrix (n, n) of (x0, y0, x1, y1) boxes."""
    inter, areas = _intersections(boxes)
    return inter / np.maximum(areas[:, None] + areas[None, :] - inter, 1e-9)


def pairwise_cover(boxes: np.ndarray) -> np.ndarray:
    """(n, n): the share of the smaller box of each pair that lies inside the other."""
    inter, areas = _intersections(boxes)
    return inter / np.maximum(np.minimum(areas[:, None], areas[None, :]), 1e-9)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: each group of overlapping boxes becomes their
    score-weighted mean, with the group's best score. Returns (boxes, scores), best first.

    The IoU of every pair is computed once; the loop runs once per kept face, not per candidate.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    overlaps = pairwise_iou(boxes) > iou_threshold
    left = np.ones(len(boxes), bool)
    kept_boxes, kept_scores = [], []
    while left.any():
        best = int(np.argmax(left))  # the most confident box not yet merged
        group = left & overlaps[best]
        weights = scores[group]
        kept_boxes.append(weights @ boxes[group] / weights.sum())
        kept_scores.append(scores[best])
        left &= ~group
    return np.array(kept_boxes, np.float32).reshape(-1, 4), np.array(kept_scores, np.float32)


def to_faces(boxes: np.ndarray, scores: np.ndarray, width: int, height: int, min_size: int) -> list[Face]:
    """(x0, y0, x1, y1) pixel boxes clipped to the frame -> :class:`Face` list, dropping boxes under ``min_size``."""
    faces = []
    for (x0, y0, x1, y1), score in zip(boxes.tolist(), scores.tolist()):
        x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
        w, h = int(round(x1 - x0)), int(round(y1 - y0))
        if w > 0 and h > 0 and min(w, h) >= min_size:
            faces.append(Face((int(round(x0)), int(round(y0)), w, h), score))
    return faces
