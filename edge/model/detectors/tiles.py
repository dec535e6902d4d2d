"""Room-scale detection: the short-range BlazeFace on overlapping tiles of the frame, and on the whole frame.

On a 640x480 frame letterboxed to 128 pixels the short-range model sees a face at a fifth of its size
and misses faces under about 100 pixels; a camera at the front of a room sees 10-30 faces of 25-60.
Tiles of about ``tile`` pixels are each enlarged to the model's input, so a 32-pixel face arrives at
20 pixels, where the model finds it; tiles overlap by ``overlap`` pixels so a face that small lies
whole in at least one of them, and the whole frame is searched too for faces larger than a tile.
The passes' boxes are not averaged but the best one of each face is kept (:func:`keep_best`): a face cut
by a tile's edge gives a partial box with a lower score, which must not pull the whole face's box
aside. Each kept box is one the short-range model framed, the framing the emotion model was trained
on. The cost is one invoke per tile, plus one.
"""

from __future__ import annotations

import math

import numpy as np

from edge.model.detectors.base import Face, corners, pairwise_cover, pairwise_iou, to_faces
from edge.model.detectors.blazeface import BlazeFace


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of equal tiles about ``tile`` pixels wide covering the frame, neighbours sharing at least
    ``overlap`` pixels; a frame no larger than a tile is one tile."""
    def spans(length: int) -> list[tuple[int, int]]:
        count = max(1, math.ceil((length - overlap) / (tile - overlap)))
        side = min(length, math.ceil((length + (count - 1) * overlap) / count))
        return [(round(i * (length - side) / (count - 1)) if count > 1 else 0, side) for i in range(count)]
    return [(x, y, w, h) for y, h in spans(height) for x, w in spans(width)]


def keep_best(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, cover: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression that keeps boxes whole: best score first, a box is dropped when it overlaps a kept one
    by more than ``iou_threshold`` or lies mostly (``cover``) inside it (a face cut by a tile's edge)."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    clash = (pairwise_iou(boxes) > iou_threshold) | (pairwise_cover(boxes) > cover)
    kept: list[int] = []
    for i in range(len(boxes)):
        if not any(clash[i, k] for k in kept):
            kept.append(i)
    return boxes[kept], scores[kept]


class Tiles:
    """A BlazeFace detector run on each tile of :func:`tile_grid` and on the whole frame, boxes merged."""

    name = "blazeface-tiles"

    def __init__(self, detector: BlazeFace, tile: int = 208, overlap: int = 64, min_size: int = 0):
        if not 0 <= overlap < tile:
            raise ValueError(f"tile overlap must be in [0, tile), got {overlap} for {tile}-pixel tiles")
        self.detector, self.tile, self.overlap, self.min_size = detector, tile, overlap, min_size

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.detect_passes(image)[0]

    def detect_passes(self, image: np.ndarray) -> tuple[list[Face], list[Face]]:
        """The merged faces, and apart the whole-frame pass's own (which ``auto`` compares them with)."""
        height, width = image.shape[:2]
        found = [(0, 0, self.detector.detect(image))]
        if max(width, height) > self.tile:
            found += [(x, y, self.detector.detect(image[y:y + h, x:x + w]))
                      for x, y, w, h in tile_grid(width, height, self.tile, self.overlap)]
        boxes = np.concatenate([corners(faces, x, y) for x, y, faces in found])
        scores = np.array([f.score for _, _, faces in found for f in faces], np.float32)
        merged = to_faces(*keep_best(boxes, scores, self.detector.iou_threshold), width, height, self.min_size)
        return merged, found[0][2]
