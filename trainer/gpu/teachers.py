"""Cross-fitted teachers for distillation, trained with PyTorch where a GPU is lent (issue 12, item 6).

    trainer faces --dataset fer2013 --data ../shared/data --out /tmp/handoff/faces.npz     # here
    python -m trainer.gpu.teachers /tmp/handoff/faces.npz --out teachers.npz --minutes 6  # on the GPU
    trainer fit --dataset fer2013 --teacher teachers.npz --init models/fer2013-resnet18-cbam ...  # here

Why cross-fitted: teachers that label the images they trained on mostly restate the labels they
memorized (this project's CPU teachers were right on 81 % of their own training images against
69 % of PublicTest, and three distillations from them gained nothing). Here the training images
are split into ``--folds`` stratified parts; teacher k trains on all parts but k and labels
part k, so every training image's target comes from a network that never saw it. Each teacher
also scores the validation images, so their single and ensemble accuracy is reported.

The teachers follow the published ~73 % FER2013 recipe, which 2 CPU cores cannot afford: a
full-width ResNet18 (64 channels) with a 3x3 stride-1 stem and no early pool, random 40 px
crops of the 48 px faces with flips, small rotations and zooms, random erasing, mixup, label
smoothing 0.1, SGD-Nesterov with a cosine schedule. No checkpoint is selected on any evaluation
split: each teacher is its weight average at the last step (``--ema 0``: its last weights). The
number of epochs is set by a time budget (``--minutes``, see :func:`trainer.gpu.loop.train`),
because a lent GPU comes for minutes.

Labels use the ten views of :mod:`trainer.model.views` (``flip-crops``: centre and corner 40 px crops
and their mirrors), the same views the trainer's own teachers average. This module needs only
PyTorch and numpy, and runs on a CPU too (slowly; ``--epochs`` and ``--limit`` make a smoke run).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.commandline import positive_int
from trainer.gpu.command import command_parser, device, device_name, recipe_of, run_command
from trainer.gpu.faces import CROP, accuracy, load, predict
from trainer.gpu.handoff import TeacherLabels, images_digest, write_labels
from trainer.gpu.loop import train


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for small faces: 3x3 stride-1 stem, no pool, four stages of two basic blocks."""

    def __init__(self, width: int = 64, classes: int = 7, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of every image, classes spread evenly over the ``k`` folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        fold[index] = (np.arange(len(index)) + rng.integers(k)) % k
    return fold


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m trainer.gpu.teachers", __doc__.split("\n\n")[2], "teacher labels file",
                                   minutes=6.0)
    parser.add_argument("--folds", type=positive_int, default=4, help="teachers, each holding out one part (default 4)")
    parser.add_argument("--width", type=positive_int, default=64, help="first stage's channels (default 64, ResNet18's own)")
    args = parser.parse_args(argv)
    if args.folds < 2 or not args.out.suffix == ".npz":
        parser.error("--folds must be at least 2 and --out a .npz file")

    def log(message: str) -> None:
        print(message, flush=True)

    torch.manual_seed(args.seed)
    where = device()
    data = load(args.faces, where, args.limit, args.seed)
    y, y_val, classes = data.train_labels, data.archive.val_labels, len(data.archive.classes)
    n = len(y)
    log(f"{data.archive.source}: {n} training, {len(y_val)} validation faces on {device_name(where)} "
        f"(torch {torch.__version__})")
    fold = stratified_folds(y, args.folds, args.seed)
    train_probs = np.zeros((args.folds, n, classes), np.float32)
    val_probs, val_once, teachers = np.zeros((args.folds, len(y_val), classes), np.float32), [], []
    epochs, started = args.epochs, time.perf_counter()
    for k in range(args.folds):
        held = fold == k
        log(f"teacher {k + 1}/{args.folds}: trains on {int((~held).sum())} images, labels the other {int(held.sum())}")
        model = ResNet18(args.width, classes).to(where, memory_format=torch.channels_last)
        trains_on = torch.from_numpy(np.flatnonzero(~held)).to(where)
        history, averaged = train(model, recipe_of(args), data.faces, data.labels, trains_on, epochs,
                                         args.minutes * 60 / args.folds, log)
        model = model if averaged is None else averaged
        epochs = len(history)  # the first teacher's budgeted length holds for the others
        train_probs[k] = predict(model, data.faces, data.train_index, "flip-crops")
        val_probs[k] = predict(model, data.faces, data.val_index, "flip-crops")
        val_once.append(predict(model, data.faces, data.val_index, "none"))
        teachers.append({"epochs": epochs, "seconds": sum(h["seconds"] for h in history), "history": history,
                         "held_out_accuracy": accuracy(train_probs[k][held], y[held]),
                         "seen_accuracy": accuracy(train_probs[k][~held], y[~held]),
                         "val_accuracy_none": accuracy(val_once[k], y_val),
                         "val_accuracy_flip_crops": accuracy(val_probs[k], y_val)})
        t = teachers[-1]
        log(f"  held-out part {t['held_out_accuracy']:.2%} (seen parts {t['seen_accuracy']:.2%}); "
            f"validation {t['val_accuracy_none']:.2%} one pass, {t['val_accuracy_flip_crops']:.2%} ten views")
    cross_fitted = train_probs[fold, np.arange(n)]
    ensemble = {"val_accuracy_none": accuracy(np.mean(val_once, 0), y_val),
                "val_accuracy_flip_crops": accuracy(val_probs.mean(0), y_val),
                "cross_fitted_train_accuracy": accuracy(cross_fitted, y)}
    details = {"recipe": {k: v for k, v in vars(args).items() if k not in ("faces", "out")} | {"crop": CROP},
               "device": device_name(where), "torch": torch.__version__,
               "minutes": (time.perf_counter() - started) / 60, "teachers": teachers, "ensemble": ensemble,
               "source": data.archive.source}
    write_labels(args.out, TeacherLabels(cross_fitted, images_digest(data.train_faces), data.archive.preprocess,
                                         "flip-crops", f"{args.folds} cross-fitted ResNet18-{args.width} teachers "
                                         "(torch), ten views", details),
                 fold=fold, teacher_train_probabilities=train_probs, teacher_val_probabilities=val_probs,
                 teacher_val_probabilities_one_pass=np.array(val_once))
    log(f"ensemble of {args.folds}: validation {ensemble['val_accuracy_none']:.2%} one pass, "
        f"{ensemble['val_accuracy_flip_crops']:.2%} ten views; cross-fitted labels agree with "
        f"{ensemble['cross_fitted_train_accuracy']:.2%} of the training labels; wrote {args.out}")
    print(json.dumps(ensemble))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m trainer.gpu.teachers"))
