"""Annotated frames (boxes, labels) for debugging, to a window and/or a video file; they never leave the device."""

from __future__ import annotations

import cv2

from edge.device.config import Config
from edge.device.pipeline import Analysis
from edge.errors import UserError


class Preview:
    """Boxes and labels drawn on the frames, to a window and/or a video file; never sent anywhere."""

    def __init__(self, cfg: Config):
        self.window, self.path, self.fps = cfg.preview.window, cfg.preview.video, cfg.source.fps or 10.0
        self.writer: cv2.VideoWriter | None = None
        if self.window:
            try:
                cv2.namedWindow("edge")
            except cv2.error:
                raise UserError("preview.window needs OpenCV with GUI support (opencv-python, not -headless) "
                                "and a display; use preview.video instead") from None

    def show(self, analysis: Analysis, tracks) -> None:
        image = analysis.frame.image.copy()
        classes = analysis.bundle.classes
        for track in tracks:
            if track.missed:
                continue
            x, y, w, h = track.box
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
            label = f"#{track.id} {classes[int(track.scores.argmax())]} {track.scores.max():.2f}"
            cv2.putText(image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        if self.path:
            if self.writer is None:
                self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                              (image.shape[1], image.shape[0]))
            self.writer.write(image)
        if self.window:
            cv2.imshow("edge", image)
            cv2.waitKey(1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.window:
            cv2.destroyAllWindows()
