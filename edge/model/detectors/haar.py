"""OpenCV's frontal-face Haar cascade: the fallback detector, slower and less accurate than BlazeFace but needs
only OpenCV (the cascade ships in ``cv2.data`` of opencv 4.x wheels; 5.x wheels carry none)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from edge.model.detectors.base import Face
from edge.model.preprocess import to_gray


class HaarDetector:
    """OpenCV's frontal-face Haar cascade."""

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
        gray = to_gray(image)
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
