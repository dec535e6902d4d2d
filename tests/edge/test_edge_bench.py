"""``edge bench`` and ``edge check`` end to end (figures are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_reports_every_combination(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--bundle", str(tiny_bundle), "--frames", "3",
                           "--float-bundle", str(tiny_bundle.with_name("tiny-ck-float")),
                           "--threads", "1", "--threads", "2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    combos = {(r["stream"], r["model"], r["detector"], r["threads"]) for r in report["rows"]}
    assert combos == {(s, m, d, t) for s in ("1 face", "3 faces") for m in ("int8", "float32")
                      for d in ("blazeface", "haar") for t in (1, 2)}
    assert {r["stream"]: r["faces_per_frame"] for r in report["rows"] if r["detector"] == "blazeface"} == \
        {"1 face": 1.0, "3 faces": 3.0}
    assert all(set(r["stage_ms"]) == {"detect", "preprocess", "infer", "track", "publish"} for r in report["rows"])
    assert report["peak_rss_mb"] > 0 and "frame ms" in done.stdout and "resident memory" in done.stdout


def test_bench_shows_what_detecting_every_n_frames_costs_on_a_moving_face_and_ten_faces(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--bundle", str(tiny_bundle), "--frames", "30",
                           "--stream", "moving face", "--stream", "10 faces", "--detector", "blazeface",
                           "--detector", "blazeface-tiles", "--threads", "1", "--every-n", "1", "--every-n", "3",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {(r["stream"], r["detector"], r["every_n"]): r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == 8
    for detector in ("blazeface", "blazeface-tiles"):
        every, third = rows["moving face", detector, 1], rows["moving face", detector, 3]
        assert every["label_agreement"] == 1.0 and every["found"] == 1.0 and every["box_iou"] > 0.7 and third["box_iou"] > 0.7
        assert 0 < third["detected_frames"] < 0.5 and 0 <= third["label_agreement"] <= 1
    assert rows["10 faces", "blazeface-tiles", 1]["faces_per_frame"] == 10.0
    floor = rows["moving face", "blazeface", 1]
    assert floor["detector_invoke_ms"] > 0 and floor["emotion_invoke_ms"] > 0 and floor["cpu_over_floor"] > 0
    assert floor["cpu_ms"] > 0 and "/floor" in done.stdout and "box IoU" in done.stdout


def test_bench_publishes_at_the_rate_asked(tiny_bundle, tmp_path):
    """At the device's default rate an unchanged face is published about once a second; at a rate above the frame
    rate every face of every frame is (the publish stage's worst case)."""
    rows = {}
    for hz in ("1", "1e9"):
        out = tmp_path / f"bench-{hz}.json"
        done = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--bundle", str(tiny_bundle), "--frames", "40",
                               "--stream", "3 faces", "--detector", "blazeface", "--threads", "1", "--publish-hz", hz,
                               "--json", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(out.read_text())
        assert report["publish_hz"] == float(hz) and f"events at {float(hz):g} Hz" in done.stdout
        rows[hz] = report["rows"][0]
    assert rows["1e9"]["faces_per_frame"] == 3.0 and rows["1e9"]["events_per_frame"] == 3.0
    assert rows["1"]["events_per_frame"] < rows["1e9"]["events_per_frame"]
    refused = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--publish-hz", "0"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "--publish-hz" in refused.stderr


def test_bench_refuses_an_unknown_stream_in_one_line(tiny_bundle):
    done = subprocess.run([sys.executable, "-m", "edge.cli", "bench", "--bundle", str(tiny_bundle), "--stream", "crowd"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == ("edge: error: unknown stream 'crowd'; built-in streams: "
                                                            "1 face, 3 faces, 10 faces, moving face")


def test_check_runs_a_bundle_once_and_refuses_a_broken_one(tiny_bundle, tmp_path):
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check", "--bundle", str(tiny_bundle)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and ": ok - model " in done.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.tflite").write_bytes(b"junk")
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check", "--bundle", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("edge: error: bundle ") and "checksum" in done.stderr
