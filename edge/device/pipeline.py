"""The per-frame work, shared by the runtime and the benchmark so both measure the same code.

:class:`Analyzer` is detect -> preprocess -> infer (all faces of a frame in one batch);
:class:`Publisher` is track -> smooth -> events and state. Each returns its stage times in ms.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edge.device.config import PublishConfig
from edge.device.sources import Frame
from edge.device.tracking import Track, Tracker
from edge.model.bundle import Bundle
from edge.model.classifier import EmotionClassifier
from edge.model.detect import Face, FaceDetector
from edge.model.preprocess import face_input_level

STAGES = ("detect", "preprocess", "infer", "track", "publish", "total")
STATE_CONFIDENCE_STEP = 0.05
"""The retained ``state`` is published on change: faces in view, a label or the model, or the overall
confidence moving this much since the last one. Not with every event, so a Home Assistant recorder
(or any retained-state consumer) stores changes, not a once-a-second stream."""


@dataclass
class Analysis:
    frame: Frame
    faces: list[Face]
    probs: np.ndarray
    bundle: Bundle
    ms: dict[str, float] = field(default_factory=dict)
    levels: list[float] = field(default_factory=list)
    """Each face's mean brightness before gamma equalization, 0..1 (events carry it for drift watch)."""


class Analyzer:
    """detect -> preprocess -> infer for one frame; the classifier may be swapped between frames (reload).

    Each face is cropped from the colour frame and only the crop is converted to gray: the same pixels as
    converting the whole frame first (grayscale conversion and the crop's border replication are both per
    pixel), for a fraction of the work. The batch of faces is written into one buffer kept between frames.
    """

    def __init__(self, detector: FaceDetector, classifier: EmotionClassifier, max_faces: int):
        self.detector, self.classifier, self.max_faces = detector, classifier, max_faces
        self._crops = np.empty((max_faces, classifier.spec.input_size, classifier.spec.input_size), np.uint8)

    def __call__(self, frame: Frame) -> Analysis:
        classifier = self.classifier  # one model for the whole frame, even if a reload swaps it meanwhile
        spec = classifier.spec
        if self._crops.shape[1] != spec.input_size:
            self._crops = np.empty((self.max_faces, spec.input_size, spec.input_size), np.uint8)
        t0 = time.perf_counter()
        faces = self.detector.detect(frame.image)[: self.max_faces]
        t1 = time.perf_counter()
        levels = []
        for i, face in enumerate(faces):
            self._crops[i], level = face_input_level(frame.image, spec, face.box)
            levels.append(level)
        t2 = time.perf_counter()
        probs = classifier.predict(self._crops[: len(faces)])
        t3 = time.perf_counter()
        return Analysis(frame, faces, probs, classifier.bundle,
                        {"detect": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "infer": (t3 - t2) * 1e3}, levels)


class Sink(Protocol):
    def event(self, payload: dict) -> None: ...

    def state(self, payload: dict) -> None: ...


class Publisher:
    """Tracks faces, smooths their scores, and emits an event per track on a change of emotion or at ``rate_hz``."""

    def __init__(self, tracker: Tracker, sink: Sink, cfg: PublishConfig, device: str):
        self.tracker, self.sink, self.device = tracker, sink, device
        self.rate_hz = cfg.rate_hz
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0
        self._summary: tuple = ()
        self._confidence = 0.0

    def __call__(self, analysis: Analysis) -> dict[str, float]:
        t0 = time.perf_counter()
        tracks = self.tracker.update([f.box for f in analysis.faces], analysis.probs)
        t1 = time.perf_counter()
        classes, model = analysis.bundle.classes, {"id": analysis.bundle.model_id, "version": analysis.bundle.version}
        labels = [classes[int(track.scores.argmax())] for track in tracks]
        now = time.monotonic()
        for face, (track, label) in enumerate(zip(tracks, labels)):  # the tracker returns tracks in face order
            if label != track.published_label or now - track.published_at >= 1.0 / self.rate_hz:
                self.sink.event(self._event(analysis, face, track, label, classes, model))
                track.published_label, track.published_at = label, now
        # The state describes the faces in view: a track kept alive through a missed detection
        # (tracking.max_missed) is not a face anyone sees, e.g. after a person moved too far for IoU.
        summary = (model["id"], tuple(zip((t.id for t in tracks), labels)))
        overall = self._overall(tracks, classes)
        if summary != self._summary or abs(overall["confidence"] - self._confidence) >= STATE_CONFIDENCE_STEP:
            self._summary, self._confidence = summary, overall["confidence"]
            self.sink.state(self._state(analysis, tracks, labels, model, overall))  # built only when it is sent
        return {"track": (t1 - t0) * 1e3, "publish": (time.perf_counter() - t1) * 1e3}

    def _event(self, analysis: Analysis, face: int, track: Track, label: str, classes: list[str], model: dict) -> dict:
        event = {"event_id": f"{self.device}-{self.run}-{self.seq}", "seq": self.seq, "ts": round(analysis.frame.ts, 3),
                 "device": self.device, "frame": analysis.frame.index, "track_id": track.id, "box": list(track.box),
                 "label": label, "confidence": round(float(track.scores.max()), 4),
                 "scores": {c: round(float(p), 4) for c, p in zip(classes, track.scores)}, "model": model}
        if face < len(analysis.levels):
            event["brightness"] = round(analysis.levels[face], 4)
        self.seq += 1
        return event

    @staticmethod
    def _overall(tracks: list[Track], classes: list[str]) -> dict:
        """The room's emotion: the tracks' mean scores, or ``none`` with no face in view."""
        if not tracks:
            return {"label": "none", "confidence": 0.0, "faces": 0}
        mean = sum(t.scores for t in tracks) / len(tracks)  # a few small vectors: cheaper than stacking them
        best = int(mean.argmax())
        return {"label": classes[best], "confidence": round(float(mean[best]), 4), "faces": len(tracks)}

    def _state(self, analysis: Analysis, tracks: list[Track], labels: list[str], model: dict, overall: dict) -> dict:
        return {"ts": round(analysis.frame.ts, 3), "device": self.device, "overall": overall, "model": model,
                "tracks": [{"id": t.id, "label": label, "confidence": round(float(t.scores.max()), 4), "box": list(t.box)}
                           for t, label in zip(tracks, labels)]}
