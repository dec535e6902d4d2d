"""The self-check a bundle passes before a device lets it answer: it runs, it returns probabilities, and the right ones.

:func:`self_check` runs the model on :func:`fixed_inputs` (a bright oval on a dark ground, an all-zero image and four
gratings, generated with integer arithmetic so every machine makes the same bytes) and refuses, each with one line:

1. a model that does not run or does not return one probability per class (through the classifier the device builds:
   its ``model.backend``, so an onnxruntime device refuses a bundle it cannot run);
2. **XNNPACK against LiteRT's reference kernels**, always, with or without golden outputs: the answers of the
   interpreter as the device runs it (XNNPACK, LiteRT's default CPU path) against those of the reference kernels
   (``OpResolverType.BUILTIN_REF``: plain loops, no SIMD, no delegate) on this machine. A broken delegate, kernel or
   emulator shows here: Debian bookworm's qemu-user 7.2 made XNNPACK's INT8 logits near-constant (the astronaut read
   "disgust") while the model still returned valid probabilities;
3. **golden outputs**: where the manifest has a ``golden`` entry (recorded by the exporter with the reference kernels,
   :func:`record_golden`; the manifest is signed, so they cannot be changed without breaking the signature), the
   device's answers against them: a model file that is not the one they were recorded for, or a device that computes
   differently from the exporter's machine, fails.

The bound, :data:`MAX_DIFFERENCE`, is 16/256 on any probability (16 steps of the INT8 output, whose scale is 1/256).
Two INT8 kernels may requantize a value to neighbouring integers (round half away from zero or to even, a fixed-point
or a float multiplier): one step in one layer. Through ResNet18's twenty-odd requantizations and CBAM's sigmoid gates
such steps compound: on these inputs XNNPACK and the reference kernels differ by at most 5 output steps (0.020) for
the shipped model and the tiny test model on x86-64 (AVX2) and on an emulated Cortex-A72; random-noise faces reach
18 steps, which is why the fixed inputs are smooth. A wrong kernel or model moves probabilities by tenths.

4. **onnxruntime against the reference kernels**, on a device whose ``model.backend`` is onnxruntime: ``model.onnx``
   is the same INT8 network converted to QDQ operators and run by other kernels, so it may differ by more than the
   bound above (0.059 on these inputs for the tiny test model on x86-64) but not by tenths: within
   :data:`MAX_ONNX_DIFFERENCE` and with the same top class on every input. A wrong provider or kernel shows here, as
   onnxruntime's saturating u8*s8 AVX2 path did (70 % agreement with LiteRT before ``onnx_backend`` turned it off).

``python -m edge.model.selfcheck record BUNDLE`` writes golden outputs into a bundle's manifest (sign it again after).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.errors import UserError
from edge.model import litert
from edge.model.bundle import MANIFEST_FILE, Bundle, load_bundle
from edge.model.classifier import EmotionClassifier, LiteRTRunner
from edge.model.litert import dequantization, quantize
from edge.model.preprocess import normalize

log = logging.getLogger("edge.model.selfcheck")
GOLDEN_INPUTS = "oval-zeros-gratings-1"
"""The name of the fixed input set :func:`fixed_inputs` makes; golden outputs name the set they were recorded on."""
INPUT_NAMES = ("oval", "zeros", "grating-0", "grating-90", "grating-45", "grating-135")
MAX_DIFFERENCE = 16 / 256
"""The largest difference allowed on any probability between two computations of the same INT8 model (see above)."""
MAX_ONNX_DIFFERENCE = 32 / 256
"""The same for ``model.onnx`` on onnxruntime against ``model.tflite`` on the reference kernels (see above)."""
GOLDEN_DECIMALS = 6
"""Golden probabilities are stored rounded to 6 decimals (an INT8 output's steps of 1/256 need 8 for exactness;
the rounding error, below 1e-6, is nothing against the bound)."""
KNOWN_FACE = Path(__file__).resolve().parent / "assets" / "astronaut-face.jpg"
"""A face every detector finds: Eileen Collins, from NASA's public-domain portrait (scikit-image's ``astronaut``)."""


def fixed_inputs(size: int, name: str = GOLDEN_INPUTS) -> np.ndarray:
    """The fixed input set ``name`` for a model of input side ``size``: (6, size, size) uint8 faces, in
    :data:`INPUT_NAMES` order. Integer arithmetic only (the oval's test is exact in IEEE arithmetic), so every
    machine and numpy version makes the same bytes."""
    if name != GOLDEN_INPUTS:
        raise UserError(f"unknown fixed input set {name!r} (this runtime knows {GOLDEN_INPUTS!r}): upgrade fer-edge")
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    oval = np.where((xx / 0.35) ** 2 + (yy / 0.45) ** 2 <= 1, 170, 60)
    y, x = np.mgrid[0:size, 0:size]
    gratings = [64 + 16 * np.abs((dx * x + dy * y) % 16 - 8) for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1))]
    return np.stack([oval, np.zeros((size, size)), *gratings]).astype(np.uint8)


def reference_probabilities(bundle: Bundle, faces: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities of ``bundle.model_bytes`` on uint8 ``faces`` through LiteRT's reference kernels,
    fed exactly as the device feeds XNNPACK (normalized and quantized per pixel, :class:`LiteRTRunner`)."""
    if litert.Interpreter is None:
        raise UserError("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)")
    resolver = importlib.import_module(litert.Interpreter.__module__).OpResolverType.BUILTIN_REF
    try:
        interpreter = litert.Interpreter(model_content=bundle.model_bytes, experimental_op_resolver_type=resolver)
        source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(source["index"], [len(faces), *source["shape"][1:]])
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], quantize(normalize(faces, bundle.spec), source))
        interpreter.invoke()
        y = interpreter.get_tensor(target["index"])
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the model does not run on LiteRT's reference kernels ({exc})") from None
    scale, zero_point = dequantization(target)
    return (y.astype(np.float32) - zero_point) * scale


def _largest_difference(a: np.ndarray, b: np.ndarray, classes: list[str]) -> tuple[float, str]:
    """The largest absolute difference and where: ``'grating-45', class happy (0.523 against 0.102)``."""
    difference = np.abs(a - b)
    row, column = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return float(difference[row, column]), (f"input {INPUT_NAMES[row]!r}, class {classes[column]} "
                                            f"({a[row, column]:.3f} against {b[row, column]:.3f})")


def _device_answers(bundle: Bundle, clf: EmotionClassifier, probs: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``model.tflite``'s answers as the device computes them: the device's own interpreter where it runs LiteRT
    without the mirrored average, else a LiteRT interpreter built the same way (XNNPACK)."""
    if getattr(clf, "backend", None) == "litert" and not getattr(clf, "tta_flip", False):
        return probs
    try:
        return LiteRTRunner(bundle.model_bytes, bundle.spec)(faces)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the model does not run on LiteRT ({exc})") from None


def golden_outputs(bundle: Bundle) -> np.ndarray | None:
    """The manifest's golden probabilities as an array, None where it has none or names an input set this runtime does
    not know (then only XNNPACK against the reference kernels is compared; a warning says so)."""
    golden = bundle.manifest.get("golden")
    if golden is None:
        return None
    if golden["inputs"] != GOLDEN_INPUTS:
        log.warning("bundle %s: golden outputs on input set %r, which this runtime does not know (it knows %r): "
                    "not compared", bundle.path, golden["inputs"][:64], GOLDEN_INPUTS)
        return None
    values = golden["probabilities"]
    n = len(bundle.classes)
    if len(values) != len(INPUT_NAMES) or any(len(row) != n for row in values):
        raise UserError(f"self-check failed: the manifest's golden outputs are not {len(INPUT_NAMES)} rows of {n} "
                        f"probabilities (input set {GOLDEN_INPUTS})")
    return np.asarray(values, np.float32)


@dataclass(frozen=True)
class SelfCheck:
    """What :func:`self_check` compared: the largest differences it found (all within :data:`MAX_DIFFERENCE`)."""

    inputs: int
    reference: float
    """XNNPACK against LiteRT's reference kernels on this machine."""
    golden: float | None
    """The device's answers against the manifest's golden outputs; None where it has none (or of an unknown set)."""
    onnx: float | None = None
    """onnxruntime against the reference kernels, where the device runs ``model.onnx``; else None."""

    def describe(self) -> str:
        golden = (f"golden outputs matched within {self.golden:.3f}" if self.golden is not None
                  else "no golden outputs in its manifest")
        onnx = (f", onnxruntime within {self.onnx:.3f} of them with the same top class (bound "
                f"{MAX_ONNX_DIFFERENCE:.4f})" if self.onnx is not None else "")
        return (f"XNNPACK within {self.reference:.3f} of LiteRT's reference kernels on {self.inputs} fixed inputs "
                f"(bound {MAX_DIFFERENCE:.4f}){onnx}, {golden}")


def self_check(bundle: Bundle, classifier: Callable[[Bundle], EmotionClassifier] = EmotionClassifier) -> SelfCheck:
    """Run the model on the fixed inputs and insist on valid probabilities that agree with LiteRT's reference kernels
    and with the manifest's golden outputs (module docstring); raise :class:`UserError` with one line otherwise.

    ``classifier`` builds the model as the device will run it (its ``model.backend``): a bundle an onnxruntime
    device cannot run (no model.onnx) is refused here, before it replaces the one that works."""
    faces = fixed_inputs(bundle.spec.input_size)
    try:
        clf = classifier(bundle)
        probs = clf.predict(faces)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the model does not run ({exc})") from None
    n = len(bundle.classes)
    for row in probs if probs.shape == (len(faces), n) else [probs]:
        if row.shape != (n,) or not np.all(np.isfinite(row)) or row.min() < -0.01 or row.max() > 1.01 \
                or abs(float(row.sum()) - 1) > 0.05:
            raise UserError(f"self-check failed: the model's output {np.round(row, 3).tolist()} is not "
                            f"{n} probabilities summing to 1")
    answers = _device_answers(bundle, clf, probs, faces)
    reference = reference_probabilities(bundle, faces)
    worst, where = _largest_difference(answers, reference, bundle.classes)
    if worst > MAX_DIFFERENCE:
        raise UserError(f"self-check failed: XNNPACK's answers differ from LiteRT's reference kernels by {worst:.3f} "
                        f"(bound {MAX_DIFFERENCE:.4f}) on {where}: this machine's kernels, delegate or emulator compute "
                        "wrong results")
    onnx_worst = None
    if getattr(clf, "backend", None) == "onnxruntime":
        onnx_worst, where = _largest_difference(probs, reference, bundle.classes)
        mismatched = [INPUT_NAMES[i] for i in np.flatnonzero(probs.argmax(1) != reference.argmax(1))]
        if onnx_worst > MAX_ONNX_DIFFERENCE or mismatched:
            raise UserError(f"self-check failed: onnxruntime's answers ({', '.join(clf.providers) or 'no provider'}) "
                            f"differ from LiteRT's reference kernels by {onnx_worst:.3f} (bound "
                            f"{MAX_ONNX_DIFFERENCE:.4f}) on {where}"
                            + (f", another top class on {', '.join(map(repr, mismatched))}" if mismatched else "")
                            + ": this machine's onnxruntime computes wrong results, or model.onnx is not model.tflite")
    golden = golden_outputs(bundle)
    golden_worst = None
    if golden is not None:
        golden_worst, where = _largest_difference(answers, golden, bundle.classes)
        if golden_worst > MAX_DIFFERENCE:
            raise UserError(f"self-check failed: the model's answers differ from the golden outputs in its signed "
                            f"manifest by {golden_worst:.3f} (bound {MAX_DIFFERENCE:.4f}) on {where}: the model file is "
                            "not the one they were recorded for, or this machine computes it differently")
    return SelfCheck(len(faces), worst, golden_worst, onnx_worst)


def record_golden(bundle_dir: str | Path) -> dict:
    """The ``golden`` entry for a bundle's manifest: its probabilities on the fixed inputs through LiteRT's reference
    kernels. For the exporter, before it signs; refuses (one line) a model whose XNNPACK answers on this machine
    already differ from them beyond the bound, so no bundle ships goldens its own maker fails."""
    bundle = load_bundle(bundle_dir)
    faces = fixed_inputs(bundle.spec.input_size)
    reference = reference_probabilities(bundle, faces)
    worst, where = _largest_difference(LiteRTRunner(bundle.model_bytes, bundle.spec)(faces), reference, bundle.classes)
    if worst > MAX_DIFFERENCE:
        raise UserError(f"cannot record golden outputs for {bundle_dir}: XNNPACK differs from LiteRT's reference "
                        f"kernels by {worst:.3f} on {where} on this machine (bound {MAX_DIFFERENCE:.4f})")
    return {"inputs": GOLDEN_INPUTS,
            "probabilities": [[round(float(p), GOLDEN_DECIMALS) for p in row] for row in reference]}


def write_golden(bundle_dir: str | Path) -> dict:
    """Record golden outputs and write them into ``bundle_dir``'s manifest (replacing any there), keeping its other
    fields as they are; the signature no longer matches until the bundle is signed again."""
    golden = record_golden(bundle_dir)
    path = Path(bundle_dir) / MANIFEST_FILE
    text = path.read_text()
    manifest = json.loads(text)
    manifest["golden"] = golden
    path.write_text(json.dumps(manifest, indent=2) + ("\n" if text.endswith("\n") else ""))
    load_bundle(bundle_dir)  # the manifest with its goldens still validates
    return golden


def check_detector(name: str = "blazeface", min_score: float = 0.5, min_size: int = 0, threads: int = 1) -> int:
    """The number of faces detector ``name`` finds in :data:`KNOWN_FACE`; one line if none, or if it does not load."""
    import cv2

    from edge.model.detect import make_detector

    image = cv2.imread(str(KNOWN_FACE), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"self-check failed: the known face {KNOWN_FACE} is missing or unreadable: reinstall fer-edge")
    try:
        faces = make_detector(name, min_score, min_size, threads).detect(image)
    except UserError as exc:
        raise UserError(f"self-check failed: the {name} face detector does not load: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"self-check failed: the {name} face detector does not run ({exc})") from None
    if not faces:
        raise UserError(f"self-check failed: the {name} face detector found no face in {KNOWN_FACE.name}, a known face")
    return len(faces)


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.model.selfcheck record BUNDLE...``: write golden outputs into each bundle's manifest."""
    parser = argparse.ArgumentParser(prog="python -m edge.model.selfcheck",
                                     description="Write golden outputs (LiteRT's reference kernels on the fixed inputs) "
                                     "into bundles' manifests. Sign each bundle again afterwards: tools sign BUNDLE --key KEY")
    parser.add_argument("action", choices=["record"])
    parser.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE")
    args = parser.parse_args(argv)
    try:
        for bundle in args.bundles:
            golden = write_golden(bundle)
            print(f"{bundle / MANIFEST_FILE}: golden outputs on {golden['inputs']} ({len(golden['probabilities'])} inputs) "
                  f"written; sign it again: tools sign {bundle} --key KEY")
    except UserError as exc:
        print(f"selfcheck: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
