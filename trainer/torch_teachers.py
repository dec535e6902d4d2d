"""Cross-fitted teachers for distillation, trained with PyTorch where a GPU is lent (issue 12, item 6).

    trainer faces --dataset fer2013 --data ../shared/data --out /tmp/handoff/faces.npz     # here
    python -m trainer.torch_teachers /tmp/handoff/faces.npz --out teachers.npz --minutes 6  # on the GPU
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
split: each teacher is its last epoch. The number of epochs is set by a time budget
(``--minutes``), measured on the second epoch, because a lent GPU comes for minutes.

Labels use the ten views of :mod:`trainer.tta` (``flip-crops``: centre and corner 40 px crops
and their mirrors), the same views the trainer's own teachers average. This module needs only
PyTorch and numpy, and runs on a CPU too (slowly; ``--epochs`` and ``--limit`` make a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.handoff import TeacherLabels, images_digest, read_faces, write_labels
from trainer.tta import UNCROPPED_SHIFT

CROP = 40
"""Side of the crops the teachers see, as the student's ``model.crop``; the corner views sit ``UNCROPPED_SHIFT`` px off centre."""


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


def augment(x: torch.Tensor, rotation: float = 10.0, zoom: float = 0.1, erasing: float = 0.5) -> torch.Tensor:
    """Random 40 px crops of (B, 1, 48, 48) faces in [0, 1], with flips, rotation, zoom and erasing, in one resampling.

    With no rotation or zoom the sampling grid falls on pixel centres, so a crop is exact: what the
    evaluation views slice."""
    b, device = x.shape[0], x.device
    angle = (torch.rand(b, device=device) * 2 - 1) * math.radians(rotation)
    k = (CROP / x.shape[-1]) / (1 + (torch.rand(b, device=device) * 2 - 1) * zoom)
    flip = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
    shift = torch.randint(-UNCROPPED_SHIFT, UNCROPPED_SHIFT + 1, (2, b), device=device) * 2.0 / x.shape[-1]
    cos, sin = torch.cos(angle) * k, torch.sin(angle) * k
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[0]], 1), torch.stack([sin * flip, cos, shift[1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, CROP, CROP], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # random erasing (Zhong et al. 2020): a box of 2-33 % of the crop, aspect 0.3-3.3, filled with noise
    area = torch.empty(b, device=device).uniform_(0.02, 0.33) * CROP * CROP
    aspect = torch.exp(torch.empty(b, device=device).uniform_(math.log(0.3), math.log(3.3)))
    h, w = (area * aspect).sqrt().clamp(max=CROP), (area / aspect).sqrt().clamp(max=CROP)
    y0, x0 = torch.rand(b, device=device) * (CROP - h), torch.rand(b, device=device) * (CROP - w)
    grid_y = torch.arange(CROP, device=device).view(1, CROP, 1)
    grid_x = torch.arange(CROP, device=device).view(1, 1, CROP)
    box = ((grid_y >= y0.view(-1, 1, 1)) & (grid_y < (y0 + h).view(-1, 1, 1))
           & (grid_x >= x0.view(-1, 1, 1)) & (grid_x < (x0 + w).view(-1, 1, 1))
           & (torch.rand(b, 1, 1, device=device) < erasing)).unsqueeze(1)
    return torch.where(box, torch.rand_like(out), out)


def views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The evaluation views of (B, 1, 48, 48) faces: the centre 40 px crop (``none``), or ten (``flip-crops``)."""
    m, s = (x.shape[-1] - CROP) // 2, UNCROPPED_SHIFT
    offsets = [(0, 0)] + ([(-s, -s), (-s, s), (s, -s), (s, s)] if tta == "flip-crops" else [])
    crops = [x[..., m + dy:m + dy + CROP, m + dx:m + dx + CROP] for dy, dx in offsets]
    return crops + ([c.flip(-1) for c in crops] if tta == "flip-crops" else [])


class Faces:
    """uint8 faces kept on the device, turned into model input batch by batch as the student's normalize does."""

    def __init__(self, faces: np.ndarray, preprocess: dict, device: torch.device):
        self.faces = torch.from_numpy(np.ascontiguousarray(faces)).to(device)
        self.scale, self.offset = float(preprocess["scale"]), float(preprocess["offset"])

    def __len__(self) -> int:
        return len(self.faces)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Faces in [0, 1] (augmentation fills with values in this range), (B, 1, S, S)."""
        return self.faces[index].unsqueeze(1).float() / 255.0

    def model_input(self, unit: torch.Tensor) -> torch.Tensor:
        return (unit * (255.0 * self.scale) + self.offset).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model: nn.Module, faces: Faces, index: torch.Tensor, tta: str, batch: int = 1024) -> np.ndarray:
    """Softmax probabilities averaged over the views (float32, as :func:`trainer.predict.averaged`)."""
    model.eval()
    out = []
    for start in range(0, len(index), batch):
        x = faces.batch(index[start:start + batch])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            probs = [F.softmax(model(faces.model_input(v)).float(), dim=1) for v in views(x, tta)]
        out.append(torch.stack(probs).mean(0).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of every image, classes spread evenly over the ``k`` folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        fold[index] = (np.arange(len(index)) + rng.integers(k)) % k
    return fold


class Schedule:
    """Linear warm-up over ``warmup`` epochs, then cosine to zero at ``epochs`` (settable once the pace is known)."""

    def __init__(self, lr: float, steps_per_epoch: int, warmup: int, epochs: int):
        self.lr, self.steps, self.warmup, self.epochs = lr, steps_per_epoch, warmup, epochs

    def __call__(self, step: int) -> float:
        epoch = step / self.steps
        if epoch < self.warmup:
            return self.lr * (step + 1) / (self.warmup * self.steps)
        progress = min(1.0, (epoch - self.warmup) / max(1e-9, self.epochs - self.warmup))
        return 0.5 * self.lr * (1 + math.cos(math.pi * progress))


def train_teacher(args, faces: Faces, labels: torch.Tensor, train: torch.Tensor, epochs: int | None,
                  log) -> tuple[nn.Module, list[dict], int]:
    """Train one teacher on ``train``; ``epochs`` None: set by the budget from the second epoch's pace."""
    device = labels.device
    model = ResNet18(args.width, args.classes).to(device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps = len(train) // args.batch
    schedule = Schedule(args.lr, steps, warmup=2, epochs=epochs or 10**6)
    beta = torch.distributions.Beta(args.mixup, args.mixup) if args.mixup else None
    history, step, epoch = [], 0, 0
    while epoch < schedule.epochs:
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0.0, 0
        order = train[torch.randperm(len(train), device=device)]
        for i in range(steps):
            index = order[i * args.batch:(i + 1) * args.batch]
            x, y = augment(faces.batch(index)), labels[index]
            lam, partner = 1.0, torch.arange(len(index), device=device)
            if beta is not None:
                lam, partner = float(beta.sample()), torch.randperm(len(index), device=device)
                x = lam * x + (1 - lam) * x[partner]
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(faces.model_input(x)).float()
            loss = (lam * F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
                    + (1 - lam) * F.cross_entropy(logits, y[partner], label_smoothing=args.label_smoothing))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) if i % 20 == 0 else 0.0  # a sync now and then, not every step
            correct += float((logits.argmax(1) == y).float().mean()) if i % 20 == 0 else 0.0
            seen += i % 20 == 0
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        epoch += 1
        history.append({"epoch": epoch, "loss": total / seen, "accuracy": correct / seen, "lr": schedule(step - 1),
                        "seconds": seconds})
        if epochs is None and epoch == 2:  # warm-up done at a steady pace: fit the rest into the budget
            schedule.epochs = max(3, int(args.minutes * 60 / args.folds / seconds))
            log(f"  {seconds:.2f} s an epoch: {schedule.epochs} epochs for each of {args.folds} teachers in "
                f"{args.minutes} min")
        if epoch % 10 == 0 or epoch == schedule.epochs:
            log(f"  epoch {epoch}/{schedule.epochs}: loss {history[-1]['loss']:.3f}, accuracy (mixed) "
                f"{history[-1]['accuracy']:.3f}, {seconds:.2f} s")
    return model, history, schedule.epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.torch_teachers", description=__doc__.split("\n\n")[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faces", type=Path, help="faces archive written by `trainer faces`")
    parser.add_argument("--out", type=Path, required=True, help="teacher labels file to write (.npz)")
    parser.add_argument("--folds", type=int, default=4, help="teachers, each holding out one part (default 4)")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time for all teachers together (default 6)")
    parser.add_argument("--epochs", type=int, help="epochs per teacher instead of the time budget")
    parser.add_argument("--width", type=int, default=64, help="first stage's channels (default 64, ResNet18's own)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--mixup", type=float, default=0.2)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--limit", type=int, help="use only N training images, drawn at random (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.folds < 2 or not args.out.suffix == ".npz":
        parser.error("--folds must be at least 2 and --out a .npz file")

    def log(message: str) -> None:
        print(message, flush=True)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    archive = read_faces(args.faces)
    keep = (np.sort(np.random.default_rng(args.seed).choice(len(archive.train), args.limit, replace=False))
            if args.limit else slice(None))
    train_faces, train_labels = archive.train[keep], archive.train_labels[keep]
    args.classes = len(archive.classes)
    log(f"{archive.source}: {len(train_faces)} training, {len(archive.val)} validation faces on "
        f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'} (torch {torch.__version__})")
    faces = Faces(np.concatenate([train_faces, archive.val]), archive.preprocess, device)
    labels = torch.from_numpy(np.concatenate([train_labels, archive.val_labels])).to(device)
    n = len(train_faces)
    everything, val = torch.arange(n, device=device), torch.arange(n, len(faces), device=device)
    fold = stratified_folds(train_labels, args.folds, args.seed)
    train_probs = np.zeros((args.folds, n, args.classes), np.float32)
    val_probs, val_once, teachers = np.zeros((args.folds, len(val), args.classes), np.float32), [], []
    epochs, started = args.epochs, time.perf_counter()
    for k in range(args.folds):
        log(f"teacher {k + 1}/{args.folds}: trains on {int((fold != k).sum())} images, labels the other {int((fold == k).sum())}")
        model, history, epochs = train_teacher(args, faces, labels, torch.from_numpy(np.flatnonzero(fold != k)).to(device),
                                               epochs, log)
        train_probs[k] = predict(model, faces, everything, "flip-crops")
        val_probs[k] = predict(model, faces, val, "flip-crops")
        val_once.append(predict(model, faces, val, "none"))
        held = fold == k
        teachers.append({"epochs": epochs, "seconds": sum(h["seconds"] for h in history), "history": history,
                         "held_out_accuracy": float((train_probs[k][held].argmax(1) == train_labels[held]).mean()),
                         "seen_accuracy": float((train_probs[k][~held].argmax(1) == train_labels[~held]).mean()),
                         "val_accuracy_none": float((val_once[k].argmax(1) == archive.val_labels).mean()),
                         "val_accuracy_flip_crops": float((val_probs[k].argmax(1) == archive.val_labels).mean())})
        t = teachers[-1]
        log(f"  held-out part {t['held_out_accuracy']:.2%} (seen parts {t['seen_accuracy']:.2%}); "
            f"validation {t['val_accuracy_none']:.2%} one pass, {t['val_accuracy_flip_crops']:.2%} ten views")
    cross_fitted = train_probs[fold, np.arange(n)]
    ensemble = {"val_accuracy_none": float((np.mean(val_once, 0).argmax(1) == archive.val_labels).mean()),
                "val_accuracy_flip_crops": float((val_probs.mean(0).argmax(1) == archive.val_labels).mean()),
                "cross_fitted_train_accuracy": float((cross_fitted.argmax(1) == train_labels).mean())}
    details = {"recipe": {k: v for k, v in vars(args).items() if k not in ("faces", "out")} | {"crop": CROP},
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU", "torch": torch.__version__,
               "minutes": (time.perf_counter() - started) / 60, "teachers": teachers, "ensemble": ensemble,
               "source": archive.source}
    write_labels(args.out, TeacherLabels(cross_fitted, images_digest(train_faces), archive.preprocess, "flip-crops",
                                         f"{args.folds} cross-fitted ResNet18-{args.width} teachers (torch), ten views",
                                         details),
                 fold=fold, teacher_train_probabilities=train_probs, teacher_val_probabilities=val_probs)
    log(f"ensemble of {args.folds}: validation {ensemble['val_accuracy_none']:.2%} one pass, "
        f"{ensemble['val_accuracy_flip_crops']:.2%} ten views; cross-fitted labels agree with "
        f"{ensemble['cross_fitted_train_accuracy']:.2%} of the training labels; wrote {args.out}")
    print(json.dumps(ensemble))
    return 0


if __name__ == "__main__":
    sys.exit(main())
