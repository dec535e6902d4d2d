"""What the GPU trainers share: faces on the device, augmentation, test-time views, the schedule, the loop.

The augmentation and views mirror the trainer's own (:mod:`trainer.pipeline`, :mod:`trainer.tta`):
random 40 px crops of the 48 px faces with flips, small rotations and zooms, random erasing and
mixup for training; the centre crop, or the centre and four corner crops and their mirrors
(``flip-crops``), for scoring. Everything runs batched on the device: a lent GPU is fed from
memory, not from a CPU input pipeline.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.commandline import non_negative_float, non_negative_int, positive_float, positive_int
from edge.errors import UserError
from trainer.ema import ema_decay
from trainer.handoff import FacesArchive, read_faces
from trainer.tta import UNCROPPED_SHIFT

CROP = 40
"""Side of the crops the teachers see, as the student's ``model.crop``; the corner views sit ``UNCROPPED_SHIFT`` px off centre."""


AUGMENT = {"flip": True, "shift": 0.0, "rotation": 10.0, "zoom": 0.1, "erasing": 0.5}
"""What :func:`augment` does, in ``fit``'s ``augment.*`` terms (its random ``CROP`` px crops are the shift)."""


def augment(x: torch.Tensor, rotation: float = AUGMENT["rotation"], zoom: float = AUGMENT["zoom"],
            erasing: float = AUGMENT["erasing"]) -> torch.Tensor:
    """Random 40 px crops of (B, 1, 48, 48) faces in [0, 1], with flips, rotation, zoom and erasing, in one resampling.

    With no rotation or zoom the sampling grid falls on pixel centres, so a crop is exact: what the
    evaluation views slice."""
    b, on = x.shape[0], x.device
    angle = (torch.rand(b, device=on) * 2 - 1) * math.radians(rotation)
    k = (CROP / x.shape[-1]) / (1 + (torch.rand(b, device=on) * 2 - 1) * zoom)
    flip = torch.where(torch.rand(b, device=on) < 0.5, -1.0, 1.0)
    shift = torch.randint(-UNCROPPED_SHIFT, UNCROPPED_SHIFT + 1, (2, b), device=on) * 2.0 / x.shape[-1]
    cos, sin = torch.cos(angle) * k, torch.sin(angle) * k
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[0]], 1), torch.stack([sin * flip, cos, shift[1]], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, CROP, CROP], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # random erasing (Zhong et al. 2020): a box of 2-33 % of the crop, aspect 0.3-3.3, filled with noise
    area = torch.empty(b, device=on).uniform_(0.02, 0.33) * CROP * CROP
    aspect = torch.exp(torch.empty(b, device=on).uniform_(math.log(0.3), math.log(3.3)))
    h, w = (area * aspect).sqrt().clamp(max=CROP), (area / aspect).sqrt().clamp(max=CROP)
    y0, x0 = torch.rand(b, device=on) * (CROP - h), torch.rand(b, device=on) * (CROP - w)
    grid_y = torch.arange(CROP, device=on).view(1, CROP, 1)
    grid_x = torch.arange(CROP, device=on).view(1, 1, CROP)
    box = ((grid_y >= y0.view(-1, 1, 1)) & (grid_y < (y0 + h).view(-1, 1, 1))
           & (grid_x >= x0.view(-1, 1, 1)) & (grid_x < (x0 + w).view(-1, 1, 1))
           & (torch.rand(b, 1, 1, device=on) < erasing)).unsqueeze(1)
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


@dataclass
class Recipe:
    """The optimizer and regularization of a GPU run (the command line's flags)."""

    batch: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    mixup: float = 0.2
    label_smoothing: float = 0.1
    warmup: int = 2
    """Epochs of linear warm-up; the second one's pace sets a budgeted run's length."""
    ema: float = 0.999
    """Decay of the weight average that is kept, scored and saved (0: the last epoch's weights instead)."""
    compile: bool = False
    """Train through ``torch.compile``: fewer, fused kernels (a small network on a large GPU waits on kernel
    launches more than on arithmetic), for the compiling in the first epoch."""


def command_parser(prog: str, doc: str, out: str, minutes: float) -> argparse.ArgumentParser:
    """The flags both GPU commands take: the archive, the output, the budget, the recipe, a smoke run's sample."""
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faces", type=Path, help="faces archive written by `trainer faces`")
    parser.add_argument("--out", type=Path, required=True, help=f"{out} to write (.npz)")
    parser.add_argument("--minutes", type=positive_float, default=minutes, help=f"training time (default {minutes})")
    parser.add_argument("--epochs", type=positive_int, help="epochs instead of the time budget")
    parser.add_argument("--batch", type=positive_int, default=defaults.batch)
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    parser.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay)
    parser.add_argument("--mixup", type=non_negative_float, default=defaults.mixup, help="mixup Beta(a, a); 0 turns it off")
    parser.add_argument("--label-smoothing", type=non_negative_float, default=defaults.label_smoothing)
    parser.add_argument("--ema", type=unit_interval, default=defaults.ema, help="decay of the weight average that is "
                        f"kept and saved instead of the last weights (default {defaults.ema}; 0 keeps the last ones)")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (fused kernels, after "
                        "compiling in the first epoch)")
    parser.add_argument("--limit", type=positive_int, help="use only N training images, drawn at random (a smoke run)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    return parser


def recipe_of(args: argparse.Namespace) -> Recipe:
    return Recipe(args.batch, args.lr, args.weight_decay, args.mixup, args.label_smoothing, ema=args.ema,
                  compile=args.compile)


def unit_interval(text: str) -> float:
    """A decay in [0, 1), for ``--ema``."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1 (e.g. 0.999; 0 turns it off), got {text}")
    return value


def run_command(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> int:
    """A GPU command's entry point: bad input (a damaged archive, labels of other faces) is one line, exit 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def device() -> torch.device:
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(where: torch.device) -> str:
    return torch.cuda.get_device_name(where) if where.type == "cuda" else "CPU"


class Average:
    """An exponential moving average of a model's weights, batch-norm statistics included, as
    :mod:`trainer.averaging` keeps on the CPU (the same warming-up decay), updated after every step.

    Why: a cosine cycle's last epochs still move the weights around a region; their average sits nearer its
    centre. On the 2026.11.26.4 network, 8 more epochs at a small LR with averaged weights, on 2 cores,
    added 0.64 points (float, one pass) to a GPU student's last epoch; kept during the GPU run, averaging
    costs one in-place update a step."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.step = decay, 0
        pairs = [(a, w) for a, w in zip(self.model.state_dict().values(), model.state_dict().values())
                 if a.dtype.is_floating_point]  # not batch-norm's step counters
        self.averages, self.weights = [a for a, _ in pairs], [w for _, w in pairs]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.averages, self.weights, 1.0 - ema_decay(self.decay, self.step))
        self.step += 1


@dataclass
class Distillation:
    """Soft targets for every face (teachers' probabilities at temperature T), and the soft term's weight."""

    targets: torch.Tensor
    temperature: float
    alpha: float


def train(model: nn.Module, recipe: Recipe, faces: Faces, labels: torch.Tensor, train_index: torch.Tensor,
          epochs: int | None, budget_seconds: float, log, distill: Distillation | None = None
          ) -> tuple[list[dict], nn.Module | None]:
    """Train ``model`` on ``train_index`` with SGD-Nesterov (no weight decay on biases and norms), warm-up then
    cosine to zero, mixup and label smoothing; with ``distill``, the loss of :class:`trainer.distill.DistillationLoss`
    (``(1 - alpha) * CE + alpha * T^2 * KL``, soft targets mixed like the labels). ``epochs`` None: as many as
    ``budget_seconds`` allows, the time already spent counted and the pace the median epoch after the first, set at
    the end of the warm-up and set again three epochs later (one timing is noisy on a shared GPU: 0.9-1.7 s for
    the same epoch). Returns the per-epoch history and the averaged model (None when ``recipe.ema`` is 0)."""
    where = labels.device
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0}],
                          lr=recipe.lr, momentum=0.9, nesterov=True)
    steps = len(train_index) // recipe.batch
    if steps < 1:
        raise UserError(f"{len(train_index)} training images are fewer than a batch of {recipe.batch}")
    schedule = Schedule(recipe.lr, steps, warmup=recipe.warmup, epochs=epochs or 10**6)
    beta = torch.distributions.Beta(recipe.mixup, recipe.mixup) if recipe.mixup else None
    forward = torch.compile(model) if recipe.compile else model  # same parameters; scoring calls ``model``
    average = Average(model, recipe.ema) if recipe.ema else None
    history, step, epoch = [], 0, 0
    while epoch < schedule.epochs:
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0.0, 0
        order = train_index[torch.randperm(len(train_index), device=where)]
        for i in range(steps):
            index = order[i * recipe.batch:(i + 1) * recipe.batch]
            x, y = augment(faces.batch(index)), labels[index]
            lam, partner = 1.0, torch.arange(len(index), device=where)
            if beta is not None:
                lam, partner = float(beta.sample()), torch.randperm(len(index), device=where)
                x = lam * x + (1 - lam) * x[partner]
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            with torch.autocast(where.type, dtype=torch.bfloat16, enabled=where.type == "cuda"):
                logits = forward(faces.model_input(x)).float()
            loss = (lam * F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                    + (1 - lam) * F.cross_entropy(logits, y[partner], label_smoothing=recipe.label_smoothing))
            if distill is not None:
                soft = lam * distill.targets[index] + (1 - lam) * distill.targets[index[partner]]
                student = F.log_softmax(logits / distill.temperature, dim=1)
                kl = (soft * (soft.clamp_min(1e-12).log() - student)).sum(1).mean()
                loss = (1 - distill.alpha) * loss + distill.alpha * distill.temperature**2 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update()
            if i % 20 == 0:  # a sync now and then, not every step
                total += float(loss.detach())
                correct += float((logits.argmax(1) == y).float().mean())
                seen += 1
            step += 1
        if where.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        epoch += 1
        history.append({"epoch": epoch, "loss": total / seen, "accuracy": correct / seen, "lr": schedule(step - 1),
                        "seconds": seconds})
        if epochs is None and epoch in (recipe.warmup, recipe.warmup + 3):  # fit the rest into what is left
            pace = float(np.median([h["seconds"] for h in history[1:]]))  # the first epoch compiles and warms up
            left = budget_seconds - sum(h["seconds"] for h in history)
            schedule.epochs = max(epoch + 1, epoch + int(left / pace))
            log(f"  {pace:.2f} s an epoch: {schedule.epochs} epochs in {budget_seconds / 60:.1f} min")
        if epoch % 10 == 0 or epoch == schedule.epochs:
            log(f"  epoch {epoch}/{schedule.epochs}: loss {history[-1]['loss']:.3f}, accuracy (mixed) "
                f"{history[-1]['accuracy']:.3f}, {seconds:.2f} s")
    return history, None if average is None else average.model


@dataclass
class Loaded:
    """A faces archive on the device: training faces first (indices ``0..n``), validation faces after."""

    archive: FacesArchive
    keep: np.ndarray
    """Which of the archive's training faces are used (all, or a smoke run's sample), in order."""
    train_faces: np.ndarray
    train_labels: np.ndarray
    faces: Faces
    labels: torch.Tensor

    @property
    def train_index(self) -> torch.Tensor:
        return torch.arange(len(self.train_faces), device=self.labels.device)

    @property
    def val_index(self) -> torch.Tensor:
        return torch.arange(len(self.train_faces), len(self.faces), device=self.labels.device)


def load(path: Path, where: torch.device, limit: int | None = None, seed: int = 0) -> Loaded:
    """Read a faces archive onto the device; ``limit``: N training faces drawn at random (a smoke run)."""
    archive = read_faces(path)
    n = len(archive.train)
    keep = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False)) if limit and limit < n else np.arange(n)
    train_faces, train_labels = archive.train[keep], archive.train_labels[keep]
    faces = Faces(np.concatenate([train_faces, archive.val]), archive.preprocess, where)
    labels = torch.from_numpy(np.concatenate([train_labels, archive.val_labels])).to(where)
    return Loaded(archive, keep, train_faces, train_labels, faces, labels)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())
