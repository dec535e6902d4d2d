"""MediaPipe's BlazeFace detectors, short- and full-range, run through LiteRT and decoded here.

Both model files ship in ``edge/model/assets`` with their Apache-2.0 licence (taken from the
mediapipe 0.10.21 wheel; newer wheels carry neither, and an offline device cannot download them).
Running them through LiteRT directly keeps mediapipe, and the TensorFlow it imports where present,
off the device. The decoding follows MediaPipe's ``face_detection_{short,full}_range`` graphs: SSD
anchors, sigmoid scores, weighted non-maximum suppression.

The frame is shrunk first and converted to the model's RGB [-1, 1] input afterwards (on 1/25 of the
pixels), into buffers allocated once per frame size: the letterbox padding of the input tensor is
written once, not per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.model.detectors.base import Face, to_faces, weighted_nms
from edge.model.litert import load_interpreter

ASSETS = Path(__file__).resolve().parents[1] / "assets"
KEPT_SHAPES = 4


@dataclass(frozen=True)
class BlazeFaceModel:
    """One BlazeFace variant: its file, square input side and anchor grids."""

    name: str
    file: Path
    size: int
    grids: tuple[tuple[int, int], ...]
    """(cells per side, anchors per cell) of each SSD layer, in the model's output order."""
    framing: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """(dx, dy, scale) that maps this model's boxes onto the short-range model's framing (dx, dy in box sides):
    the emotion model was trained on crops around short-range boxes, so every detector must frame a face alike."""


SHORT_RANGE = BlazeFaceModel("blazeface", ASSETS / "face_detection_short_range.tflite", 128, ((16, 2), (8, 6)))
FULL_RANGE = BlazeFaceModel("blazeface-full", ASSETS / "face_detection_full_range_sparse.tflite", 192, ((48, 1),),
                            (0.0, 0.03, 0.93))
"""Its boxes are 7 % larger than the short-range model's and centred 3 % of a side higher: the median over 207
faces 90-200 px wide that both found in frames composed by ``bench/detection.py`` (seed 7)."""


def anchor_centres(grids: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Anchor centres (n, 2) in [0, 1]: row-major cells of each grid, each cell repeated per anchor."""
    centres = []
    for grid, per_cell in grids:
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        cell = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(cell, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


@dataclass
class _Letterbox:
    """Buffers and geometry for one frame shape, reused for every frame of that shape."""

    width: int
    height: int
    canvas: np.ndarray
    """The model input: the shrunk frame in its top-left corner, black padding written once."""
    halves: list[np.ndarray]
    """The frame halved again and again while still at least twice the model's scale (OpenCV's exact 2x area
    resize is several times faster than a 5x one, and as free of aliasing)."""
    small: np.ndarray
    """The frame at the model's scale, in the frame's own channel layout (bilinear from the last half)."""
    rgb: np.ndarray
    pixels_per_unit: np.ndarray
    """Frame pixels per model-input pixel along x and y (x, y, x, y)."""


class BlazeFace:
    """A BlazeFace model through LiteRT: letterbox (top-left, black padding), invoke, decode, weighted NMS."""

    def __init__(self, model: BlazeFaceModel = SHORT_RANGE, min_score: float = 0.5, iou_threshold: float = 0.3,
                 min_size: int = 0, threads: int = 1):
        """``min_score`` 0.5 and ``iou_threshold`` 0.3 are MediaPipe's defaults for both models."""
        self.model, self.name = model, model.name
        self.min_score, self.iou_threshold, self.min_size = min_score, iou_threshold, min_size
        self.interpreter = load_interpreter(model.file, threads)
        self._input = self.interpreter.get_input_details()[0]["index"]
        outputs = {int(d["shape"][-1]): d["index"] for d in self.interpreter.get_output_details()}
        self._regressors, self._logits = self.interpreter.tensor(outputs[16]), self.interpreter.tensor(outputs[1])
        self.anchors = anchor_centres(model.grids)
        self._logit_threshold = float(np.log(self.min_score / (1.0 - self.min_score)))  # sigmoid(x) > min_score
        self._to_input = (np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)
        """uint8 -> [-1, 1] as one table lookup per value (bit-identical to ``x / 127.5 - 1`` in float32)."""
        self._letterboxes: dict[tuple[int, ...], _Letterbox] = {}
        """One per frame shape recently seen (a camera gives one, tiling adds the tile's; images of many sizes,
        as in a dataset, keep only the last ``KEPT_SHAPES``)."""

    def detect(self, image: np.ndarray) -> list[Face]:
        letterbox = self._fill_input(image)
        self.interpreter.set_tensor(self._input, letterbox.canvas)
        self.interpreter.invoke()
        return self._decode(letterbox)

    def _plan(self, image: np.ndarray) -> _Letterbox:
        if image.shape not in self._letterboxes:
            if len(self._letterboxes) == KEPT_SHAPES:
                del self._letterboxes[next(iter(self._letterboxes))]
            height, width = image.shape[:2]
            size = self.model.size
            scale = size / max(width, height)
            w, h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
            halves, extent = [], 1
            while (width // extent) // 2 >= w and (height // extent) // 2 >= h:
                extent *= 2
                halves.append(np.empty((height // extent, width // extent, *image.shape[2:]), np.uint8))
            # The frame pixels the canvas shows: halving drops an odd last row or column.
            shown = (width // extent * extent, height // extent * extent)
            self._letterboxes[image.shape] = _Letterbox(
                width, height, np.full((1, size, size, 3), -1.0, np.float32), halves,
                np.empty((h, w, *image.shape[2:]), np.uint8), np.empty((h, w, 3), np.uint8),
                np.array([shown[0] / w, shown[1] / h] * 2, np.float32))
        return self._letterboxes[image.shape]

    def _fill_input(self, image: np.ndarray) -> _Letterbox:
        """Shrink the frame, convert the small copy to RGB, and write it as [-1, 1] into the input canvas."""
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        letterbox = self._plan(image)
        h, w = letterbox.small.shape[:2]
        for half in letterbox.halves:
            hh, hw = half.shape[:2]
            cv2.resize(image[:2 * hh, :2 * hw], (hw, hh), dst=half, interpolation=cv2.INTER_AREA)
            image = half
        if image.shape[:2] == (h, w):
            letterbox.small[...] = image
        else:
            cv2.resize(image, (w, h), dst=letterbox.small, interpolation=cv2.INTER_LINEAR)
        small = letterbox.small
        code = cv2.COLOR_GRAY2RGB if small.ndim == 2 else cv2.COLOR_BGRA2RGB if small.shape[2] == 4 else cv2.COLOR_BGR2RGB
        cv2.cvtColor(small, code, dst=letterbox.rgb)
        np.take(self._to_input, letterbox.rgb, out=letterbox.canvas[0, :h, :w], mode="clip")
        return letterbox

    def _decode(self, letterbox: _Letterbox) -> list[Face]:
        logits = self._logits()[0, :, 0]
        candidates = np.flatnonzero(logits > self._logit_threshold)
        if not candidates.size:
            return []
        size = np.float32(self.model.size)
        raw = self._regressors()[0, candidates, :4]  # centre offset and size, in model-input pixels
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[candidates], -100.0, 100.0)))
        dx, dy, scale = self.model.framing
        sides = raw[:, 2:4] * scale
        centres = raw[:, :2] + self.anchors[candidates] * size + raw[:, 2:4] * np.array([dx, dy], np.float32)
        boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1) * letterbox.pixels_per_unit
        return to_faces(*weighted_nms(boxes, scores, self.iou_threshold), letterbox.width, letterbox.height, self.min_size)
