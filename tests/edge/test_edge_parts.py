"""The runtime's parts on their own: tracker, spool, sources and the capture thread, the Pi camera adapter."""

from __future__ import annotations

import shutil
import sys
import types

import cv2
import numpy as np
import pytest
from fixtures.mqtt import wait_for

from edge import CLASS_NAMES
from edge.device.config import PublishConfig, SourceConfig, TrackingConfig
from edge.device.pipeline import Analysis, Publisher
from edge.device.sources import FolderSource, Frame, Grabber, PiCameraSource, make_source
from edge.device.spool import Spool
from edge.device.tracking import Tracker
from edge.errors import UserError
from edge.model.detect import Face


def one_hot(k: int) -> np.ndarray:
    p = np.full(7, 0.0, np.float32)
    p[k] = 1.0
    return p


def test_tracker_keeps_ids_smooths_and_expires():
    tracker = Tracker(TrackingConfig(iou=0.3, max_missed=1, smoothing=0.5))
    a, b = (10, 10, 100, 100), (300, 50, 80, 80)
    first = tracker.update([a, b], np.stack([one_hot(3), one_hot(6)]))
    assert [t.id for t in first] == [1, 2]
    moved = tracker.update([(305, 52, 80, 80), (14, 12, 100, 100)], np.stack([one_hot(6), one_hot(0)]))
    assert [t.id for t in moved] == [2, 1]  # matched by overlap, whatever the detection order
    assert moved[1].scores[3] == pytest.approx(0.5) and moved[1].scores[0] == pytest.approx(0.5)
    tracker.update([], np.zeros((0, 7)))
    assert [t.id for t in tracker.tracks] == [1, 2]  # one missed frame is tolerated
    tracker.update([], np.zeros((0, 7)))
    assert tracker.tracks == []
    assert [t.id for t in tracker.update([a], one_hot(3)[None])] == [3]  # ids are never reused


def test_state_counts_the_faces_in_view_not_tracks_kept_through_a_miss():
    class Sink:
        def __init__(self):
            self.events, self.states = [], []

        def event(self, payload: dict) -> None:
            self.events.append(payload)

        def state(self, payload: dict) -> None:
            self.states.append(payload)

    sink = Sink()
    publisher = Publisher(Tracker(TrackingConfig(max_missed=5)), sink, PublishConfig(), "pi-test")
    bundle = types.SimpleNamespace(classes=list(CLASS_NAMES), model_id="m@1", version="1")
    for index, box in enumerate([(10, 10, 100, 100), (400, 300, 100, 100)]):  # the face jumps: a new track
        frame = Frame(index, 1000.0 + index, np.zeros((480, 640, 3), np.uint8))
        publisher(Analysis(frame, [Face(box, 0.9)], one_hot(3)[None], bundle))
    assert len(publisher.tracker.tracks) == 2  # the old track survives its miss ...
    assert sink.states[-1]["overall"]["faces"] == 1 and [t["id"] for t in sink.states[-1]["tracks"]] == [2]
    assert [e["track_id"] for e in sink.events] == [1, 2]


def test_spool_is_fifo_bounded_and_survives_restart(tmp_path):
    spool = Spool(tmp_path / "spool.db", max_events=3)
    for i in range(5):
        spool.push("t", b"%d" % i)
    rows = spool.after(0, 10)
    assert [p for _, _, p in rows] == [b"2", b"3", b"4"] and (spool.pending, spool.dropped) == (3, 2)
    spool.ack([rows[0][0]])
    assert [p for _, _, p in spool.after(rows[0][0], 10)] == [b"3", b"4"]
    spool.close()
    again = Spool(tmp_path / "spool.db", max_events=3)
    assert [p for _, _, p in again.after(0, 10)] == [b"3", b"4"] and (again.pending, again.dropped) == (2, 2)
    again.close()


def test_make_source_names_what_it_cannot_use(tmp_path):
    assert make_source(SourceConfig(uri="0")).live
    assert make_source(SourceConfig(uri="rtsp://cam.local/stream")).live
    assert isinstance(make_source(SourceConfig(uri=str(tmp_path))), FolderSource)
    with pytest.raises(UserError, match="not a camera index, 'picamera', a URL, a folder or an existing video"):
        make_source(SourceConfig(uri=str(tmp_path / "missing.mp4")))
    with pytest.raises(UserError, match="holds no"):
        make_source(SourceConfig(uri=str(tmp_path))).open()


def test_folder_source_reads_images_in_order(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i * 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = make_source(SourceConfig(uri=str(tmp_path)))
    source.open()
    assert [int(source.read()[0, 0, 0]) for _ in range(3)] == [0, 50, 100] and source.read() is None


def test_grabber_keeps_the_newest_frame_and_counts_drops(video):
    grabber = Grabber(make_source(SourceConfig(uri=str(video), fps=200)), SourceConfig(uri=str(video), fps=200))
    grabber.start()
    wait_for(lambda: grabber.state == "ended", 30, "the video to end")
    frame = grabber.get(1)
    assert frame.index == 39 and grabber.captured == 40 and grabber.dropped == 39
    assert grabber.ended and grabber.get(0.05) is None
    grabber.stop()


def test_source_that_disappears_is_reopened_with_backoff(video, tmp_path, caplog):
    """A looping file stands in for a camera: removed, reopening fails with growing waits; back, frames flow."""
    path = shutil.copy(video, tmp_path / "camera.avi")
    cfg = SourceConfig(uri=str(path), loop=True, fps=100, reopen_min_s=0.1, reopen_max_s=0.4)
    grabber = Grabber(make_source(cfg), cfg)
    grabber.start()
    assert wait_for(lambda: grabber.get(1), 10, "a first frame")
    (tmp_path / "camera.avi").rename(tmp_path / "away.avi")
    wait_for(lambda: grabber.state == "lost", 10, "the source to be lost")
    wait_for(lambda: caplog.text.count("next try in") >= 3, 10, "several reopen attempts")
    assert "next try in 0.4 s" in caplog.text  # the wait doubled up to its bound
    captured = grabber.captured
    (tmp_path / "away.avi").rename(tmp_path / "camera.avi")
    wait_for(lambda: grabber.state == "ok" and grabber.captured > captured, 10, "frames after the reopen")
    assert grabber.reopens == 1 and "is back after" in caplog.text
    grabber.stop()


def test_picamera_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(UserError, match="needs apt.s python3-picamera2 seen from a venv made with --system-site-packages"):
        make_source(SourceConfig(uri="picamera")).open()


def test_picamera_adapter_with_a_stand_in_camera(monkeypatch):
    """The only mock in these tests: this machine has no Pi camera."""
    calls = []

    class Picamera2:
        def create_video_configuration(self, main):
            return main

        def configure(self, config):
            calls.append(config)

        def start(self):
            calls.append("start")

        def capture_array(self, stream):
            return np.zeros((480, 640, 3), np.uint8)

        def close(self):
            calls.append("close")

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Picamera2))
    source = make_source(SourceConfig(uri="picamera", width=640, height=480))
    assert isinstance(source, PiCameraSource) and source.live
    source.open()
    assert source.read().shape == (480, 640, 3)
    source.close()
    assert calls == [{"size": (640, 480), "format": "RGB888"}, "start", "close"]
