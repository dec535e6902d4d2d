"""``--source 'gst:PIPELINE'``: a GStreamer pipeline where OpenCV has GStreamer, one clear line at start where not.

pip's opencv-python(-headless) wheels, which this project installs, have no GStreamer, so here the
refusal is what runs; where OpenCV was built with it (a Jetson's), a real test pipeline is read instead.
"""

from __future__ import annotations

import cv2
import pytest

from edge.device.config import SourceConfig
from edge.device.sources import gstreamer_built_in, make_source
from edge.errors import UserError

PIPELINE = "videotestsrc num-buffers=5 ! video/x-raw,width=320,height=240 ! videoconvert ! video/x-raw,format=BGR ! appsink"
HAS_GSTREAMER = gstreamer_built_in(cv2.getBuildInformation())


@pytest.mark.parametrize("line, built_in", [
    ("    GStreamer:                   NO", False),
    ("    GStreamer:                   YES (1.20.3)", True),
    ("    FFMPEG:                      YES\n    GStreamer:                   YES (1.16.3)", True),
    ("  Video I/O:\n    FFMPEG:                      YES", False),
])
def test_build_information_is_read_as_opencv_writes_it(line, built_in):
    assert gstreamer_built_in(f"General configuration for OpenCV 4.x\n  Video I/O:\n{line}\n") is built_in


@pytest.mark.skipif(HAS_GSTREAMER, reason="this OpenCV was built with GStreamer: the pipeline test runs instead")
def test_opencv_without_gstreamer_refuses_in_one_line_at_start():
    with pytest.raises(UserError) as err:
        make_source(SourceConfig(uri=f"gst:{PIPELINE}"))
    message = str(err.value)
    assert "\n" not in message
    assert f"needs OpenCV built with GStreamer; this OpenCV {cv2.__version__} has none" in message
    assert "README, Jetson" in message


@pytest.mark.skipif(not HAS_GSTREAMER, reason="this OpenCV has no GStreamer (pip's wheels never do)")
def test_a_pipeline_is_read_where_opencv_has_gstreamer():
    source = make_source(SourceConfig(uri=f"gst:{PIPELINE}"))
    assert source.live and source.name == f"gst:{PIPELINE}"
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None and frame.shape == (240, 320, 3)


@pytest.mark.parametrize("uri, message", [
    ("gst:", "needs a pipeline, e.g. 'gst:nvarguscamerasrc"),
    ("gst:  videotestsrc ! videoconvert", "must end in appsink"),
    ("gst:videotestsrc ! appsink ! fakesink", "must end in appsink"),
])
def test_a_pipeline_opencv_could_not_read_is_refused(uri, message):
    with pytest.raises(UserError, match=message):
        make_source(SourceConfig(uri=uri))
