"""The GPU trainers' loop: the recipe, the schedule, the weight average, distillation's targets, and the loop.

Both :mod:`trainer.gpu.teachers` and :mod:`trainer.gpu.student` train through :func:`train`, on the faces of
:mod:`trainer.gpu.faces`; it mirrors ``fit``'s recipe (:mod:`trainer.fit.loop`) where the two overlap: SGD-Nesterov,
warm-up then cosine, label smoothing, the weight average's decay (:func:`trainer.fit.ema.ema_decay`) and the
distillation loss (:class:`trainer.fit.distill.DistillationLoss`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import UserError
from trainer.fit.ema import ema_decay
from trainer.gpu.faces import Faces, augment


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


def train(model: nn.Module, recipe: Recipe, faces: Faces, labels: torch.Tensor, train_index: torch.Tensor,
          epochs: int | None, budget_seconds: float, log, distill: Distillation | None = None
          ) -> tuple[list[dict], nn.Module | None]:
    """Train ``model`` on ``train_index`` with SGD-Nesterov (no weight decay on biases and norms), warm-up then
    cosine to zero, mixup and label smoothing; with ``distill``, the loss of :class:`trainer.fit.distill.DistillationLoss`
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


class Average:
    """An exponential moving average of a model's weights, batch-norm statistics included, as
    :mod:`trainer.fit.averaging` keeps on the CPU (the same warming-up decay), updated after every step.

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
