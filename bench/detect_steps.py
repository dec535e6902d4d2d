"""What each step of the detector's rework buys: the detect stage with the steps added one at a time.

    python bench/detect_steps.py                 # 1-face stream, 500 frames; --faces 3, --frames N, --json PATH

Every variant runs the same short-range BlazeFace interpreter on the same 640x480 frames of ``edge
bench``'s stream, round robin (each frame goes through every variant, in a new random order), so all of
them see the same machine state; the figure is the median CPU time per frame (a shared machine's other
processes add waits, not CPU time). ``before`` is the pipeline before the rework (colour conversion of
the whole frame, padding it to a square, one 5x area resize, a float conversion in new arrays, outputs
copied, a suppression loop computing IoU per kept box); each next variant adds one step, the last is
:meth:`BlazeFace.detect` itself (its decode: the box arithmetic folded into one matrix product, and the
suppression's IoU of every pair in one broadcast). The Analyzer's preprocessing is timed the same way (the whole frame
converted to gray before cropping, against only the crops converted), the emotion model's input (faces
normalized to float, quantized and copied into the interpreter, against one table lookup per pixel straight
into its input tensor, with the bare invoke beside them), and the whole analysis of a frame (detect,
preprocess, and the shipped INT8 model on the faces) before and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.device.bench import synthetic_stream  # noqa: E402
from edge.device.config import SHIPPED_BUNDLE  # noqa: E402
from edge.device.pipeline import Analyzer  # noqa: E402
from edge.device.sources import Frame  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.model.classifier import EmotionClassifier  # noqa: E402
from edge.model.detectors.blazeface import BlazeFace  # noqa: E402
from edge.model.litert import load_interpreter  # noqa: E402
from edge.model.preprocess import PreprocessSpec, crop_face, normalize, prepare_face, to_gray  # noqa: E402


def old_decode(d: BlazeFace, width: int, height: int) -> list[tuple]:
    """Outputs copied out of the interpreter, then a suppression loop that computes IoU for each kept box."""
    logits = d.interpreter.get_tensor(d.interpreter.get_output_details()[1]["index"])[0, :, 0]
    candidates = logits > np.log(d.min_score / (1.0 - d.min_score))
    if not candidates.any():
        return []
    raw = d.interpreter.get_tensor(d.interpreter.get_output_details()[0]["index"])[0, candidates, :4] / d.model.size
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[candidates], -100, 100)))
    centre, half = raw[:, :2] + d.anchors[candidates], raw[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    order = np.argsort(-scores)
    boxes, scores, kept, side = boxes[order], scores[order], [], max(width, height)
    while len(boxes):
        b = boxes[0]
        inter = (np.clip(np.minimum(b[2], boxes[:, 2]) - np.maximum(b[0], boxes[:, 0]), 0, None)
                 * np.clip(np.minimum(b[3], boxes[:, 3]) - np.maximum(b[1], boxes[:, 1]), 0, None))
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        overlap = inter / np.maximum((b[2] - b[0]) * (b[3] - b[1]) + areas - inter, 1e-9) > d.iou_threshold
        weights = scores[overlap][:, None]
        kept.append(tuple((boxes[overlap] * weights).sum(0) / weights.sum() * side))
        boxes, scores = boxes[~overlap], scores[~overlap]
    return kept


def invoke(d: BlazeFace, tensor: np.ndarray) -> None:
    d.interpreter.set_tensor(d._input, tensor)
    d.interpreter.invoke()


def before(d: BlazeFace, image: np.ndarray) -> list:
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    side = max(image.shape[:2])
    square = cv2.copyMakeBorder(rgb, 0, side - image.shape[0], 0, side - image.shape[1], cv2.BORDER_CONSTANT)
    invoke(d, cv2.resize(square, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32)[None] / 127.5 - 1.0)
    return old_decode(d, image.shape[1], image.shape[0])


def placed(d: BlazeFace, image: np.ndarray, small: np.ndarray) -> list:
    """Shared tail of the middle variants: the shrunk RGB frame placed into a new padded input."""
    tensor = np.full((1, 128, 128, 3), -1.0, np.float32)
    tensor[0, :small.shape[0], :small.shape[1]] = small.astype(np.float32) / 127.5 - 1.0
    invoke(d, tensor)
    return old_decode(d, image.shape[1], image.shape[0])


def place_not_pad(d: BlazeFace, image: np.ndarray) -> list:
    return placed(d, image, cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (128, 96), interpolation=cv2.INTER_AREA))


def shrink_then_convert(d: BlazeFace, image: np.ndarray) -> list:
    return placed(d, image, cv2.cvtColor(cv2.resize(image, (128, 96), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))


def halve_then_bilinear(d: BlazeFace, image: np.ndarray) -> list:
    half = cv2.resize(cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA), (160, 120), interpolation=cv2.INTER_AREA)
    return placed(d, image, cv2.cvtColor(cv2.resize(half, (128, 96), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB))


KEPT = {"halves": [np.empty((240, 320, 3), np.uint8), np.empty((120, 160, 3), np.uint8)],
        "quarter": np.empty((120, 160, 3), np.uint8), "small": np.empty((96, 128, 3), np.uint8),
        "rgb": np.empty((96, 128, 3), np.uint8), "canvas": np.full((1, 128, 128, 3), -1.0, np.float32)}
"""The 640x480 frame's buffers, allocated once, as BlazeFace keeps them per frame size."""
TO_INPUT = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def kept_buffers(d: BlazeFace, image: np.ndarray, quarter: bool, opencv_scale: bool) -> list:
    """Shrink into kept buffers (two area halvings, or one bilinear 4x step), colour, then [-1, 1] into a canvas
    whose padding was written once (a 256-entry table, or OpenCV's scale and offset in one pass)."""
    if quarter:
        small = cv2.resize(image, (160, 120), dst=KEPT["quarter"], interpolation=cv2.INTER_LINEAR)
    else:
        half = cv2.resize(image, (320, 240), dst=KEPT["halves"][0], interpolation=cv2.INTER_AREA)
        small = cv2.resize(half, (160, 120), dst=KEPT["halves"][1], interpolation=cv2.INTER_AREA)
    cv2.resize(small, (128, 96), dst=KEPT["small"], interpolation=cv2.INTER_LINEAR)
    cv2.cvtColor(KEPT["small"], cv2.COLOR_BGR2RGB, dst=KEPT["rgb"])
    if opencv_scale:
        cv2.addWeighted(KEPT["rgb"], 1.0 / 127.5, KEPT["rgb"], 0.0, -1.0, dst=KEPT["canvas"][0, :96], dtype=cv2.CV_32F)
    else:
        np.take(TO_INPUT, KEPT["rgb"], out=KEPT["canvas"][0, :96], mode="clip")
    invoke(d, KEPT["canvas"])
    return old_decode(d, image.shape[1], image.shape[0])


DETECT_STEPS = {"before": before, "+ place the frame, do not pad it": place_not_pad,
                "+ shrink, then convert colour": shrink_then_convert, "+ halve, then bilinear": halve_then_bilinear,
                "+ buffers kept, [-1, 1] by a table": lambda d, image: kept_buffers(d, image, False, False),
                "+ one bilinear 4x step for two halvings": lambda d, image: kept_buffers(d, image, True, False),
                "+ [-1, 1] by OpenCV in one pass": lambda d, image: kept_buffers(d, image, True, True),
                "+ decode by one matrix product (BlazeFace.detect)": BlazeFace.detect}


def gray_first(image: np.ndarray, boxes: list, spec: PreprocessSpec) -> np.ndarray:
    gray = to_gray(image)
    return np.stack([prepare_face(crop_face(gray, box, spec.crop_margin), spec) for box in boxes])


def infer_before(interpreter, spec: PreprocessSpec, faces: np.ndarray) -> np.ndarray:
    """The classifier before: float faces in new arrays, quantized, copied in with set_tensor."""
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = source["quantization"]
    x = np.clip(np.round(normalize(faces, spec) / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    scale, zero_point = target["quantization"]
    return (interpreter.get_tensor(target["index"]).astype(np.float32) - zero_point) * scale


def analysis_before(d: BlazeFace, classifier: EmotionClassifier, image: np.ndarray) -> None:
    """The Analyzer before the rework: the old detect, the whole frame to gray, a new batch array."""
    boxes = [(round(x0), round(y0), round(x1 - x0), round(y1 - y0)) for x0, y0, x1, y1 in before(d, image)]
    classifier.predict(gray_first(image, boxes, classifier.spec))


def crops_only(image: np.ndarray, boxes: list, spec: PreprocessSpec, out: np.ndarray) -> None:
    for i, box in enumerate(boxes):
        out[i] = prepare_face(to_gray(crop_face(image, box, spec.crop_margin)), spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, choices=[1, 3], default=1)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.frames < 1:
        print("detect_steps: error: --frames must be at least 1", file=sys.stderr)
        return 2
    images, detector, spec = synthetic_stream(args.faces), BlazeFace(), PreprocessSpec()
    boxes = [[f.box for f in detector.detect(image)] for image in images]
    crops = np.empty((args.faces, spec.input_size, spec.input_size), np.uint8)
    bundle = load_bundle(SHIPPED_BUNDLE)
    classifier = EmotionClassifier(bundle)
    interpreter = load_interpreter(bundle.model_bytes)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [args.faces, *crops.shape[1:], 1])
    interpreter.allocate_tensors()
    analyzer = Analyzer(BlazeFace(), classifier, 30)
    steps = {**{name: lambda image, k, f=f: f(detector, image) for name, f in DETECT_STEPS.items()},
             "detect: the invoke alone": lambda image, k: detector.interpreter.invoke(),
             "preprocess: gray frame, then crop": lambda image, k: gray_first(image, boxes[k], spec),
             "preprocess: crop, then gray": lambda image, k: crops_only(image, boxes[k], spec, crops),
             "infer: float, quantize, set_tensor": lambda image, k: infer_before(interpreter, spec, crops),
             "infer: table into the input (EmotionClassifier)": lambda image, k: classifier.predict(crops),
             "infer: the invoke alone": lambda image, k: interpreter.invoke(),
             "analysis (detect + preprocess + infer): before": lambda image, k: analysis_before(detector, classifier, image),
             "analysis: after (Analyzer)": lambda image, k: analyzer(Frame(k, 0.0, image))}
    times: dict[str, list[float]] = {name: [] for name in steps}
    rng, names = np.random.default_rng(0), list(steps)
    for i in range(args.frames + 10):
        k = i % len(images)
        for name in rng.permutation(names):  # a new order each frame: no variant always follows the same one
            start = time.process_time()
            steps[name](images[k], k)
            if i >= 10:  # the first frames allocate and prepare kernels
                times[name].append(time.process_time() - start)
    report = {name: round(float(np.median(t)) * 1e3, 3) for name, t in times.items()}
    width = max(map(len, report))
    for name, ms in report.items():
        print(f"{name:<{width}}  {ms:6.3f} ms")
    print(f"{args.faces} face(s), 640x480, median CPU time of {args.frames} frames, variants round robin in random order")
    if args.json:
        args.json.write_text(json.dumps({"faces": args.faces, "frames": args.frames, "median_ms": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
