"""Face-detection recall and precision by face size and by faces per frame, for every detector.

    python bench/detection.py                          # all detectors, writes docs/results/detection.{json,png}
    python bench/detection.py --detector blazeface-full --frames 20

Frames are composed at run time and never stored: real faces (a fixed random draw from FER2013's
PublicTest, CK+48 and JAFFE in ../shared/data, and scikit-image's astronaut) pasted with soft edges
onto 640x480 backgrounds cut from scikit-image's scenes (a cat, coffee, coins, text, gravel, ...),
at known boxes. A face's true box is where the short-range BlazeFace, the detector the emotion
model was trained with, frames it when it sees the face alone and large; faces it cannot find
alone are not used. Face size is that box's side in the frame: 20 to 200 pixels, 1 to 30 faces per
frame (a size and count that do not fit a 640x480 frame are left out), plus the room-scale case of
ten faces of 32-48 pixels. A detection counts when it overlaps a true box at IoU >= 0.5 (each truth
matched once, best overlap first); ``framing IoU`` is the median overlap of the matched boxes,
i.e. how closely a detector frames faces like the training detector. Detectors run with
``min_size`` 0 and the default score threshold 0.5; ``auto`` chooses afresh on every frame (on a
camera it chooses every 30th). Writes a table, JSON and a PNG of recall against face size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.device.bench import HEIGHT, WIDTH, FaceSource, astronaut_face, compose, noise_background  # noqa: E402
from edge.errors import UserError  # noqa: E402
from edge.model.detect import DETECTORS, make_detector  # noqa: E402
from edge.model.detectors.base import pairwise_iou  # noqa: E402

SIZES = (20, 24, 28, 32, 40, 48, 64, 80, 100, 128, 160, 200)
COUNTS = (1, 3, 10, 30)
ROOM = "10 faces, 32-48 px"
KINDS = ("heads", "crops")
SCENES = ("chelsea", "coffee", "rocket", "brick", "grass", "gravel", "coins", "moon", "page", "text", "clock",
          "hubble_deep_field", "immunohistochemistry", "retina")
MATCH_IOU = 0.5
SOURCES_PER_DATASET = {"fer2013": 150, "ckplus48": 60, "jaffe": 60}


def face_sources(data: Path, rng: np.random.Generator) -> dict[str, list[FaceSource]]:
    """Faces the short-range detector finds alone, each with its box, by kind: ``heads`` (the astronaut and
    JAFFE, whose images hold the whole head: up to half a box side around the face) and ``crops`` (FER2013
    and CK+48, 48-pixel crops that the face fills, with no head around it)."""
    reference = make_detector("blazeface")
    kinds: dict[str, list[FaceSource]] = {"heads": [astronaut_face(margin=0.5)], "crops": []}
    for name, count in SOURCES_PER_DATASET.items():
        archive = np.load(data / f"{name}.npz")
        images = archive["images"][archive["split"] == 1] if name == "fer2013" else archive["images"]  # PublicTest
        for image in images[rng.choice(len(images), min(count, len(images)), replace=False)]:
            source = _framed(image, reference)
            if source is not None:
                kinds["heads" if name == "jaffe" else "crops"].append(source)
    return kinds


def _framed(image: np.ndarray, reference) -> FaceSource | None:
    """The face in a dataset image and its short-range box, or None unless exactly one face is found.

    48-pixel crops are enlarged three times and padded by half their size first: BlazeFace misses faces
    that fill the whole image (the trainer pads the same way)."""
    factor = 3 if max(image.shape) < 100 else 1
    big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC) if factor > 1 else image
    pad = big.shape[0] // 2 if factor > 1 else 0
    faces = reference.detect(cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else big)
    if len(faces) != 1:
        return None
    x, y, w, h = faces[0].box
    x, y, w, h = (x - pad) / factor, (y - pad) / factor, w / factor, h / factor
    if x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
        return None  # the box runs off the image: no clean truth
    x0, y0 = int(max(0, x - w / 2)), int(max(0, y - h / 2))
    x1, y1 = int(min(image.shape[1], x + 1.5 * w)), int(min(image.shape[0], y + 1.5 * h))
    return FaceSource(image[y0:y1, x0:x1], (round(x - x0), round(y - y0), round(w), round(h)))


def backgrounds(rng: np.random.Generator) -> list[np.ndarray]:
    """640x480 BGR crops of scikit-image's scenes (none with a human face), and one of flat noise."""
    from skimage import data

    out = [noise_background(rng)]
    for name in SCENES:
        scene = getattr(data, name)()
        scene = cv2.cvtColor(scene, cv2.COLOR_GRAY2BGR) if scene.ndim == 2 else cv2.cvtColor(scene, cv2.COLOR_RGB2BGR)
        h, w = scene.shape[:2]
        crop_w = min(w, int(h * WIDTH / HEIGHT))
        crop_h = int(crop_w * HEIGHT / WIDTH)
        out.append(cv2.resize(scene[(h - crop_h) // 2:(h + crop_h) // 2, (w - crop_w) // 2:(w + crop_w) // 2], (WIDTH, HEIGHT)))
    return out


def plan(frames: int) -> list[tuple[str, int, int | None]]:
    """(case, faces, size or None for 32-48 at random) of every frame: each size x count (fewer frames when
    many faces share one), then the room case; each frame draws its faces from one kind, alternately."""
    cases = [(f"{size} px x {count}", count, size) for size in SIZES for count in COUNTS
             for _ in range(max(2, round(frames / count ** 0.5)))]
    return cases + [(ROOM, 10, None)] * (2 * frames)


def match(found: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]]) -> list[float]:
    """IoU of each matched (detection, truth) pair, greedily best overlap first, each used once."""
    if not found or not truth:
        return []
    xyxy = np.array([(x, y, x + w, y + h) for x, y, w, h in [*found, *truth]], np.float32)
    overlaps = pairwise_iou(xyxy)[:len(found), len(found):]
    matched = []
    while overlaps.size and overlaps.max() >= MATCH_IOU:
        i, j = np.unravel_index(np.argmax(overlaps), overlaps.shape)
        matched.append(float(overlaps[i, j]))
        overlaps[i, :], overlaps[:, j] = -1, -1
    return matched


def run(data: Path, detectors: list[str], frames: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sources, scenes = face_sources(data, rng), backgrounds(rng)
    built = {name: make_detector(name) for name in detectors}
    if "auto" in built:
        built["auto"].probe_every = 1  # frames here are unrelated: auto's choice, made afresh on each one
    tally: dict[str, dict[tuple[str, str], dict]] = {name: {} for name in detectors}
    times: dict[str, list[float]] = {name: [] for name in detectors}
    composed = 0
    for k, (case, count, size) in enumerate(plan(frames)):
        kind = KINDS[k % 2]
        sizes = [size] * count if size else [int(s) for s in rng.integers(32, 49, count)]
        faces = [(sources[kind][i], s) for i, s in zip(rng.integers(0, len(sources[kind]), count), sizes)]
        try:
            frame, truth = compose(scenes[rng.integers(len(scenes))], faces, rng)
        except UserError:
            continue  # these faces do not fit 640x480
        composed += 1
        for name, detector in built.items():
            start = time.process_time()  # CPU time: other processes on a shared machine add waits, not CPU time
            found = [f.box for f in detector.detect(frame)]
            times[name].append(time.process_time() - start)
            ious = match(found, truth)
            cell = tally[name].setdefault((case, kind), {"faces": 0, "found": 0, "detections": 0, "ious": []})
            cell["faces"] += len(truth)
            cell["found"] += len(ious)
            cell["detections"] += len(found)
            cell["ious"] += ious
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "seed": seed, "frames_composed": composed, "face_sources": {k: len(v) for k, v in sources.items()},
            "match_iou": MATCH_IOU, "detectors": {name: summarize(tally[name], times[name]) for name in detectors}}


def summarize(cells: dict[tuple[str, str], dict], seconds: list[float]) -> dict:
    def pool(cases: list[str], kinds: tuple[str, ...] = KINDS) -> dict | None:
        chosen = [cells[case, kind] for case in cases for kind in kinds if (case, kind) in cells]
        if not chosen:
            return None
        faces, found, detections = (sum(c[k] for c in chosen) for k in ("faces", "found", "detections"))
        return {"faces": faces, "recall": round(found / faces, 4),
                "precision": round(found / detections, 4) if detections else None}

    ious = [v for c in cells.values() for v in c["ious"]]
    grid = [case for case, _ in cells if case != ROOM]
    return {"by_size": {str(s): pool([f"{s} px x {c}" for c in COUNTS]) for s in SIZES},
            "by_count": {str(c): pool([f"{s} px x {c}" for s in SIZES]) for c in COUNTS},
            "by_kind": {kind: pool(grid, (kind,)) for kind in KINDS},
            "room": {kind: pool([ROOM], (kind,)) for kind in KINDS}, "all": pool(list({c for c, _ in cells})),
            "framing_iou": round(float(np.median(ious)), 3) if ious else None,
            "median_cpu_ms": round(float(np.median(seconds)) * 1e3, 2),
            "cells": {f"{case}, {kind}": {key: v for key, v in c.items() if key != "ious"} for (case, kind), c in cells.items()}}


def table(report: dict) -> str:
    names = list(report["detectors"])
    width = max(14, *(len(n) + 2 for n in names))
    results = [report["detectors"][n] for n in names]

    def line(label: str, cells: list[dict | None], key: str = "recall") -> str:
        return f"{label:<26}" + "".join(f"{'-' if c is None or c[key] is None else f'{100 * c[key]:.1f} %':>{width}}"
                                        for c in cells)

    out = [f"{'recall by face size':<26}" + "".join(f"{n:>{width}}" for n in names)]
    out += [line(f"  {size} px", [r["by_size"][str(size)] for r in results]) for size in SIZES]
    out.append("recall by faces per frame")
    out += [line(f"  {count}", [r["by_count"][str(count)] for r in results]) for count in COUNTS]
    out.append("recall by kind of face")
    out += [line(f"  {kind}", [r["by_kind"][kind] for r in results]) for kind in KINDS]
    for kind in KINDS:
        out.append(line(f"room, {kind}: recall", [r["room"][kind] for r in results]))
        out.append(line(f"room, {kind}: precision", [r["room"][kind] for r in results], "precision"))
    out.append(line("all: precision", [r["all"] for r in results], "precision"))
    out.append(f"{'framing IoU (median)':<26}" + "".join(f"{r['framing_iou']!s:>{width}}" for r in results))
    out.append(f"{'CPU ms per frame (median)':<26}" + "".join(f"{r['median_cpu_ms']:>{width}}" for r in results))
    sources = ", ".join(f"{v} {k}" for k, v in report["face_sources"].items())
    out.append(f"{report['frames_composed']} frames of 640x480 from {sources}; room: {ROOM} per frame; "
               f"a match is IoU >= {report['match_iou']}; {report['machine']}")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in report["detectors"].items():
        points = [(s, result["by_size"][str(s)]["recall"]) for s in SIZES if result["by_size"][str(s)]]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(SIZES, [str(s) for s in SIZES])
    ax.minorticks_off()
    ax.set_xlabel("face size in a 640x480 frame (px, short-range BlazeFace box side)")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("face detection recall against face size (1-30 real faces per frame)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TRAINER_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--detector", action="append", choices=list(DETECTORS), help="repeatable; default all")
    parser.add_argument("--frames", type=int, default=12, help="frames per size with one face (fewer with more faces)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "detection.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "results" / "detection-recall.png")
    args = parser.parse_args()
    if args.frames < 1:
        print("detection: error: --frames must be at least 1", file=sys.stderr)
        return 2
    if not all((args.data / f"{name}.npz").exists() for name in SOURCES_PER_DATASET):
        print(f"detection: skipped, the face datasets ({', '.join(SOURCES_PER_DATASET)} .npz) are not in {args.data}")
        return 0
    report = run(args.data, args.detector or list(DETECTORS), args.frames, args.seed)
    print(table(report))
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.png)
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
