"""The ``trainer`` command: fit, evaluate and export ResNet18+CBAM facial-expression models (and build the
INT8 face detector)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge import commandline
from edge.commandline import non_negative_int, output_file, positive_float, positive_int
from edge.errors import UserError
from trainer.model.views import TTA_CHOICES

EPILOG = """examples:
  trainer fit --dataset ckplus --data ../shared/data --epochs 20 --out runs/ck
  trainer fit --dataset fer2013 --data fer2013.csv --out runs/fer --resume
  trainer fit --dataset fer2013 --init runs/fer --lr 0.02 --out runs/fer-warm
  trainer fit --dataset fer2013 --teacher runs/fer --teacher models/fer2013-resnet18-cbam --out runs/fer-student
  trainer evaluate runs/fer --split PublicTest --json runs/fer/publictest.json
  trainer evaluate models/fer2013-resnet18-cbam --split PublicTest --tta flip
  trainer export runs/fer --out models/fer2013-resnet18-cbam
  trainer export runs/fer --out models/fer2013-jetson --onnx
  trainer faces --dataset fer2013 --data ../shared/data --out /tmp/handoff/faces.npz
  trainer import-weights student.npz --data ../shared/data --out runs/fer-gpu-student
  trainer average runs/fer-polish-a runs/fer-polish-b --out runs/fer-soup
  trainer quantize-detector
"""


def _parser() -> argparse.ArgumentParser:
    parser, commands = commandline.make_parser("trainer", __doc__, EPILOG)  # with --version and --log-level

    fit = commands.add_parser("fit", help="train a model (one per fold of the protocol)",
                              description="Train ResNet+CBAM on a dataset. Configuration comes from the dataset's "
                              "default preset, then --preset, --config FILE, --set KEY=VALUE and the flags below.")
    fit.add_argument("--dataset", required=True, choices=["fer2013", "ckplus", "jaffe"])
    fit.add_argument("--data", help="dataset path: a CSV, a folder layout, an .npz or a folder holding the .npz "
                     "(default: $TRAINER_DATA)")
    fit.add_argument("--protocol", choices=["official", "random", "subject-kfold"],
                     help="default: official for fer2013, subject-kfold for ckplus and jaffe")
    fit.add_argument("--fold", type=non_negative_int, help="train only this fold of a k-fold protocol")
    fit.add_argument("--epochs", type=positive_int)
    fit.add_argument("--batch-size", type=positive_int)
    fit.add_argument("--lr", type=positive_float, help="peak learning rate")
    fit.add_argument("--preset", default="default", help="'default' (this project's recipe) or 'report' (the report's Table 1)")
    fit.add_argument("--config", type=Path, help="YAML file with any keys of the configuration (see trainer/run/config.py)")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one key, e.g. --set model.width=64 --set augment.mixup=0.2")
    fit.add_argument("--seed", type=non_negative_int)
    fit.add_argument("--init", help="warm start from a run directory's best checkpoint, a bundle's float weights "
                     "or a .weights.h5 file (same architecture: a run's or bundle's model.* and preprocess.* are "
                     "taken over unless set; the schedule starts afresh)")
    fit.add_argument("--teacher", action="append", metavar="RUN_BUNDLE_OR_LABELS",
                     help="distill from this teacher (repeatable: an ensemble): a run, a bundle, or a teacher "
                     "labels file (.npz) from `python -m trainer.gpu.teachers`; sets distill.teachers, see "
                     "distill.temperature, distill.alpha, distill.tta")
    fit.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, history, reports)")
    fit.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    fit.set_defaults(func=fit_command)

    ev = commands.add_parser("evaluate", help="score a run or a model bundle; print the table, write JSON and PNG",
                             description="Evaluate a run directory's best checkpoints (or a model bundle through "
                             "the TFLite interpreter the device uses) and report accuracy, per-class "
                             "precision/recall/F1 and the confusion matrix.")
    ev.add_argument("target", type=Path, metavar="RUN_DIR_OR_BUNDLE")
    ev.add_argument("--dataset", choices=["fer2013", "ckplus", "jaffe"], help="default: the dataset it was trained on")
    ev.add_argument("--data", help="dataset path (default: the run's, or $TRAINER_DATA)")
    ev.add_argument("--split", choices=["Training", "PublicTest", "PrivateTest", "all"],
                    help="score these images with a single model instead of each fold's test set")
    ev.add_argument("--prune-no-face", action="store_true", help="leave out images where no face is detected")
    ev.add_argument("--tta", choices=TTA_CHOICES, default="none",
                    help="test-time averaging (default none: one pass, as the device runs by default; flip: the "
                    "device's model.tta_flip; crops: centre + 4 corners; flip-crops: both, 10 views)")
    ev.add_argument("--json", type=output_file, help="write the report here (and the confusion matrix beside it as .png)")
    ev.set_defaults(func=evaluate_command)

    ex = commands.add_parser("export", help="QAT fine-tune a run's model and write a full-INT8 model bundle",
                             description="Quantization-aware fine-tuning of the run's best checkpoint (first fold), "
                             "conversion to full-INT8 TFLite, a parity table (float Keras, float TFLite, post-training "
                             "INT8, QAT INT8) on the validation images, and a bundle (model.tflite + manifest.json).")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("--out", type=Path, required=True, help="bundle folder, e.g. models/fer2013-resnet18-cbam")
    ex.add_argument("--qat-epochs", type=positive_int, default=2, help="quantization-aware fine-tuning epochs (default 2)")
    ex.add_argument("--int8", choices=("best", "qat", "ptq"), default="best",
                    help="the INT8 model to ship: the more accurate on the validation images of quantization-aware "
                    "(qat) and post-training (ptq), or always one of them; ptq skips the fine-tuning (default best)")
    ex.add_argument("--qat-lr", type=positive_float, default=1e-3,
                    help="initial fine-tuning LR, cosine-decayed (default 1e-3)")
    ex.add_argument("--representative", type=positive_int, default=500,
                    help="training images used to calibrate INT8 ranges (default 500)")
    ex.add_argument("--name", help="bundle name in the manifest (default: the --out folder's name)")
    ex.add_argument("--version", help="model version written to the manifest (default: today's date)")
    ex.add_argument("--onnx", action="store_true", help="also write the same network as QDQ INT8 ONNX (model.onnx) "
                    "into the bundle, for model.backend: onnxruntime (TensorRT on a Jetson); needs .[onnx-export]")
    ex.add_argument("--float-out", type=Path, help="also write the float32 model as a bundle here (for `edge bench "
                    "--float-bundle`; not for devices: 4x the size, ~3x slower per face)")
    ex.set_defaults(func=export_command)

    en = commands.add_parser("ensemble", help="two or more trained networks as one full-INT8 bundle that averages them",
                             description="Averages the members' softmax outputs inside one graph, quantizes it "
                             "post-training to full INT8 and writes a bundle a device runs like any other (one invoke per "
                             "batch of faces, the members' time together). Prints and records the ensemble's accuracy "
                             "beside each member's on the first member's validation images.")
    en.add_argument("members", type=Path, nargs="+", metavar="BUNDLE_OR_RUN",
                    help="bundles with float weights, or run folders, trained with the same preprocessing")
    en.add_argument("--out", type=Path, required=True, help="bundle folder, e.g. models/fer2013-ensemble")
    en.add_argument("--data", help="dataset path (default: the first member's, or $TRAINER_DATA)")
    en.add_argument("--representative", type=positive_int, default=500,
                    help="training images used to calibrate INT8 ranges (default 500)")
    en.add_argument("--weights", dest="member_weights", type=float_list, metavar="W1,W2,...",
                    help="each member's weight in the average, e.g. 2,1 (normalised; default: equal)")
    en.add_argument("--name", help="bundle name in the manifest (default: the --out folder's name)")
    en.add_argument("--version", help="model version written to the manifest (default: today's date)")
    en.set_defaults(func=ensemble_command)

    fa = commands.add_parser("faces", help="write a dataset's prepared faces for training on a GPU without TensorFlow",
                             description="Write the first fold's training and validation faces, prepared by the one "
                             "preprocessing path and in the order fit trains on them, with the run's network "
                             "configuration, as a compressed archive for `python -m trainer.gpu.teachers` or "
                             "`python -m trainer.gpu.student` on a GPU machine (PyTorch, no TensorFlow); a teacher "
                             "labels file comes back as a --teacher of fit, a student's weights through "
                             "import-weights. Dataset images: keep the archive out of the repository.")
    fa.add_argument("--dataset", required=True, choices=["fer2013", "ckplus", "jaffe"])
    fa.add_argument("--data", help="dataset path (default: $TRAINER_DATA)")
    fa.add_argument("--config", type=Path, help="YAML file with configuration keys (preprocess.*, dedup, ...)")
    fa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    fa.add_argument("--out", type=output_file, required=True, help="the archive (.npz)")
    fa.set_defaults(func=faces_command)

    im = commands.add_parser("import-weights", help="make a run folder of a network trained on a GPU without TensorFlow",
                             description="Load a weights file from `python -m trainer.gpu.student` into the Keras "
                             "model it names, write it as a run folder (config.yaml, <fold>/best.weights.h5) and score "
                             "the fold as fit does; then evaluate, export, --init and --teacher take it.")
    im.add_argument("weights", type=Path, metavar="STUDENT.npz")
    im.add_argument("--data", help="dataset path (default: $TRAINER_DATA)")
    im.add_argument("--out", type=Path, required=True, help="the new run directory")
    im.set_defaults(func=import_weights_command)

    av = commands.add_parser("average", help="average the weights of runs fine-tuned from one start (a model soup)",
                             description="Average the best checkpoints of runs of one network fine-tuned from the "
                             "same --init (a uniform model soup: one pass on the device, part of an ensemble's "
                             "gain), write the result as a run folder and score it as fit does.")
    av.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="two or more run folders")
    av.add_argument("--data", help="dataset path (default: the first run's)")
    av.add_argument("--out", type=Path, required=True, help="the new run directory")
    av.set_defaults(func=average_command)

    qd = commands.add_parser("quantize-detector", help="rebuild the INT8 face detector (detector.name: blazeface-int8)",
                             description="Quantize MediaPipe's short-range BlazeFace to full INT8, calibrated on "
                             "the edge bench's synthetic frames, and print its parity with the float model.")
    qd.add_argument("--out", type=output_file, help="the model file (default: the one the edge package ships)")
    qd.add_argument("--frames", type=positive_int, default=20, help="calibration frames per stream (default 20)")
    qd.set_defaults(func=quantize_detector_command)
    return parser


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers > 0 (``--weights 2,1``)."""
    return [positive_float(part.strip()) for part in text.split(",")]


def _overrides(args) -> list[dict]:
    from trainer.run.config import parse_assignment

    overrides = [parse_assignment(s) for s in args.set]
    flags = {"data": args.data, "protocol": args.protocol, "only_fold": args.fold, "epochs": args.epochs,
             "batch_size": args.batch_size, "seed": args.seed, "init": args.init}
    overrides.append({k: v for k, v in flags.items() if v is not None})
    if args.lr is not None:
        overrides.append({"schedule": {"lr": args.lr}})
    if args.teacher:
        overrides.append({"distill": {"teachers": args.teacher}})
    return overrides


def fit_command(args: argparse.Namespace) -> int:
    from trainer.fit.loop import fit
    from trainer.fit.warm_start import fit_config

    fit(fit_config(args.dataset, args.preset, args.config, _overrides(args)), args.out, args.resume)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from trainer.evaluate.evaluate import evaluate

    evaluate(args.target, args.dataset, args.data, args.split, args.prune_no_face, args.json, args.tta)
    return 0


def export_command(args: argparse.Namespace) -> int:
    from trainer.export.export import export

    export(args.run_dir, args.out, args.qat_epochs, args.representative, args.qat_lr, name=args.name,
           version=args.version, float_out=args.float_out, onnx=args.onnx, int8=args.int8)
    return 0


def ensemble_command(args: argparse.Namespace) -> int:
    from trainer.export.ensemble import ensemble

    ensemble(args.members, args.out, args.data, args.name, args.version, args.representative, args.member_weights)
    return 0


def faces_command(args: argparse.Namespace) -> int:
    from trainer.data.experiment import faces_archive
    from trainer.fit.warm_start import fit_config
    from trainer.gpu.handoff import write_faces
    from trainer.run.config import parse_assignment

    overrides = [parse_assignment(s) for s in args.set] + ([{"data": args.data}] if args.data else [])
    archive = faces_archive(fit_config(args.dataset, "default", args.config, overrides))
    write_faces(args.out, archive)
    print(f"wrote {len(archive.train)} training and {len(archive.val)} validation faces to {args.out} "
          f"({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def import_weights_command(args: argparse.Namespace) -> int:
    from trainer.fit.import_weights import import_student

    import_student(args.weights, args.out, args.data)
    return 0


def average_command(args: argparse.Namespace) -> int:
    from trainer.fit.soup import average_runs

    average_runs(args.runs, args.out, args.data)
    return 0


def quantize_detector_command(args: argparse.Namespace) -> int:
    from trainer.export.detector import quantize_detector

    quantize_detector(args.out, per_stream=args.frames)
    return 0


INPUTS = {"config": "--config", "target": "RUN_DIR_OR_BUNDLE", "run_dir": "RUN_DIR", "weights": "STUDENT.npz",
          "init": "--init", "runs": "RUN_DIR", "teacher": "--teacher", "members": "BUNDLE_OR_RUN"}
"""Arguments that name files or folders the command reads (and ``--data``, or ``$TRAINER_DATA`` in its place)."""


def check_inputs(args: argparse.Namespace) -> None:
    """Every path the command will read exists: a typo is one line in a second, not after TensorFlow loads."""
    named = [(flag, value) for key, flag in INPUTS.items() if getattr(args, key, None)
             for value in (getattr(args, key) if isinstance(getattr(args, key), list) else [getattr(args, key)])]
    if hasattr(args, "data") and (args.data or os.environ.get("TRAINER_DATA")):
        named.append(("--data", args.data) if args.data else ("$TRAINER_DATA", os.environ["TRAINER_DATA"]))
    for flag, value in named:
        if not Path(value).exists():
            raise UserError(f"{flag} {value} does not exist")


def import_tensorflow(args: argparse.Namespace) -> None:
    """After the inputs are checked: TensorFlow, quietly, or one line saying how to get it (a device install has
    no trainer). Quietly: 2.21 prints absl lines at import that TF_CPP_MIN_LOG_LEVEL no longer hides, and on a
    machine without a GPU a "failed call to cuInit" error at its first operation, so the devices are listed here,
    with stderr closed (a GPU machine still finds its GPU)."""
    check_inputs(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    except ImportError:
        raise UserError("the trainer needs TensorFlow: pip install -e '.[train]' (devices install only [edge])") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    code = commandline.main("trainer", _parser(), argv, prepare=import_tensorflow)
    if code == 130:
        print("trainer: continue with the same command and --resume", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
