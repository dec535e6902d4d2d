"""Variants benchmark: each shipped model variant's accuracy, cost and frame time, beside the ``fer`` package.

    python bench/variants.py --json docs/results/variants.json
    PYTHONPATH=/tmp/fer-pkg python bench/variants.py --fer --json docs/results/variants.json

For every shipped variant (:mod:`edge.device.variants`), or the bundles given with ``--bundle``:

- **accuracy**: the manifest's validation accuracy, FER2013 PublicTest, one pass through the device's classifier
  (what ``trainer export`` and ``trainer ensemble`` measured; ``trainer evaluate BUNDLE`` reproduces it);
- **MACs** counted from the TFLite graph, the model's size, and its INT8 invoke alone: median CPU ms per face;
- **frame**: the device's own per-frame code (``edge bench``'s :func:`~edge.device.bench.measure`) on 640x480
  frames with one face (scikit-image's astronaut), one thread, BlazeFace on every frame and on every third frame
  (``detector.every_n: 3``, faces followed in between): median CPU ms per frame, and with detection on every frame
  the share of the frame's CPU time spent outside the two models' invokes (preprocessing, tracking, publishing).

With ``--fer``, the ``fer`` package (its default: Haar cascade and its quantized TFLite model) runs
``detect_emotions`` on the same frames in the same process, and every frame row gets ``x fer``: fer's median CPU ms
per frame over the row's. fer pulls TensorFlow and torch (8 GB) as dependencies; for a comparison in the trainer's
environment, which has TensorFlow and OpenCV: ``pip install --no-deps --target /tmp/fer-pkg fer "setuptools<81"``
and ``PYTHONPATH=/tmp/fer-pkg``.

CPU time, not wall time: on a shared machine another process's time slice lands inside some frames and adds waits,
never CPU time. Prints a table and writes JSON (``--json``); the machine's CPU and whether it has AVX-512 are
recorded with it, because INT8 inference is about three times faster with AVX-512.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from edge.release import shipped_variants, variant_path  # noqa: E402
from pi_estimate import macs  # noqa: E402

from edge.device.bench import Stream, invoke_ms, measure, synthetic_stream  # noqa: E402
from edge.device.spool import Spool  # noqa: E402
from edge.device.variants import accuracy  # noqa: E402
from edge.errors import UserError  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.model.litert import load_interpreter  # noqa: E402

EVERY_N = (1, 3)


def cpu() -> dict:
    """The CPU's model name and whether it has AVX-512 (from /proc/cpuinfo, Linux)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor())
    return {"cpu": name, "avx512": " avx512f" in info, "cores": os.cpu_count(), "python": platform.python_version()}


def fer_frame_ms(frames: list[np.ndarray], repeats: int) -> float:
    """Median CPU ms of the ``fer`` package's ``detect_emotions`` per frame (its defaults), after a warm-up."""
    try:
        from fer.fer import FER
    except ImportError as exc:
        raise UserError(f"--fer needs the fer package ({exc}): pip install --no-deps --target /tmp/fer-pkg fer "
                        "'setuptools<81', then PYTHONPATH=/tmp/fer-pkg") from None
    detector = FER()
    if not detector.detect_emotions(frames[0]):
        raise UserError("the fer package found no face in the benchmark's frames")
    times = []
    for frame in (frames * repeats)[: max(len(frames), 60)]:
        start = time.process_time()
        detector.detect_emotions(frame)
        times.append(time.process_time() - start)
    return float(np.median(times)) * 1e3


def variant_row(name: str, path: Path, stream: Stream, frames: int, spool: Spool) -> dict:
    bundle = load_bundle(path)
    interpreter = load_interpreter(bundle.model_bytes, 1)
    interpreter.allocate_tensors()
    row = {"variant": name, "model_id": bundle.model_id, "accuracy": round(accuracy(bundle), 4),
           "mmacs": round(macs(bundle.model_bytes) / 1e6, 1), "mb": round(len(bundle.model_bytes) / 1e6, 2),
           "infer_ms_per_face": round(invoke_ms(interpreter), 3)}
    for every in EVERY_N:
        measured, _ = measure(stream, path, "blazeface", 1, frames, spool, every)
        row[f"frame_cpu_ms_n{every}"] = measured["cpu_ms"]
        row[f"frame_ms_n{every}"] = measured["frame_ms"]
        if "cpu_over_floor" in measured:  # every frame runs both models: the rest of the frame's share
            row["outside_models_share"] = round(1 - 1 / measured["cpu_over_floor"], 3)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", help="a bundle to measure (repeatable; default: every "
                        "shipped variant)")
    parser.add_argument("--frames", type=int, default=300, help="timed frames per row (default 300)")
    parser.add_argument("--fer", action="store_true", help="time the fer package on the same frames (see above)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    try:
        targets = [(p.name, p) for p in args.bundle] if args.bundle else \
            [(name, variant_path(name)) for name in shipped_variants()]
        stream = Stream("1 face", synthetic_stream(1))
        fer_ms = fer_frame_ms(stream.images, 3) if args.fer else None
        with tempfile.TemporaryDirectory() as tmp:
            spool = Spool(Path(tmp) / "spool.db", 10_000)
            rows = [variant_row(name, path, stream, args.frames, spool) for name, path in targets]
            spool.close()
    except UserError as exc:
        print(f"variants: error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        for every in EVERY_N:
            row[f"x_fer_n{every}"] = round(fer_ms / row[f"frame_cpu_ms_n{every}"], 1) if fer_ms else None
    report = {**cpu(), "frames": args.frames, "stream": "640x480, 1 face, BlazeFace, 1 thread",
              "fer_frame_cpu_ms": round(fer_ms, 2) if fer_ms else None, "rows": rows}
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def table(report: dict) -> str:
    header = ("variant", "accuracy", "MMACs", "MB", "ms/face", "frame ms", "x fer", "frame ms n=3", "x fer n=3")
    rows = [(r["variant"], f"{r['accuracy']:.2%}", r["mmacs"], r["mb"], r["infer_ms_per_face"], r["frame_cpu_ms_n1"],
             r["x_fer_n1"] or "-", r["frame_cpu_ms_n3"], r["x_fer_n3"] or "-") for r in report["rows"]]
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    fer = f"fer package {report['fer_frame_cpu_ms']} ms per frame" if report["fer_frame_cpu_ms"] else "fer not timed"
    return "\n".join(lines + [f"{report['stream']}; CPU ms per frame, medians; {fer}; {report['cpu']}, "
                              f"{'AVX-512' if report['avx512'] else 'AVX2, no AVX-512'}"])


if __name__ == "__main__":
    sys.exit(main())
