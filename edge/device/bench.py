"""``edge bench``: per-stage milliseconds and end-to-end FPS of the runtime's own per-frame code.

Runs :class:`~edge.device.pipeline.Analyzer` and :class:`~edge.device.pipeline.Publisher` (events into a real
SQLite spool, no broker) on frames held in memory, so the figures are the device's compute cost
without camera or network waits. The default stream is 640x480 with 1 and 3 faces made from
scikit-image's astronaut (public domain), moving a little from frame to frame.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.device.config import DetectorConfig, PublishConfig, SourceConfig, TrackingConfig
from edge.model.detect import make_detector
from edge.errors import UserError
from edge.protocol.payloads import encode
from edge.device.pipeline import Analyzer, Publisher
from edge.device.runtime import rss_mb
from edge.device.sources import Frame, make_source
from edge.device.spool import Spool
from edge.device.tracking import Tracker

WIDTH, HEIGHT = 640, 480
HEAD = (137, 32, 170, 170)
"""x, y, w, h of a square around the astronaut's head in skimage's 512x512 image."""


def synthetic_stream(faces: int, frames: int = 30, seed: int = 0) -> list[np.ndarray]:
    """640x480 BGR frames with ``faces`` astronaut heads drifting a few pixels per frame."""
    try:
        from skimage import data
    except ImportError:
        raise UserError("the built-in test stream needs scikit-image (pip install scikit-image); "
                        "or pass --source with a video of faces") from None
    x, y, w, h = HEAD
    head = cv2.cvtColor(data.astronaut()[y:y + h, x:x + w], cv2.COLOR_RGB2BGR)
    side = 200 if faces == 1 else 190
    head = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    slots = [((WIDTH - side) // 2, (HEIGHT - side) // 2)] if faces == 1 else \
        [(20 + i * (WIDTH - 40 - side) // (faces - 1), 60 + (i % 2) * 160) for i in range(faces)]
    out = []
    for k in range(frames):
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        frame += rng.integers(0, 20, frame.shape, dtype=np.uint8)
        for sx, sy in slots:
            dx, dy = int(8 * np.sin(k / 5)), int(6 * np.cos(k / 7))
            frame[sy + dy:sy + dy + side, sx + dx:sx + dx + side] = head
        out.append(frame)
    return out


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

    def event(self, payload: dict) -> None:
        self.spool.push("bench/events", encode(payload))

    def state(self, payload: dict) -> None:
        encode(payload)


def measure(images: list[np.ndarray], bundle_dir: Path, detector: str, threads: int, frames: int, spool: Spool) -> dict:
    bundle = load_bundle(bundle_dir)
    options = {"min_size": DetectorConfig.min_size} | ({"threads": threads} if detector == "blazeface" else {})
    analyzer = Analyzer(make_detector(detector, **options), EmotionClassifier(bundle, threads),
                        DetectorConfig.max_faces)
    publisher = Publisher(Tracker(TrackingConfig()), SpoolSink(spool), PublishConfig(rate_hz=1000.0), "bench")
    times: list[dict[str, float]] = []
    faces = 0
    for i, image in enumerate(itertools.islice(itertools.cycle(images), frames + 10)):
        if i == 10:  # warm-up done: first invocations allocate and prepare XNNPACK kernels
            times, faces, start = [], 0, time.perf_counter()
        analysis = analyzer(Frame(i, time.time(), image))
        times.append({**analysis.ms, **publisher(analysis)})
        faces += len(analysis.faces)
    wall = time.perf_counter() - start
    # Medians: on a shared machine a few preempted frames would otherwise dominate the means.
    ms = {stage: round(float(np.median([t[stage] for t in times])), 3) for stage in times[0]}
    return {"model": bundle.manifest["input"]["dtype"], "model_id": bundle.model_id, "detector": detector,
            "threads": threads, "faces_per_frame": round(faces / frames, 2), "stage_ms": ms,
            "infer_ms_per_face": round(ms["infer"] / max(faces / frames, 1), 3),
            "frame_ms": round(float(np.median([sum(t.values()) for t in times])), 3), "fps": round(frames / wall, 1)}


def bench(bundle: Path, float_bundle: Path | None = None, source: str | None = None, threads: list[int] = (1, 2),
          detectors: list[str] = ("blazeface", "haar"), frames: int = 200, json_path: Path | None = None) -> dict:
    """Every combination of model x detector x threads x stream; returns (and optionally writes) the report."""
    streams = {"source": source_frames(source, 60)} if source else \
        {f"{n} face{'s' * (n > 1)}": synthetic_stream(n) for n in (1, 3)}
    bundles = [bundle, *([float_bundle] if float_bundle else [])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.db", 10_000)
        for (name, images), path, detector, n in itertools.product(streams.items(), bundles, detectors, threads):
            rows.append({"stream": name, **measure(images, path, detector, n, frames, spool)})
        spool.close()
    report = {"frames": frames, "width": WIDTH, "height": HEIGHT, "rows": rows,
              "rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(rss_mb(peak=True), 1)}
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def table(report: dict) -> str:
    header = ("stream", "model", "detector", "thr", "faces", "detect", "prep", "infer", "infer/face", "track+pub",
              "frame ms", "FPS")
    rows = [(r["stream"], r["model"], r["detector"], r["threads"], r["faces_per_frame"], r["stage_ms"]["detect"],
             r["stage_ms"]["preprocess"], r["stage_ms"]["infer"], r["infer_ms_per_face"],
             round(r["stage_ms"]["track"] + r["stage_ms"]["publish"], 3), r["frame_ms"], r["fps"]) for r in report["rows"]]
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines + [f"{report['width']}x{report['height']}, {report['frames']} frames per row (ms: medians "
                              f"per frame; FPS: frames / wall time); resident memory {report['rss_mb']} MB, peak {report['peak_rss_mb']} MB"])
