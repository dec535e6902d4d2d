"""The one preprocessing path: training, evaluation and the device all call these functions.

A face goes through four steps, each a small function below, joined by :func:`face_input`:

1. ``crop_face``       square crop around the detected box, enlarged by a margin
2. ``to_gray``         colour crop -> 8-bit grayscale (after the crop: the same pixels, without
                       converting the whole frame)
3. ``prepare_face``    resize to the model input, then global gamma equalization (uint8)
4. ``normalize``       uint8 -> float32 model input (``x * scale + offset``)

The trainer caches the uint8 output of step 3 and applies step 4 (with the same float32
constants) after augmentation, so a model sees on the device exactly what it saw in training.
The :class:`PreprocessSpec` travels in every model bundle's manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edge.errors import UserError
from edge.validate import build

LEVELS = np.arange(256) / 255.0
"""The 256 byte values scaled to [0, 1]: the domain of gamma equalization's lookup table."""


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to reproduce a model's input from a face image."""

    input_size: int = 48
    crop_margin: float = 0.07
    """Fraction of the detected box's larger side added on every side before cropping.

    0.07 reproduces FER2013's framing: BlazeFace finds FER2013 faces at a median 42 px side in
    the 48 px images, and 42 * (1 + 2 * 0.07) = 48."""
    gamma_target: float = 0.5
    """Mean intensity (0..1) that global gamma equalization maps each face to."""
    scale: float = 1.0 / 255.0
    offset: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self):
        if not (8 <= self.input_size <= 512 and 0 <= self.crop_margin <= 1 and 0 < self.gamma_target < 1
                and self.scale > 0 and math.isfinite(self.offset)):
            raise ValueError(f"preprocessing spec out of range: {self}")

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        """A checked spec (types, finite numbers, ranges): it comes from a bundle, which comes from outside."""
        if not isinstance(data, dict):
            raise UserError("preprocessing spec must be a mapping")
        return build(cls, data, "preprocessing.")


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return an 8-bit grayscale copy of a grayscale, BGR or BGRA image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise UserError(f"expected a uint8 image array, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise UserError(f"expected a grayscale, BGR or BGRA image, got shape {image.shape}")


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """Square crop centred on ``box`` (x, y, w, h), its side ``max(w, h) * (1 + 2 * margin)``.

    Parts of the square outside the frame are filled by replicating the border, so a face at
    the edge of the frame keeps its position in the crop instead of being stretched.
    """
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * (1.0 + 2.0 * margin))))
    x0 = int(round(x + w / 2.0 - side / 2.0))
    y0 = int(round(y + h / 2.0 - side / 2.0))
    height, width = gray.shape[:2]
    pad = (max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width))
    crop = gray[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
    if crop.size == 0:
        raise UserError(f"face box {box} lies outside the {width}x{height} frame")
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
    return crop


def mean_level(gray: np.ndarray) -> float:
    """The face's mean intensity scaled to (0, 1), clipped to [1/255, 254/255]: what gamma equalization maps to
    ``gamma_target``, and the brightness the camera saw (events carry it; drift watch follows it). OpenCV's exact
    integer sum over the pixel count: the same double as ``gray.mean()`` in a tenth of the time (it runs for every
    face of every frame)."""
    return min(max(cv2.sumElems(gray)[0] / gray.size / 255.0, 1.0 / 255.0), 254.0 / 255.0)


def gamma_equalize(gray: np.ndarray, target: float = 0.5, mu: float | None = None) -> np.ndarray:
    """Global gamma equalization (after Khemakhem & Ltifi 2019).

    With ``mu`` the mean intensity of the image scaled to (0, 1) (:func:`mean_level`, unless the caller has it),
    choose

        gamma = log(target) / log(mu)            so that mu ** gamma == target

    and map every pixel ``I`` to ``O = 255 * (I / 255) ** gamma``. Dark faces are brightened
    (gamma < 1) and bright ones darkened (gamma > 1); the shape of the histogram is kept,
    unlike histogram equalization. ``mu`` is clipped to [1/255, 254/255] so blank images stay
    finite. The mapping is applied through a 256-entry lookup table: exact and cheap.
    """
    gamma = np.log(target) / np.log(mean_level(gray) if mu is None else mu)
    lut = np.round(255.0 * LEVELS ** gamma).astype(np.uint8)
    return cv2.LUT(gray, lut)


def resize_face(gray_face: np.ndarray, size: int) -> np.ndarray:
    """A grayscale face crop at the model's input side (area averaging to shrink, bilinear to enlarge)."""
    if gray_face.shape[:2] != (size, size):
        shrinking = gray_face.shape[0] > size or gray_face.shape[1] > size
        gray_face = cv2.resize(gray_face, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return gray_face


def prepare_face(gray_face: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize a grayscale face crop to the model input and gamma-equalize it (uint8, S x S)."""
    return gamma_equalize(resize_face(gray_face, spec.input_size), spec.gamma_target)


def normalize(faces: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 faces (..., S, S) -> float32 model input (..., S, S, 1): ``x * scale + offset``."""
    x = faces.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    return x[..., None]


def face_input(image: np.ndarray, spec: PreprocessSpec, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Steps 1-3 for one face: crop (when a box is given), grayscale, prepare -> uint8 model-sized face.

    What the trainer caches and the device batches. Grayscale conversion is per pixel and the crop
    pads by replicating the border, so cropping first gives the same bytes as converting first."""
    return face_input_level(image, spec, box)[0]


def face_input_level(image: np.ndarray, spec: PreprocessSpec, box: tuple[int, int, int, int] | None = None) -> \
        tuple[np.ndarray, float]:
    """:func:`face_input`, and the face's :func:`mean_level` before equalization (the device publishes it)."""
    if box is not None:
        image = crop_face(image, box, spec.crop_margin)
    gray = resize_face(to_gray(image), spec.input_size)
    level = mean_level(gray)
    return gamma_equalize(gray, spec.gamma_target, level), level


def preprocess_face(image: np.ndarray, spec: PreprocessSpec, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The whole path for one face: :func:`face_input`, then normalize."""
    return normalize(face_input(image, spec, box), spec)
