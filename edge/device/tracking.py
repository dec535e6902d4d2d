"""Faces followed across frames by box overlap, with each track's emotion scores smoothed over time.

Why: a classifier's per-frame scores flicker (blinks, motion blur, a detector box that jitters),
and a subscriber wants "this person has been happy for ten seconds", not seven labels a second.
Greedy IoU matching is enough at camera frame rates, where a face moves little between frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.device.config import TrackingConfig


@dataclass
class Track:
    id: int
    box: tuple[int, int, int, int]
    scores: np.ndarray
    """Exponential moving average of the class probabilities."""
    hits: int = 1
    missed: int = 0
    published_label: str | None = None
    published_at: float = field(default=float("-inf"))
    """Monotonic time of the last event for this track."""


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Assigns stable ids to faces; ids are never reused within a run."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[tuple[int, int, int, int]], probs: np.ndarray) -> list[Track]:
        """Match this frame's faces to tracks; return the tracks seen in this frame, in face order."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        track_of: dict[int, Track] = {}
        taken: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.cfg.iou:
                break
            if ti in taken or bi in track_of:
                continue
            taken.add(ti)
            track = self.tracks[ti]
            a = self.cfg.smoothing
            track.box, track.scores = boxes[bi], a * probs[bi] + (1 - a) * track.scores
            track.hits, track.missed = track.hits + 1, 0
            track_of[bi] = track
        for ti, track in enumerate(self.tracks):
            if ti not in taken:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.cfg.max_missed]
        for bi, box in enumerate(boxes):
            if bi not in track_of:
                track_of[bi] = Track(self._next_id, box, np.asarray(probs[bi], np.float32).copy())
                self._next_id += 1
                self.tracks.append(track_of[bi])
        return [track_of[bi] for bi in range(len(boxes))]
