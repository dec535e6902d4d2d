"""Detect less often: run the detector on every n-th frame and follow its faces in between.

A face moves a few pixels between two camera frames, so finding it again near its last box is far
cheaper than a detector invoke: each face's gray patch from the last detection is matched
(normalized cross-correlation, robust to lighting changes) in a window around its last box, at a
scale where the patch is ``template_side`` pixels wide. A face whose best match falls below
``min_match`` (it turned away, was hidden, or moved further than the window) is lost, and the
detector runs again on that same frame. Faces that enter the view are found at the next detection,
at most ``every_n - 1`` frames late: that, and boxes that keep their size between detections, is
the price of the saved invokes (``edge bench`` measures both on a moving face).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.model.detectors.base import Face, FaceDetector
from edge.model.preprocess import to_gray


@dataclass
class _Followed:
    face: Face
    template: np.ndarray
    """The face's gray patch at the detection, ``scale`` times its size in the frame."""
    scale: float
    x: float
    y: float
    """Sub-pixel position of the box's top-left corner."""


class EveryN:
    """Wraps a detector: it runs on frame 0, n, 2n, ... and whenever a followed face is lost."""

    def __init__(self, detector: FaceDetector, every_n: int, min_match: float = 0.6, search: float = 0.5,
                 template_side: int = 32):
        self.detector, self.name, self.every_n = detector, detector.name, every_n
        self.min_match, self.search, self.template_side = min_match, search, template_side
        self.detections = 0
        """How many frames the detector ran on (the rest were followed)."""
        self._followed: list[_Followed] = []
        self._age = every_n  # frames since the last detection: the first frame is always detected

    def detect(self, image: np.ndarray) -> list[Face]:
        if self._age < self.every_n:
            faces = self._follow(image)
            if faces is not None:
                self._age += 1
                return faces
        faces = self.detector.detect(image)
        self.detections += 1
        self._age = 1
        self._followed = [self._template(image, face) for face in faces]
        return faces

    def _template(self, image: np.ndarray, face: Face) -> _Followed:
        x, y, w, h = face.box
        scale = min(1.0, self.template_side / max(w, h))
        patch = to_gray(image[y:y + h, x:x + w])
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return _Followed(face, cv2.resize(patch, size, interpolation=cv2.INTER_AREA), scale, float(x), float(y))

    def _follow(self, image: np.ndarray) -> list[Face] | None:
        """Every followed face moved to its best match, or None when one of them is lost."""
        height, width = image.shape[:2]
        faces = []
        for followed in self._followed:
            _, _, w, h = followed.face.box
            margin = self.search * max(w, h)
            x0, y0 = max(0, int(followed.x - margin)), max(0, int(followed.y - margin))
            x1, y1 = min(width, int(followed.x + w + margin) + 1), min(height, int(followed.y + h + margin) + 1)
            size = (round((x1 - x0) * followed.scale), round((y1 - y0) * followed.scale))
            th, tw = followed.template.shape
            if size[0] < tw or size[1] < th:
                return None  # the face left the frame
            window = cv2.resize(to_gray(image[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
            match = cv2.matchTemplate(window, followed.template, cv2.TM_CCOEFF_NORMED)
            _, best, _, (mx, my) = cv2.minMaxLoc(match)
            if best < self.min_match:
                return None
            followed.x = x0 + (mx + _peak_offset(match[my, max(0, mx - 1):mx + 2], mx)) / followed.scale
            followed.y = y0 + (my + _peak_offset(match[max(0, my - 1):my + 2, mx], my)) / followed.scale
            x, y = int(round(min(max(followed.x, 0.0), width - w))), int(round(min(max(followed.y, 0.0), height - h)))
            faces.append(Face((x, y, w, h), followed.face.score))
        return faces


def _peak_offset(values: np.ndarray, index: int) -> float:
    """Sub-pixel offset in (-0.5, 0.5) of a correlation peak from the parabola through it and its two neighbours
    (a step of the matching scale is several frame pixels for a large face; the emotion crop should not jitter by it)."""
    if index == 0 or len(values) < 3:
        return 0.0
    left, centre, right = (float(v) for v in values)
    curvature = left - 2 * centre + right
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
