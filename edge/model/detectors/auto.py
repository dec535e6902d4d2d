"""``auto``: one invoke per frame when faces are near the camera, tiles when the camera sees a room.

The short-range model on the whole frame costs one invoke and finds faces down to about a sixth
of the frame's side; tiles find faces of 32 pixels in 640x480 for a dozen invokes. Which one a
camera needs depends on where it hangs, and can change (a kiosk, then a crowd). So every
``probe_every``-th detection runs the tiles, whose first pass is the whole frame: when the tiles
find a face with a score of at least ``sure`` that the whole frame missed, the frames until the
next probe get the tiles, otherwise the whole-frame model (which then also answers the probe
frame). Enlarged tiles make the model see faces in small patterns (a badge, a coin) at scores up
to about 0.6, and true faces score up to 0.99: one sure face missed is enough to tell a room.
A device whose scene is known fixes the choice in its configuration (``detector.name: blazeface``
or ``blazeface-tiles``) and never pays for the probes.
"""

from __future__ import annotations

import numpy as np

from edge.model.detectors.base import Face, corners, pairwise_iou
from edge.model.detectors.blazeface import BlazeFace
from edge.model.detectors.tiles import Tiles


class Auto:
    name = "auto"

    def __init__(self, near: BlazeFace, room: Tiles, probe_every: int = 30, sure: float = 0.7):
        self.near, self.room, self.probe_every, self.sure = near, room, probe_every, sure
        self.chosen: BlazeFace | Tiles = near
        """The detector between probes."""
        self._calls = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        self._calls += 1
        if (self._calls - 1) % self.probe_every:
            return self.chosen.detect(image)
        faces, whole = self.room.detect_passes(image)
        sure = [face for face in faces if face.score >= self.sure]
        seen = pairwise_iou(np.concatenate([corners(sure), corners(whole)]))[:len(sure), len(sure):]
        if sure and (not whole or (seen.max(axis=1) < 0.3).any()):  # a sure face the whole frame missed
            self.chosen = self.room
            return faces
        self.chosen = self.near
        return self.near.detect(image)
