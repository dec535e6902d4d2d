"""``edge bench``: per-stage milliseconds and end-to-end FPS of the runtime's own per-frame code.

Runs :class:`~edge.device.pipeline.Analyzer` and :class:`~edge.device.pipeline.Publisher` (events into a real
SQLite spool, no broker) on frames held in memory, so the figures are the device's compute cost
without camera or network waits. The built-in streams are 640x480 frames made from scikit-image's
astronaut (public domain): 1, 3 and 10 faces drifting a few pixels per frame, and one face moving
fast across the frame with its true box known, on which ``every_n`` > 1 shows what following faces
between detections costs (box overlap with the truth, emotion agreement with detecting every frame).

Beside the wall-clock milliseconds of each stage, each frame's CPU time is measured (the process's, so
LiteRT's own threads count too): on a shared machine another process's time slice lands inside some
frames and adds milliseconds of waiting to them, never CPU time. Each row also times the two models'
invokes alone, in CPU time, in the same process right after its frames: the detector's (once per tile
with ``blazeface-tiles``) and the emotion model's (at the row's batch). Their sum is the frame's
compute floor, and ``CPU ms / floor`` is what the rest of the code costs.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.device.config import DetectorConfig, PublishConfig, SourceConfig, TrackingConfig
from edge.device.pipeline import Analyzer, Publisher
from edge.device.runtime import rss_mb
from edge.device.sources import Frame, make_source
from edge.device.spool import Spool
from edge.device.tracking import Tracker, iou
from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.detect import make_detector
from edge.model.detectors.blazeface import BlazeFace
from edge.model.detectors.follow import EveryN
from edge.model.detectors.tiles import Tiles, tile_grid
from edge.model.litert import load_interpreter
from edge.protocol.payloads import encode

WIDTH, HEIGHT = 640, 480
HEAD = (137, 32, 170, 170)
"""x, y, w, h of a square around the astronaut's head in skimage's 512x512 image."""
ASTRONAUT_FACE = (178, 81, 94, 94)
"""The short-range BlazeFace box of the astronaut's face in skimage's 512x512 image (the training framing)."""
STREAMS = ("1 face", "3 faces", "10 faces", "moving face")
HIDDEN = range(45, 51)
"""Frames of the moving-face stream in which the face is out of sight: detecting every n-th frame finds it again
up to n - 1 frames late."""
MAX_FACES = 30
"""Every face of the built-in streams is classified (a device's ``detector.max_faces`` is 5 by default)."""


@dataclass(frozen=True)
class FaceSource:
    """A face to paste into a frame: an image around it and the face's box in that image."""

    image: np.ndarray
    """BGR or grayscale uint8."""
    box: tuple[int, int, int, int]


def astronaut() -> np.ndarray:
    """scikit-image's astronaut as a BGR frame, as a camera gives it."""
    try:
        from skimage import data
    except ImportError:
        raise UserError("the built-in test streams need scikit-image (pip install scikit-image); "
                        "or pass --source with a video of faces") from None
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def astronaut_face(margin: float = 0.25) -> FaceSource:
    """The astronaut's face with ``margin`` box sides of her image around it on every side (hair, collar)."""
    x, y, w, h = ASTRONAUT_FACE
    dx, dy = round(margin * w), round(margin * h)
    return FaceSource(astronaut()[y - dy:y + h + dy, x - dx:x + w + dx], (dx, dy, w, h))


def paste(frame: np.ndarray, face: FaceSource, size: int, x: int, y: int) -> tuple[int, int, int, int]:
    """Blend ``face`` into ``frame`` (in place) scaled so its box is ``size`` pixels wide, its image's top-left at
    (x, y), through an elliptical mask with soft edges (no square seams for a detector to find); the box pasted."""
    scale = size / face.box[2]
    patch = cv2.resize(face.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if patch.ndim == 2:
        patch = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
    h, w = patch.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (max(1, int(w * 0.46)), max(1, int(h * 0.48))), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.04 * max(w, h)))[:, :, None]
    region = frame[y:y + h, x:x + w]
    region[:] = np.round(mask * patch + (1 - mask) * region).astype(np.uint8)
    bx, by, bw, bh = face.box
    return x + round(bx * scale), y + round(by * scale), round(bw * scale), round(bh * scale)


def compose(background: np.ndarray, faces: Sequence[tuple[FaceSource, int]], rng: np.random.Generator) -> \
        tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A copy of ``background`` with each (face, box side) pasted into its own cell of a grid, at a random place
    in a random cell: faces never overlap. Returns the frame and the true boxes; a UserError when they cannot fit."""
    frame = background.copy()
    height, width = frame.shape[:2]
    patches = [(face, size, int(np.ceil(max(face.image.shape[:2]) * size / face.box[2]))) for face, size in faces]
    cell = max(p for _, _, p in patches) + 1
    cols, rows = width // cell, height // cell
    if cols * rows < len(faces):
        raise UserError(f"{len(faces)} faces with {cell - 1}-pixel images do not fit a {width}x{height} frame")
    boxes = []
    for (face, size, _), slot in zip(patches, rng.permutation(cols * rows)[:len(faces)]):
        h, w = (int(np.ceil(s * size / face.box[2])) for s in face.image.shape[:2])
        x = (slot % cols) * cell + int(rng.integers(0, cell - w + 1))
        y = (slot // cols) * cell + int(rng.integers(0, cell - h + 1))
        boxes.append(paste(frame, face, size, min(x, width - w), min(y, height - h)))
    return frame, boxes


def noise_background(rng: np.random.Generator) -> np.ndarray:
    """A flat grey 640x480 frame with pixel noise: the background of the built-in streams."""
    return np.full((HEIGHT, WIDTH, 3), 90, np.uint8) + rng.integers(0, 20, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def synthetic_stream(faces: int, frames: int = 30, seed: int = 0) -> list[np.ndarray]:
    """640x480 BGR frames with ``faces`` astronaut heads drifting a few pixels per frame (up to 3 heads of 190-200
    pixels in a row, more of 100 pixels in a grid of five columns)."""
    x, y, w, h = HEAD
    side = 200 if faces == 1 else 190 if faces <= 3 else 100
    head = cv2.resize(astronaut()[y:y + h, x:x + w], (side, side), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    if faces == 1:
        slots = [((WIDTH - side) // 2, (HEIGHT - side) // 2)]
    elif faces <= 3:
        slots = [(20 + i * (WIDTH - 40 - side) // (faces - 1), 60 + (i % 2) * 160) for i in range(faces)]
    else:
        slots = [(20 + (i % 5) * 122, 20 + (i // 5) * 130) for i in range(faces)]
        if slots[-1][1] + side + 8 > HEIGHT:
            raise UserError(f"the built-in stream holds at most 15 faces, not {faces}")
    out = []
    for k in range(frames):
        frame = noise_background(rng)
        for sx, sy in slots:
            dx, dy = int(8 * np.sin(k / 5)), int(6 * np.cos(k / 7))
            frame[sy + dy:sy + dy + side, sx + dx:sx + dx + side] = head
        out.append(frame)
    return out


def moving_stream(frames: int = 90, size: int = 100, hidden: range = range(0), seed: int = 0) -> \
        tuple[list[np.ndarray], list[tuple | None]]:
    """One astronaut face (box ``size`` pixels) on a closed Lissajous path across the frame, up to about 20 pixels
    per frame (a person walking past at 30 FPS), out of sight in the ``hidden`` frames (behind a pillar); returns
    the frames and the true boxes (None while hidden). The path is periodic, so the stream can loop without a jump."""
    face, rng = astronaut_face(), np.random.default_rng(seed)
    background = noise_background(rng)
    span = int(np.ceil(max(face.image.shape[:2]) * size / face.box[2]))
    images, boxes = [], []
    for k in range(frames):
        t = 2 * np.pi * k / frames
        x = int((WIDTH - span) * (0.5 + 0.45 * np.sin(t)))
        y = int((HEIGHT - span) * (0.5 + 0.4 * np.sin(2 * t)))
        frame = background.copy()
        boxes.append(None if k in hidden else paste(frame, face, size, x, y))
        images.append(frame)
    return images, boxes


def source_frames(uri: str, frames: int) -> list[np.ndarray]:
    """Up to ``frames`` frames of a video file, folder or camera, resized to 640x480."""
    source = make_source(SourceConfig(uri=uri))
    source.open()
    images = []
    try:
        while len(images) < frames and (image := source.read()) is not None:
            images.append(cv2.resize(image, (WIDTH, HEIGHT)))
    finally:
        source.close()
    if not images:
        raise UserError(f"source {uri!r} gave no frames")
    return images


class SpoolSink:
    """The runtime's publish cost without a broker: events encoded and written to a spool, state encoded."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.events = 0

    def event(self, payload: dict) -> None:
        self.spool.push("bench/events", encode(payload))
        self.events += 1

    def state(self, payload: dict) -> None:
        encode(payload)


def invoke_ms(interpreter, repeats: int = 100) -> float:
    """Median CPU ms of ``interpreter.invoke()`` alone, on whatever input it holds."""
    interpreter.invoke()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        interpreter.invoke()
        times.append(time.process_time() - start)
    return float(np.median(times)) * 1e3


@dataclass
class Stream:
    name: str
    images: list[np.ndarray]
    truth: list[tuple | None] | None = None
    """The true box of the one face in each frame (None where it is out of sight), where known."""


def measure(stream: Stream, bundle_dir: Path, detector: str, threads: int, frames: int, spool: Spool,
            every_n: int = 1, publish_hz: float = PublishConfig.rate_hz) -> tuple[dict, dict[int, tuple]]:
    """One row of the report, and by index in the stream each frame's first face's box and top-1 class the first
    time it was analysed after the warm-up (None, None where no face was found)."""
    bundle = load_bundle(bundle_dir)
    face_detector = make_detector(detector, min_size=DetectorConfig.min_size, threads=threads, every_n=every_n)
    classifier = EmotionClassifier(bundle, threads)
    analyzer = Analyzer(face_detector, classifier, MAX_FACES)
    sink = SpoolSink(spool)
    publisher = Publisher(Tracker(TrackingConfig()), sink, PublishConfig(rate_hz=publish_hz), "bench")
    warm_up = 10
    times: list[dict[str, float]] = []
    cpu: list[float] = []
    seen: dict[int, tuple] = {}
    faces = 0
    for i, image in enumerate(itertools.islice(itertools.cycle(stream.images), frames + warm_up)):
        if i == warm_up:  # warm-up done: first invocations allocate and prepare XNNPACK kernels
            times, cpu, faces, sink.events, start = [], [], 0, 0, time.perf_counter()
        used = time.process_time()
        analysis = analyzer(Frame(i, time.time(), image))
        times.append({**analysis.ms, **publisher(analysis)})
        cpu.append((time.process_time() - used) * 1e3)
        faces += len(analysis.faces)
        if i >= warm_up:
            seen.setdefault(i % len(stream.images), (analysis.faces[0].box, int(np.argmax(analysis.probs[0])))
                            if analysis.faces else (None, None))
    wall = time.perf_counter() - start
    # Medians: on a shared machine a few preempted frames would otherwise dominate the means.
    ms = {stage: round(float(np.median([t[stage] for t in times])), 3) for stage in times[0]}
    cpu_ms = float(np.median(cpu))
    frame_ms = [sum(t.values()) for t in times]
    row = {"model": bundle.manifest["input"]["dtype"], "model_id": bundle.model_id, "detector": detector,
           "threads": threads, "every_n": every_n, "faces_per_frame": round(faces / frames, 2),
           "events_per_frame": round(sink.events / frames, 3), "stage_ms": ms,
           "infer_ms_per_face": round(ms["infer"] / max(faces / frames, 1), 3), "frame_ms": round(float(np.median(frame_ms)), 3),
           "cpu_ms": round(cpu_ms, 3),
           "mean_frame_ms": round(float(np.mean(frame_ms)), 3),
           "fps": round(frames / wall, 1)}
    inner = face_detector.detector if isinstance(face_detector, EveryN) else face_detector
    blazeface, invokes = (inner.detector, 1 + len(tile_grid(WIDTH, HEIGHT, inner.tile, inner.overlap))) \
        if isinstance(inner, Tiles) else (inner, 1) if isinstance(inner, BlazeFace) else (None, 0)
    if blazeface and every_n == 1 and faces:  # a floor where every frame runs the same invokes (not Haar, not auto)
        emotion = load_interpreter(bundle.model_bytes, threads)  # the classifier's model, at the row's batch
        tensor = emotion.get_input_details()[0]
        # the batch most frames had (at least one face: a stream where most frames show none still has a floor)
        emotion.resize_tensor_input(tensor["index"], [max(1, round(faces / frames)), *tensor["shape"][1:]])
        emotion.allocate_tensors()
        floor = {"detector_invoke_ms": invokes * invoke_ms(blazeface.interpreter),
                 "emotion_invoke_ms": invoke_ms(emotion)}
        row |= {k: round(v, 3) for k, v in floor.items()} | {"cpu_over_floor": round(cpu_ms / sum(floor.values()), 2)}
    if every_n > 1:
        row["detected_frames"] = round(face_detector.detections / (frames + warm_up), 3)
    return row, seen


def bench(bundle: Path, float_bundle: Path | None = None, source: str | None = None, threads: Sequence[int] = (1, 2),
          detectors: Sequence[str] = ("blazeface", "haar"), frames: int = 200, json_path: Path | None = None,
          streams: Sequence[str] = STREAMS[:2], every_n: Sequence[int] = (1,),
          publish_hz: float = PublishConfig.rate_hz) -> dict:
    """Every combination of stream x model x detector x threads x every_n; returns (and optionally writes) the report.

    On a stream with known boxes each row gets, over the frames where the face is in sight, ``box_iou`` (mean
    overlap of the first face's box with the truth, 0 where none was found) and ``found`` (the share of frames
    where it overlaps by at least 0.5), and against the same combination with ``every_n`` 1,
    ``label_agreement`` (the share of frames with the same top-1 emotion, or no face in both).

    ``publish_hz`` is ``publish.rate_hz``: the device's default by default, so a frame costs what it costs on a
    device; a rate above the frame rate publishes an event per face and frame (the publish stage's worst case)."""
    if source:
        chosen = [Stream("source", source_frames(source, 60))]
    else:
        unknown = [s for s in streams if s not in STREAMS]
        if unknown:
            raise UserError(f"unknown stream {unknown[0]!r}; built-in streams: {', '.join(STREAMS)}")
        chosen = [Stream(name, *moving_stream(hidden=HIDDEN)) if name == "moving face"
                  else Stream(name, synthetic_stream(int(name.split()[0]))) for name in streams]
    bundles = [bundle, *([float_bundle] if float_bundle else [])]
    rows, reference = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.db", 10_000)
        for stream, path, detector, n, every in itertools.product(chosen, bundles, detectors, threads, sorted(every_n)):
            row, seen = measure(stream, path, detector, n, frames, spool, every, publish_hz)
            row = {"stream": stream.name, **row}
            if stream.truth:
                overlaps = [iou(box, stream.truth[k]) if box else 0.0 for k, (box, _) in seen.items() if stream.truth[k]]
                row["box_iou"] = round(float(np.mean(overlaps)), 3)
                row["found"] = round(float(np.mean([v >= 0.5 for v in overlaps])), 3)
                key = (stream.name, str(path), detector, n)
                if every == 1:
                    reference[key] = seen
                if key in reference:
                    same = [seen[k][1] == reference[key][k][1] for k in seen.keys() & reference[key].keys()]
                    row["label_agreement"] = round(float(np.mean(same)), 3)
            rows.append(row)
        spool.close()
    report = {"frames": frames, "width": WIDTH, "height": HEIGHT, "publish_hz": publish_hz, "rows": rows,
              "rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(rss_mb(peak=True), 1)}
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def table(report: dict) -> str:
    header = ("stream", "model", "detector", "thr", "n", "faces", "detect", "prep", "infer", "infer/face", "track+pub",
              "frame ms", "CPU ms", "/floor", "FPS", "found", "box IoU", "agree")
    rows = [(r["stream"], r["model"], r["detector"], r["threads"], r["every_n"], r["faces_per_frame"],
             r["stage_ms"]["detect"], r["stage_ms"]["preprocess"], r["stage_ms"]["infer"], r["infer_ms_per_face"],
             round(r["stage_ms"]["track"] + r["stage_ms"]["publish"], 3), r["frame_ms"], r["cpu_ms"],
             r.get("cpu_over_floor", "-"), r["fps"], r.get("found", "-"), r.get("box_iou", "-"),
             r.get("label_agreement", "-")) for r in report["rows"]]
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines + [f"{report['width']}x{report['height']}, {report['frames']} frames per row (ms: medians "
                              f"per frame, wall clock; CPU ms: median CPU time per frame; /floor: CPU ms over the "
                              f"detector's and the emotion model's invokes alone; FPS: frames / wall "
                              f"time; n: detect every n-th frame; found, box IoU: the moving face while in sight; agree: "
                              f"its emotion as with n = 1); events at {report['publish_hz']:g} Hz per face; "
                              f"resident memory {report['rss_mb']} MB, peak {report['peak_rss_mb']} MB"])
