"""The GPU trainers' faces: a faces archive on the device, augmented for training, viewed and scored for testing.

The augmentation and views mirror the trainer's own (:mod:`trainer.data.augment`, :mod:`trainer.model.views`):
random 40 px crops of the 48 px faces with flips, small rotations and zooms, random erasing and
mixup for training; the centre crop, or the centre and four corner crops and their mirrors
(``flip-crops``), for scoring. Everything runs batched on the device: a lent GPU is fed from
memory, not from a CPU input pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.gpu.handoff import FacesArchive, read_faces
from trainer.model.views import UNCROPPED_SHIFT

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


@torch.no_grad()
def predict(model: nn.Module, faces: Faces, index: torch.Tensor, tta: str, batch: int = 1024) -> np.ndarray:
    """Softmax probabilities averaged over the views (float32, as :func:`trainer.evaluate.predict.averaged`)."""
    model.eval()
    out = []
    for start in range(0, len(index), batch):
        x = faces.batch(index[start:start + batch])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            probs = [F.softmax(model(faces.model_input(v)).float(), dim=1) for v in views(x, tta)]
        out.append(torch.stack(probs).mean(0).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())
