"""Frame sources behind one interface, and the capture thread that keeps only the newest frame.

A source is *live* (camera, Pi camera, stream: a failure means the device went away, so it is
reopened with backoff) or *finite* (video file, folder of images: it ends, or starts again with
``source.loop``; it is read at its own frame rate so it behaves like a camera). The capture thread
hands on only the newest frame: on a device that cannot keep up, a stale frame is worth less than
a fresh one, so frames overwritten before anyone took them are dropped and counted.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.device.config import SourceConfig
from edge.device.guard import run_guarded
from edge.errors import UserError, printable

log = logging.getLogger("edge.device.sources")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
FOLDER_FPS = 10.0
GST_PREFIX = "gst:"
"""``gst:<pipeline ending in appsink>``: a GStreamer pipeline, e.g. a Jetson's CSI camera through nvarguscamerasrc."""
STREAM_TIMEOUT_MS = 5000
"""How long OpenCV may wait for a network stream to open or to deliver a frame (default: 30 s)."""
MAX_BAD_FRAMES = 25
"""Undecodable frames a video file may skip in a row before it counts as ended (a corrupt tail)."""


class Source(Protocol):
    name: str
    live: bool
    fps: float
    """Rate to read a finite source at; 0 for live sources, which set their own pace."""

    def open(self) -> None:
        """Start delivering frames; raise UserError when the source cannot be opened."""

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None when the source failed (live) or ended (finite)."""

    def close(self) -> None: ...


class VideoCaptureSource:
    """Cameras by index, video files, rtsp/http streams and GStreamer pipelines: everything OpenCV's VideoCapture reads."""

    def __init__(self, target: int | str, live: bool, cfg: SourceConfig, api: int = cv2.CAP_ANY):
        self.target, self.live, self.cfg, self.api = target, live, cfg, api
        self.name = f"camera {target}" if isinstance(target, int) else \
            f"{GST_PREFIX}{target}" if api == cv2.CAP_GSTREAMER else str(target)
        self.fps, self.capture = 0.0, None

    def open(self) -> None:
        # a stream that never answers must not hang us (a GStreamer pipeline may name a URL: not FFmpeg's)
        if self.api == cv2.CAP_ANY and isinstance(self.target, str) and "://" in self.target:
            capture = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS])
        else:
            capture = cv2.VideoCapture(self.target, self.api)
        if not capture.isOpened():
            raise UserError(f"cannot open {self.name}")
        if isinstance(self.target, int):
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
        if not self.live:
            self.fps = self.cfg.fps or capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.capture = capture

    def read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if ok or self.live:
            return frame if ok else None
        total = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        for _ in range(MAX_BAD_FRAMES):  # one undecodable frame in a file is skipped, not its end
            if total and self.capture.get(cv2.CAP_PROP_POS_FRAMES) >= total:
                return None
            log.warning("%s: frame %d is undecodable; skipped", self.name, int(self.capture.get(cv2.CAP_PROP_POS_FRAMES)))
            self.capture.grab()
            ok, frame = self.capture.read()
            if ok:
                return frame
        return None

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class FolderSource:
    """Every image in a folder, in name order (re-listed on each open, so files can be added)."""

    live = False

    def __init__(self, folder: Path, cfg: SourceConfig):
        self.folder, self.name, self.fps = folder, str(folder), cfg.fps or FOLDER_FPS
        self.files: list[Path] = []

    def open(self) -> None:
        if not self.folder.is_dir():
            raise UserError(f"image folder {self.folder} is gone")
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise UserError(f"image folder {self.folder} holds no {'/'.join(sorted(IMAGE_SUFFIXES))} files")

    def read(self) -> np.ndarray | None:
        while self.files:
            path = self.files.pop(0)
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            log.warning("%s is not a readable image; skipped", printable(path))
        return None

    def close(self) -> None:
        self.files = []


class PiCameraSource:
    """A Raspberry Pi camera through picamera2, imported only here so other devices never need it."""

    live, fps, name = True, 0.0, "picamera"

    def __init__(self, cfg: SourceConfig):
        self.cfg, self.camera = cfg, None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise UserError("source 'picamera' needs apt's python3-picamera2 seen from a venv made with "
                            "--system-site-packages (deploy/install-pi.sh sets up both), "
                            "or use a camera index such as 0") from None
        try:
            camera = Picamera2()
            # picamera2's "RGB888" is stored B, G, R: the BGR order OpenCV expects.
            camera.configure(camera.create_video_configuration(main={"size": (self.cfg.width, self.cfg.height),
                                                                     "format": "RGB888"}))
            camera.start()
        except (RuntimeError, IndexError, OSError) as exc:
            raise UserError(f"cannot start the Pi camera: {exc}") from None
        self.camera = camera

    def read(self) -> np.ndarray | None:
        try:
            return self.camera.capture_array("main")
        except (RuntimeError, OSError):
            return None

    def close(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None


def gstreamer_built_in(build_information: str) -> bool:
    """Whether OpenCV's build information (``cv2.getBuildInformation()``) lists GStreamer among its video I/O.

    pip's opencv-python(-headless) wheels say ``GStreamer: NO``; JetPack's or a source build say ``YES (1.x)``."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", build_information, re.MULTILINE)
    return bool(match) and match.group(1).upper() == "YES"


def gstreamer_source(pipeline: str, cfg: SourceConfig) -> VideoCaptureSource:
    """A live source reading a GStreamer pipeline; refused at start, in one line, where OpenCV cannot run one."""
    if not pipeline:
        raise UserError(f"source {GST_PREFIX!r} needs a pipeline, e.g. "
                        f"'{GST_PREFIX}nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                        "video/x-raw,format=BGR ! appsink drop=1'")
    last = pipeline.rsplit("!", 1)[-1].split()
    if not last or last[0] != "appsink":
        raise UserError(f"GStreamer source must end in appsink (OpenCV reads frames from it), got {pipeline!r}")
    if not gstreamer_built_in(cv2.getBuildInformation()):
        raise UserError(f"source {GST_PREFIX}... needs OpenCV built with GStreamer; this OpenCV {cv2.__version__} has "
                        "none (pip's opencv-python wheels never do): on a Jetson use JetPack's OpenCV (README, Jetson), "
                        "or give a camera index or a URL")
    return VideoCaptureSource(pipeline, True, cfg, api=cv2.CAP_GSTREAMER)


def make_source(cfg: SourceConfig) -> Source:
    """The source ``cfg.uri`` names: a camera index, ``picamera``, ``gst:PIPELINE``, a URL, a folder or a video file."""
    uri = cfg.uri.strip()
    if uri == "picamera":
        return PiCameraSource(cfg)
    if uri.startswith(GST_PREFIX):
        return gstreamer_source(uri[len(GST_PREFIX):].strip(), cfg)
    if uri.isdigit():
        return VideoCaptureSource(int(uri), True, cfg)
    if "://" in uri:
        return VideoCaptureSource(uri, True, cfg)
    path = Path(uri)
    if path.is_dir():
        return FolderSource(path, cfg)
    if path.is_file():
        return VideoCaptureSource(str(path), False, cfg)
    raise UserError(f"source {uri!r} is not a camera index, 'picamera', a URL, a folder or an existing video file, "
                    f"nor {GST_PREFIX}PIPELINE")


@dataclass
class Frame:
    index: int
    ts: float
    """Capture time, seconds since the epoch."""
    image: np.ndarray


class Grabber:
    """The capture thread: reads a source, keeps the newest frame, reopens a failed source with backoff."""

    def __init__(self, source: Source, cfg: SourceConfig):
        self.source, self.cfg = source, cfg
        self.captured = self.dropped = self.reopens = 0
        self.state = "starting"  # ok | lost | ended
        self._frame: Frame | None = None
        self._new = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self.failure: str | None = None
        """Why the capture thread died, if it did (the runtime then stops with an error)."""

    def start(self) -> None:
        """Start reading. A finite source is opened here (one that cannot be opened is an error); a live one
        is opened in the capture thread, retried with backoff, so a camera or stream that hangs never blocks."""
        if not self.source.live:
            self.source.open()
            self.state = "ok"
            log.info("reading %s", self.source.name)
        else:
            self.state = "lost"
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(3)
        if not self._thread.is_alive():  # else it is stuck in a driver call; the process exits without it
            self.source.close()

    @property
    def alive(self) -> bool:
        """Frames may still come: the capture thread runs, or a frame waits to be taken."""
        return self._thread.is_alive() or self._frame is not None

    @property
    def ended(self) -> bool:
        """A finite source reached its end (without ``loop``) and every frame was taken."""
        return self.state == "ended" and self._frame is None

    def get(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` seconds for one."""
        with self._new:
            self._new.wait_for(lambda: self._frame is not None, timeout)
            frame, self._frame = self._frame, None
            return frame

    def _run(self) -> None:
        run_guarded(self._capture, "capture thread", lambda reason: setattr(self, "failure", reason))

    def _capture(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            if self.state == "lost" and not self._reopen():
                return
            frame = self.source.read()
            if frame is None:
                if not self._failed():
                    return
                continue
            if self.source.fps:  # pace files and folders like a camera
                due = max(due + 1.0 / self.source.fps, time.monotonic())
                if self._stop.wait(due - time.monotonic()):
                    return
            self._put(frame)

    def _put(self, image: np.ndarray) -> None:
        with self._new:
            if self._frame is not None:
                self.dropped += 1
            self._frame = Frame(self.captured, time.time(), image)
            self.captured += 1
            self._new.notify()

    def _failed(self) -> bool:
        """Handle a failed read; False when the thread should end (a finite source's end)."""
        self.source.close()
        if self.source.live:
            log.warning("%s stopped delivering frames (disconnected?); reopening", self.source.name)
        elif self.cfg.loop:
            log.debug("%s ended; starting again", self.source.name)
        elif self.captured == 0:
            log.warning("%s ended without a single readable frame", self.source.name)
            self.state = "ended"
            return False
        else:
            log.info("%s ended after %d frames", self.source.name, self.captured)
            self.state = "ended"
            return False
        self.state = "lost"
        return True

    def _reopen(self) -> bool:
        """Open the source again, waiting longer after each failure; False only when stopped meanwhile."""
        delay, lost_at, attempt = self.cfg.reopen_min_s, time.monotonic(), 0
        while True:
            try:
                self.source.open()
            except UserError as exc:
                attempt += 1
                log.warning("%s (attempt %d); next try in %.1f s", exc, attempt, delay)
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, self.cfg.reopen_max_s)
                continue
            self.state = "ok"
            if self.captured == 0 and self.source.live:
                log.info("reading %s", self.source.name)
            elif attempt or self.source.live:
                self.reopens += 1
                log.warning("%s is back after %.1f s (%d failed attempts)", self.source.name,
                            time.monotonic() - lost_at, attempt)
            return True
