"""The onnxruntime back-end against LiteRT on a bundle: top-1 agreement, accuracy and milliseconds per face.

    python bench/onnx_backend.py models/NAME --data ../shared/data --split PublicTest
    python bench/onnx_backend.py models/fer2013-resnet18-cbam --convert --data ../shared/data --json onnx.json

Both back-ends run through the device's :class:`~edge.model.classifier.EmotionClassifier` on the
same prepared faces of a dataset split, one pass each (the device's default, ``model.tta_flip: false``).
A bundle without ``model.onnx`` (such as the shipped release bundle, which predates ``--onnx``) is
converted in memory with ``--convert``, exactly as
``trainer export --onnx`` converts, calibrated on the same number of Training images (needs
``.[train,onnx-export]``). Timing: one face per call (the common case on a device), one thread,
onnxruntime's ``--providers`` (default: every one it offers), median of ``--repeats`` calls after
warm-up, the two back-ends taking turns; it is the model's cost alone (no detection).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ms_per_face(classifiers: dict, faces, repeats: int) -> dict[str, float]:
    """Median milliseconds of one single-face call per classifier, after 20 warm-up calls each.

    The classifiers take turns call by call, so a neighbour's load on a shared machine slows both alike."""
    import numpy as np

    for face in faces[:20]:
        for classifier in classifiers.values():
            classifier.predict(face[None])
    times: dict[str, list[float]] = {name: [] for name in classifiers}
    for i in range(repeats):
        for name, classifier in classifiers.items():
            start = time.perf_counter()
            classifier.predict(faces[i % len(faces)][None])
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", help="dataset path (default: the bundle's training data, or $TRAINER_DATA)")
    parser.add_argument("--split", default="PublicTest", help="FER2013 split or 'all' (default PublicTest)")
    parser.add_argument("--convert", action="store_true", help="convert model.tflite to ONNX in memory when the "
                        "bundle has no model.onnx (as trainer export --onnx does)")
    parser.add_argument("--representative", type=int, default=500, help="calibration images for --convert")
    parser.add_argument("--providers", nargs="*", default=[], help="onnxruntime providers (tensorrt cuda cpu)")
    parser.add_argument("--repeats", type=int, default=500, help="timed single-face calls per back-end")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    import numpy as np

    from edge.errors import UserError
    from edge.model.bundle import load_bundle
    from edge.model.classifier import EmotionClassifier
    from trainer.data.experiment import load_experiment
    from trainer.evaluate.evaluate import select
    from trainer.evaluate.predict import target_config

    try:
        bundle = load_bundle(args.bundle)
        cfg = target_config(args.bundle)
        cfg = dataclasses.replace(cfg, data=args.data or cfg.data, dedup=False, only_fold=None, prune_no_face=False)
        experiment = load_experiment(cfg, log=lambda *a: None)
        converted = bundle.onnx_bytes is None
        if converted:
            if not args.convert:
                raise UserError(f"{args.bundle} has no model.onnx: re-export it with --onnx, or pass --convert")
            from trainer.data.pipeline import eval_dataset
            from trainer.export.onnx import tflite_to_onnx_int8

            train = experiment.folds[0].train
            pick = np.random.default_rng(cfg.seed).choice(train, min(args.representative, len(train)), replace=False)
            calibration = np.stack(list(eval_dataset(experiment.faces[pick], cfg.preprocess).unbatch().as_numpy_iterator()))
            bundle = dataclasses.replace(bundle, onnx_bytes=tflite_to_onnx_int8(bundle.model_bytes, calibration))
        index = select(experiment, args.split)
        faces, labels = experiment.faces[index], experiment.labels[index]
        litert = EmotionClassifier(bundle)
        onnx = EmotionClassifier(bundle, backend="onnxruntime", providers=args.providers)
    except UserError as exc:
        print(f"onnx_backend: error: {exc}", file=sys.stderr)
        return 2
    chunks = range(0, len(faces), 64)
    scores = {name: np.concatenate([c.predict(faces[i:i + 64]) for i in chunks]) for name, c in
              (("litert", litert), ("onnxruntime", onnx))}
    top1 = {name: s.argmax(1) for name, s in scores.items()}
    result = {
        "bundle": str(args.bundle), "split": args.split, "n": int(len(labels)),
        "providers": onnx.providers, "converted_here": converted,
        "agreement_top1": float((top1["litert"] == top1["onnxruntime"]).mean()),
        "max_abs_probability_difference": float(np.abs(scores["litert"] - scores["onnxruntime"]).max()),
        "accuracy": {name: float((p == labels).mean()) for name, p in top1.items()},
        "ms_per_face": ms_per_face({"litert": litert, "onnxruntime": onnx}, faces, args.repeats),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(f"{args.bundle} on {cfg.dataset} {args.split} ({result['n']} faces, one pass each)")
    print(f"top-1 agreement onnxruntime vs LiteRT: {result['agreement_top1']:.4f} "
          f"(largest probability difference {result['max_abs_probability_difference']:.3f})")
    for name in scores:
        print(f"{name:<12} accuracy {result['accuracy'][name]:.4f}   {result['ms_per_face'][name]:.3f} ms per face "
              f"(1 thread{', ' + ', '.join(result['providers']) if name == 'onnxruntime' else ''})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
