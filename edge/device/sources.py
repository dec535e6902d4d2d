"""Frame sources behind one interface, and the capture thread that keeps only the newest frame.

A source is *live* (camera, Pi camera, stream: a failure means the device went away, so it is
reopened with backoff) or *finite* (video file, folder of images: it ends, or starts again with
``source.loop``; it is read at its own frame rate so it behaves like a camera). The capture thread
hands on only the newest frame: on a device that cannot keep up, a stale frame is worth less than
a fresh one, so frames overwritten before anyone took them are dropped and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.device.config import SourceConfig
from edge.errors import UserError

log = logging.getLogger("edge.device.sources")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
FOLDER_FPS = 10.0


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
    """Cameras by index, video files and rtsp/http streams: everything OpenCV's VideoCapture reads."""

    def __init__(self, target: int | str, live: bool, cfg: SourceConfig):
        self.target, self.live, self.cfg = target, live, cfg
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.fps, self.capture = 0.0, None

    def open(self) -> None:
        capture = cv2.VideoCapture(self.target)
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
        return frame if ok else None

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
            frame = cv2.imread(str(self.files.pop(0)), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
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
            raise UserError("source 'picamera' needs picamera2: on Raspberry Pi OS `sudo apt install python3-picamera2` "
                            "(or pip install 'fer-edge[pi]'), or use a camera index such as 0") from None
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


def make_source(cfg: SourceConfig) -> Source:
    """The source ``cfg.uri`` names: a camera index, ``picamera``, a URL, a folder or a video file."""
    uri = cfg.uri.strip()
    if uri == "picamera":
        return PiCameraSource(cfg)
    if uri.isdigit():
        return VideoCaptureSource(int(uri), True, cfg)
    if "://" in uri:
        return VideoCaptureSource(uri, True, cfg)
    path = Path(uri)
    if path.is_dir():
        return FolderSource(path, cfg)
    if path.is_file():
        return VideoCaptureSource(str(path), False, cfg)
    raise UserError(f"source {uri!r} is not a camera index, 'picamera', a URL, a folder or an existing video file")


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

    def start(self) -> None:
        """Open the source (a finite one that cannot be opened is an error; a live one is retried) and start reading."""
        try:
            self.source.open()
            self.state = "ok"
            log.info("reading %s", self.source.name)
        except UserError as exc:
            if not self.source.live:
                raise
            self.state = "lost"
            log.warning("%s; retrying", exc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.source.close()

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
            if attempt or self.source.live:
                self.reopens += 1
                log.warning("%s is back after %.1f s (%d failed attempts)", self.source.name,
                            time.monotonic() - lost_at, attempt)
            return True
