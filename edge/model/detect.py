"""Face detectors behind one interface, chosen by name: ``make_detector(name).detect(image) -> list[Face]``.

The detectors are small plug-ins in :mod:`edge.model.detectors`, one file each, all returning boxes
in the short-range model's framing, so the emotion crop is the same whichever found the face:

- ``blazeface``: MediaPipe's short-range BlazeFace on the whole frame (the training detector; one
  invoke; faces near the camera, down to about a quarter of the frame);
- ``blazeface-tiles``: the same model on overlapping tiles too (a room: faces down to 32 px in 640x480);
- ``blazeface-int8``: the short-range model quantized to INT8 (``trainer quantize-detector``): faster where
  integer arithmetic is, a little less recall (``bench/detection.py``);
- ``blazeface-full``: MediaPipe's full-range BlazeFace on the whole frame (one larger invoke);
- ``auto``: ``blazeface`` or ``blazeface-tiles``, whichever the faces in view need;
- ``haar``: OpenCV's Haar cascade (needs only OpenCV).

``every_n`` > 1 wraps any of them so it runs on every n-th frame and faces are followed in between.
This module is the one entry point: the device runtime, ``edge bench`` and the trainer's dataset
preparation all build their detector here.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.errors import UserError
from edge.model.detectors.auto import Auto
from edge.model.detectors.base import Face, FaceDetector
from edge.model.detectors.blazeface import FULL_RANGE, SHORT_RANGE, SHORT_RANGE_INT8, BlazeFace
from edge.model.detectors.follow import EveryN
from edge.model.detectors.haar import HaarDetector
from edge.model.detectors.tiles import Tiles

__all__ = ["DETECTORS", "Face", "FaceDetector", "make_detector"]


def _tiles(min_score: float, min_size: int, threads: int) -> Tiles:
    return Tiles(BlazeFace(SHORT_RANGE, min_score, threads=threads), min_size=min_size)


DETECTORS: dict[str, Callable[[float, int, int], FaceDetector]] = {
    "blazeface": lambda min_score, min_size, threads: BlazeFace(SHORT_RANGE, min_score, min_size=min_size, threads=threads),
    "blazeface-tiles": _tiles,
    "blazeface-int8": lambda min_score, min_size, threads: BlazeFace(SHORT_RANGE_INT8, min_score, min_size=min_size,
                                                                     threads=threads),
    "blazeface-full": lambda min_score, min_size, threads: BlazeFace(FULL_RANGE, min_score, min_size=min_size, threads=threads),
    "auto": lambda min_score, min_size, threads: Auto(BlazeFace(SHORT_RANGE, min_score, min_size=min_size, threads=threads),
                                                      _tiles(min_score, min_size, threads)),
    "haar": lambda min_score, min_size, threads: HaarDetector(min_size),
}
"""Each detector's builder from (score threshold, smallest face side in pixels, LiteRT threads); Haar has no
score threshold and runs in OpenCV's threads."""


def make_detector(name: str, min_score: float = 0.5, min_size: int = 0, threads: int = 1, every_n: int = 1) -> FaceDetector:
    """Build a detector by name (see the module's list); ``every_n`` > 1 detects on every n-th frame only."""
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    if every_n < 1:
        raise UserError(f"every_n must be at least 1 (detect on every frame), got {every_n}")
    detector = DETECTORS[name](min_score, min_size, threads)
    return EveryN(detector, every_n) if every_n > 1 else detector
