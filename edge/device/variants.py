"""The shipped model variants, and the choice among them by measurement on the device itself.

Edge-vision projects ship a ladder of sizes (MediaPipe's lite/full, Ultralytics n/s/m) because what a device can
afford depends on its cores, its frame rate and how many faces it sees. That is measured, not guessed: with
``model.variant: auto`` (or ``edge bench --choose``) each shipped variant's model is timed here, at the device's
threads and back-end, on a batch of ``model.expected_faces`` faces, beside the configured face detector on a
frame of the configured size; the most accurate variant whose frame fits the budget wins. Each bundle's manifest
carries its validation accuracy (``metrics.validation_accuracy``, one pass on FER2013 PublicTest), so every choice
says what it traded: the table and the reason name both figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

from edge.device.config import AUTO, Config
from edge.model.bundle import Bundle, load_bundle
from edge.release import shipped_variants, variant_path

FRAME_SHARE = 0.8
"""The share of a frame's budget the two models may take: the rest (preprocessing, tracking, publishing) stays
under 20 % of a frame (``edge bench``'s ``/floor`` column measures it)."""
TIMED_RUNS = 20


def accuracy(bundle: Bundle) -> float:
    """The validation accuracy the bundle's manifest records (0 where it records none: never preferred)."""
    value = bundle.manifest.get("metrics", {}).get("validation_accuracy")
    return float(value) if isinstance(value, (int, float)) else 0.0


@dataclass(frozen=True)
class Budget:
    fps: float
    """Frames per second the device must keep up with."""
    faces: int
    """Faces expected in a frame: the emotion model runs once per face."""

    @property
    def ms(self) -> float:
        """Milliseconds the two models may take per frame."""
        return FRAME_SHARE * 1000 / self.fps

    def describe(self) -> str:
        return (f"{self.ms:.0f} ms for the models per frame ({FRAME_SHARE:.0%} of a frame at {self.fps:g} fps) "
                f"with {self.faces} face{'s' * (self.faces != 1)}")


@dataclass(frozen=True)
class Timing:
    variant: str
    model_id: str
    accuracy: float
    face_ms: float
    """Median wall milliseconds of the emotion model per face, at the budget's batch."""
    frame_ms: float
    """The detector's milliseconds plus ``faces`` x ``face_ms``."""
    fits: bool


@dataclass(frozen=True)
class Choice:
    variant: str
    reason: str
    timings: tuple[Timing, ...] = ()

    def table(self) -> str:
        lines = [f"{'variant':<10}{'accuracy':>9}{'ms/face':>9}{'frame ms':>10}  fits  model"]
        lines += [f"{t.variant:<10}{t.accuracy:>9.2%}{t.face_ms:>9.2f}{t.frame_ms:>10.2f}  {'yes ' if t.fits else 'no  '}  "
                  f"{t.model_id}{'  <- chosen' if t.variant == self.variant else ''}" for t in self.timings]
        return "\n".join(lines + [f"chosen: {self.variant}: {self.reason}"])


def median_ms(call, runs: int = TIMED_RUNS) -> float:
    """Median wall milliseconds of ``call()``, after two untimed calls (the first allocates and prepares kernels)."""
    call(), call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def detector_ms(detector, width: int, height: int) -> float:
    """The detector's milliseconds on a ``width`` x ``height`` frame holding the self-check's known face."""
    import cv2

    from edge.model.selfcheck import KNOWN_FACE

    frame = np.full((height, width, 3), 90, np.uint8)
    face = cv2.imread(str(KNOWN_FACE), cv2.IMREAD_COLOR)
    if face is not None:
        side = min(width, height) // 2
        top, left = (height - side) // 2, (width - side) // 2
        frame[top:top + side, left:left + side] = cv2.resize(face, (side, side))
    return median_ms(lambda: detector.detect(frame))


def choose(timings: list[Timing], budget: Budget) -> Choice:
    """The most accurate variant whose frame fits ``budget``; where none fits, the fastest."""
    fitting = [t for t in timings if t.fits]
    if fitting:
        best = max(fitting, key=lambda t: (t.accuracy, -t.frame_ms))
        others = [t for t in timings if t.accuracy > best.accuracy]
        why = (f"the most accurate variant ({best.accuracy:.2%}) whose frame ({best.frame_ms:.1f} ms) fits "
               f"{budget.describe()}")
        if others:
            slowest = min(others, key=lambda t: t.frame_ms)
            why += f"; {slowest.variant} ({slowest.accuracy:.2%}) needs {slowest.frame_ms:.1f} ms"
        return Choice(best.variant, why, tuple(timings))
    fastest = min(timings, key=lambda t: t.frame_ms)
    return Choice(fastest.variant, f"no variant fits {budget.describe()}: the fastest ({fastest.frame_ms:.1f} ms a "
                  "frame); lower model.target_fps or model.expected_faces, or detect every n-th frame", tuple(timings))


def measure(classifier_for, detector, budget: Budget, width: int, height: int,
            variants: list[str] | None = None) -> Choice:
    """Time each of ``variants`` (default: every shipped one) through ``classifier_for(bundle)`` (the device's
    own classifier: its threads, back-end and flip setting) beside ``detector``, and :func:`choose`."""
    detect = detector_ms(detector, width, height)
    timings = []
    for name in variants or shipped_variants():
        bundle = load_bundle(variant_path(name))
        classifier = classifier_for(bundle)
        side = bundle.spec.input_size
        faces = np.random.default_rng(0).integers(0, 256, (budget.faces, side, side), dtype=np.uint8)
        face = median_ms(partial(classifier.predict, faces)) / budget.faces
        frame = detect + budget.faces * face
        timings.append(Timing(name, bundle.model_id, accuracy(bundle), round(face, 3), round(frame, 3),
                              frame <= budget.ms))
    return choose(timings, budget)


def resolve(cfg: Config) -> Choice:
    """Which variant ``cfg`` runs as its release bundle, and why; ``auto`` is measured here and written back into
    ``cfg.model.variant``, so everything after start-up sees one concrete variant. An empty variant: ``model.bundle``
    names the release bundle instead."""
    from edge.model.classifier import EmotionClassifier
    from edge.model.detect import make_detector

    model = cfg.model
    if model.bundle:
        return Choice("", f"model.bundle is set ({model.bundle}): no shipped variant")
    if model.variant != AUTO:
        return Choice(model.variant, f"model.variant: {model.variant} (configured)")
    detector = make_detector(cfg.detector.name, cfg.detector.min_score, cfg.detector.min_size, model.threads)
    choice = measure(lambda bundle: EmotionClassifier(bundle, model.threads, model.tta_flip, model.backend,
                                                      model.providers),
                     detector, Budget(model.target_fps, model.expected_faces), cfg.source.width, cfg.source.height)
    model.variant = choice.variant
    return Choice(choice.variant, f"model.variant auto, measured on this device: {choice.reason}", choice.timings)
