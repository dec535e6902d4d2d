"""MediaPipe's BlazeFace detectors, short- and full-range, run through LiteRT and decoded here.

Both model files ship in ``edge/model/assets`` with their Apache-2.0 licence (taken from the
mediapipe 0.10.21 wheel; newer wheels carry neither, and an offline device cannot download them).
Running them through LiteRT directly keeps mediapipe, and the TensorFlow it imports where present,
off the device. The decoding follows MediaPipe's ``face_detection_{short,full}_range`` graphs: SSD
anchors, sigmoid scores, weighted non-maximum suppression.

The frame is shrunk first and converted to the model's RGB [-1, 1] input afterwards (on 1/25 of the
pixels), into buffers allocated once per frame size: the letterbox padding of the input tensor is
written once, not per frame. Decoding is two array operations on the few anchors that pass the score
threshold: the box arithmetic (offsets, framing, the letterbox's scale) is folded into one matrix and
one anchor table per frame size.

The same class runs a full-INT8 model (``blazeface-int8``, built by ``trainer quantize-detector``): the
[-1, 1] scaling and the input's quantization are then one 256-entry table, and only the candidates'
outputs are dequantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.model.detectors.base import Face, to_faces, weighted_nms
from edge.model.litert import dequantization, load_interpreter, quantize

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
SHORT_RANGE_INT8 = BlazeFaceModel("blazeface-int8", ASSETS / "face_detection_short_range_int8.tflite", 128,
                                  ((16, 2), (8, 6)))
"""The short-range model quantized to INT8 by ``trainer quantize-detector`` (see NOTICE.blazeface)."""
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
    """The model input (float32, or the model's INT8): the shrunk frame in its top-left corner, black padding
    written once."""
    shrinks: list[tuple[np.ndarray, int, int]]
    """(buffer, factor, OpenCV interpolation) of each step that shrinks the frame by a power of two while it is still at
    least twice the model's scale: OpenCV's exact 2x area resize is several times faster than a 5x one. A first
    shrink of 4x or more starts with one bilinear 4x step, which averages the central 2x2 pixels of each 4x4
    block and reads half the rows: cheaper than two area halvings (``bench/detect_steps.py`` has both as rows), at
    the same recall by face size (``bench/detection.py``)."""
    small: np.ndarray
    """The frame at the model's scale, in the frame's own channel layout (bilinear from the last shrink)."""
    rgb: np.ndarray
    to_corners: np.ndarray
    """(4, 4): a candidate's regression (centre offset x, y, width, height in model-input pixels) -> its
    frame-pixel corner offsets (x0, y0, x1, y1) from its anchor, the model's framing included."""
    anchors: np.ndarray
    """(anchors, 4): each anchor's centre in frame pixels, as (x, y, x, y), to add to the corner offsets."""


class BlazeFace:
    """A BlazeFace model through LiteRT: letterbox (top-left, black padding), invoke, decode, weighted NMS."""

    def __init__(self, model: BlazeFaceModel = SHORT_RANGE, min_score: float = 0.5, iou_threshold: float = 0.3,
                 min_size: int = 0, threads: int = 1):
        """``min_score`` 0.5 and ``iou_threshold`` 0.3 are MediaPipe's defaults for both models."""
        self.model, self.name = model, model.name
        self.min_score, self.iou_threshold, self.min_size = min_score, iou_threshold, min_size
        self.interpreter = load_interpreter(model.file, threads)
        details = self.interpreter.get_input_details()[0]
        self._input = details["index"]
        self._to_input = quantize(np.arange(256) / 127.5 - 1.0, details)
        """Byte value -> the model's input ([-1, 1], quantized for an INT8 model); its first entry pads the letterbox."""
        outputs = {int(d["shape"][-1]): d for d in self.interpreter.get_output_details()}
        self._regressors, self._logits = (self.interpreter.tensor(outputs[n]["index"]) for n in (16, 1))
        self._dequantize = {n: dequantization(outputs[k]) for n, k in (("regressors", 16), ("logits", 1))}
        self.anchors = anchor_centres(model.grids)
        scale, zero_point = self._dequantize["logits"]
        self._logit_threshold = float(np.log(self.min_score / (1.0 - self.min_score))) / scale + zero_point
        """sigmoid(x) > min_score, in the model's output units."""
        dx, dy, scale = model.framing
        self._to_corners = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [dx - scale / 2, 0, dx + scale / 2, 0],
                                     [0, dy - scale / 2, 0, dy + scale / 2]], np.float32)
        """Model-input pixels: x0 = x + (dx - scale / 2) * w, x1 = x + (dx + scale / 2) * w, alike in y."""
        self._letterboxes: dict[tuple[int, ...], _Letterbox] = {}
        """One per frame shape recently seen (a camera gives one, tiling adds the tile's; images of many sizes,
        as in a dataset, keep only the last ``KEPT_SHAPES``)."""

    def detect(self, image: np.ndarray) -> list[Face]:
        letterbox = self._fill_input(image)
        self.interpreter.set_tensor(self._input, letterbox.canvas)
        self.interpreter.invoke()
        return self._decode(letterbox)

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """A copy of the input tensor this detector gives its model for ``image``: calibration data for an INT8 twin."""
        return self._fill_input(image).canvas.copy()

    def _plan(self, image: np.ndarray) -> _Letterbox:
        if image.shape not in self._letterboxes:
            if len(self._letterboxes) == KEPT_SHAPES:
                del self._letterboxes[next(iter(self._letterboxes))]
            height, width = image.shape[:2]
            size = self.model.size
            scale = size / max(width, height)
            w, h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
            shrinks, extent = [], 1
            while (width // extent) // 2 >= w and (height // extent) // 2 >= h:
                extent *= 2
                buffer = np.empty((height // extent, width // extent, *image.shape[2:]), np.uint8)
                if extent == 4:  # the first two halvings in one bilinear step
                    shrinks[0] = (buffer, 4, cv2.INTER_LINEAR)
                else:
                    shrinks.append((buffer, 2, cv2.INTER_AREA))
            # The frame pixels the canvas shows: halving drops an odd last row or column.
            shown = (width // extent * extent, height // extent * extent)
            pixels_per_unit = np.array([shown[0] / w, shown[1] / h] * 2, np.float32)
            self._letterboxes[image.shape] = _Letterbox(
                width, height, np.full((1, size, size, 3), self._to_input[0]), shrinks,
                np.empty((h, w, *image.shape[2:]), np.uint8), np.empty((h, w, 3), np.uint8),
                self._to_corners * pixels_per_unit, np.tile(self.anchors * size, 2) * pixels_per_unit)
        return self._letterboxes[image.shape]

    def _fill_input(self, image: np.ndarray) -> _Letterbox:
        """Shrink the frame, convert the small copy to RGB, and write it as [-1, 1] into the input canvas."""
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        letterbox = self._plan(image)
        h, w = letterbox.small.shape[:2]
        for smaller, factor, interpolation in letterbox.shrinks:
            sh, sw = smaller.shape[:2]
            cv2.resize(image[:factor * sh, :factor * sw], (sw, sh), dst=smaller, interpolation=interpolation)
            image = smaller
        if image.shape[:2] == (h, w):
            letterbox.small[...] = image
        else:
            cv2.resize(image, (w, h), dst=letterbox.small, interpolation=cv2.INTER_LINEAR)
        small = letterbox.small
        code = cv2.COLOR_GRAY2RGB if small.ndim == 2 else cv2.COLOR_BGRA2RGB if small.shape[2] == 4 else cv2.COLOR_BGR2RGB
        cv2.cvtColor(small, code, dst=letterbox.rgb)
        # x / 127.5 - 1, in place into the canvas (OpenCV takes its row stride): for a float model in one vectorized
        # pass (6 us here, against 10 for a float table), for an INT8 one through the table that also quantizes.
        corner = letterbox.canvas[0, :h, :w]
        if corner.dtype == np.float32:
            cv2.addWeighted(letterbox.rgb, 1.0 / 127.5, letterbox.rgb, 0.0, -1.0, dst=corner, dtype=cv2.CV_32F)
        else:
            cv2.LUT(letterbox.rgb, self._to_input, dst=corner)
        return letterbox

    def _decode(self, letterbox: _Letterbox) -> list[Face]:
        logits = self._logits()[0, :, 0]
        candidates = np.flatnonzero(logits > self._logit_threshold)
        if not candidates.size:
            return []
        (scale, zero_point), (logit_scale, logit_zero) = self._dequantize["regressors"], self._dequantize["logits"]
        logits = (logits[candidates].astype(np.float32) - logit_zero) * logit_scale
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100.0, 100.0)))
        regressions = (self._regressors()[0, candidates, :4].astype(np.float32) - zero_point) * scale
        boxes = regressions @ letterbox.to_corners + letterbox.anchors[candidates]
        return to_faces(*weighted_nms(boxes, scores, self.iou_threshold), letterbox.width, letterbox.height, self.min_size)
