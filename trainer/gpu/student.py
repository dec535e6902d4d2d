"""The shipped network trained on a lent GPU, its weights brought back under the Keras model's layer names.

    trainer faces --dataset fer2013 --data ../shared/data --set model.width=48 --set model.crop=40 \
        --out .handoff/faces.npz                                                                   # here
    python -m trainer.gpu.student .handoff/faces.npz --teacher teachers.npz --minutes 4 --out student.npz   # GPU
    trainer import-weights student.npz --out runs/fer-gpu-student                                  # here
    trainer evaluate runs/fer-gpu-student --split PublicTest; trainer export runs/fer-gpu-student ...

Why: on 2 CPU cores an epoch of the width-48 model takes 90 s, so this project's models are chains
of short restarts; the published recipes train 250-300 epochs in one cycle, which a GPU does in
minutes. The lent machine has no TensorFlow, so the network of :func:`trainer.model.resnet.build_model`
(basic-block ResNet with CBAM in every block, 3x3 stem, optional 2x2 pool) is written here again
in PyTorch, layer for layer, with TensorFlow's conventions where they differ from PyTorch's
(``same`` padding puts the odd pixel after, batch-norm epsilon 1e-3), and every weight is saved
under its Keras layer's name in Keras's order and layout. ``trainer import-weights`` loads them
into the Keras model, which the tests hold to the same logits as this one.

Training is :func:`trainer.gpu.loop.train` (the recipe of :mod:`trainer.gpu.teachers`), with an
optional teacher labels file for distillation; the weight average at the last step is kept (or,
with ``--ema 0``, the last weights); no checkpoint is selected on the validation images, which
are only scored.
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

from edge.commandline import non_negative_float, positive_float
from edge.errors import UserError
from trainer.gpu.command import command_parser, device, device_name, recipe_of, run_command
from trainer.gpu.faces import AUGMENT, CROP, accuracy, load, predict
from trainer.gpu.handoff import StudentWeights, read_labels, soften, write_student
from trainer.gpu.loop import Distillation, train

BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}
"""Basic blocks per stage of the ported depths: the shipped ResNet-18 and the fast variant's ResNet-10 (the rows of
:data:`trainer.model.resnet.STAGES` with basic blocks; that module imports TensorFlow, which this machine lacks)."""


def same_padding(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's ``padding="same"``: the output is ceil(size / stride), and an odd total pad goes after."""
    size = x.shape[-1]
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class StudentNet(nn.Module):
    """:func:`trainer.model.resnet.build_model` for depth 10 or 18 with CBAM, in PyTorch, on input already cropped to
    ``CROP``.

    Every layer with weights is ``self.layer[<Keras layer name>]``, so export is a loop over names."""

    def __init__(self, model: dict):
        super().__init__()
        self.cfg, self.stages = model, BLOCKS[model["depth"]]
        bn_momentum = 1.0 - model["bn_momentum"]  # Keras keeps momentum of the old value, PyTorch of the new
        layer: dict[str, nn.Module] = {}

        def conv_bn(name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
            layer[f"{name}_conv"] = nn.Conv2d(cin, cout, kernel, stride, bias=False)
            layer[f"{name}_bn"] = nn.BatchNorm2d(cout, eps=1e-3, momentum=bn_momentum)

        width = model["width"]
        conv_bn("stem", 1, width, 3)
        cin = width
        for stage, count in enumerate(self.stages):
            cout = width * 2**stage
            for i in range(count):
                name, stride = f"s{stage + 1}b{i + 1}", 2 if stage > 0 and i == 0 else 1
                conv_bn(f"{name}_1", cin, cout, 3, stride)
                conv_bn(f"{name}_2", cout, cout, 3)
                hidden = max(model["mlp_min_hidden"], cout // model["reduction"])
                layer[f"{name}_cbam_ca_mlp1"] = nn.Conv2d(cout, hidden, 1)
                layer[f"{name}_cbam_ca_mlp2"] = nn.Conv2d(hidden, cout, 1)
                layer[f"{name}_cbam_sa_conv"] = nn.Conv2d(2, 1, 7)
                if stride != 1 or cin != cout:
                    conv_bn(f"{name}_down", cin, cout, 1, stride)
                cin = cout
        layer["logits"] = nn.Linear(cin, model["num_classes"])
        self.layer = nn.ModuleDict(layer)
        self.dropout = nn.Dropout(model["dropout"])

    def conv_bn(self, x: torch.Tensor, name: str, relu: bool = True) -> torch.Tensor:
        conv = self.layer[f"{name}_conv"]
        x = self.layer[f"{name}_bn"](conv(same_padding(x, conv.kernel_size[0], conv.stride[0])))
        return F.relu(x) if relu else x

    def cbam(self, x: torch.Tensor, name: str) -> torch.Tensor:
        squeeze, excite = self.layer[f"{name}_ca_mlp1"], self.layer[f"{name}_ca_mlp2"]
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])  # one MLP call for both
        avg, mx = excite(F.relu(squeeze(pooled))).chunk(2)
        x = x * torch.sigmoid(avg + mx)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.layer[f"{name}_sa_conv"](same_padding(pooled, 7, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_bn(x, "stem")
        if self.cfg["stem"] == "3x3-pool":
            x = F.max_pool2d(x, 2)
        for stage, count in enumerate(self.stages):
            for i in range(count):
                name = f"s{stage + 1}b{i + 1}"
                y = self.conv_bn(x, f"{name}_1")
                y = self.cbam(self.conv_bn(y, f"{name}_2", relu=False), f"{name}_cbam")
                shortcut = self.conv_bn(x, f"{name}_down", relu=False) if f"{name}_down_conv" in self.layer else x
                x = F.relu(shortcut + y)
        return self.layer["logits"](self.dropout(x.mean((2, 3))))

    def keras_weights(self) -> dict[str, list[np.ndarray]]:
        """Every layer's weights as Keras's ``get_weights()`` returns them (kernels HWIO, dense (in, out))."""
        out = {}
        for name, module in self.layer.items():
            if isinstance(module, nn.Conv2d):
                arrays = [module.weight.permute(2, 3, 1, 0)] + ([module.bias] if module.bias is not None else [])
            elif isinstance(module, nn.BatchNorm2d):
                arrays = [module.weight, module.bias, module.running_mean, module.running_var]
            else:
                arrays = [module.weight.t(), module.bias]
            out[name] = [a.detach().float().cpu().numpy().copy() for a in arrays]
        return out


def check_model(model: dict) -> None:
    """The student must be what :class:`StudentNet` ports and what the GPU loop feeds (``CROP`` px crops)."""
    if model["depth"] not in BLOCKS or not model["cbam"] or model["stem"] not in ("3x3-pool", "3x3"):
        raise UserError(f"the GPU student ports ResNet-{' and ResNet-'.join(map(str, BLOCKS))} with CBAM and a 3x3 stem "
                        "(with or without its pool) only")
    if model["crop"] != CROP:
        raise UserError(f"the GPU student trains on {CROP} px crops: model.crop must be {CROP}")
    if not (model["width"] >= 1 and model["reduction"] >= 1 and model["mlp_min_hidden"] >= 1 and 0 <= model["dropout"] < 1):
        raise UserError("model.width, reduction and mlp_min_hidden must be positive and dropout in [0, 1)")


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object of model keys, e.g. '{\"width\": 64}'")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m trainer.gpu.student", __doc__.split("\n\n")[2], "weights file",
                                   minutes=4.0)
    parser.add_argument("--model", type=json_object, default={}, help="model keys over the archive's (its run "
                        "configuration's, `trainer faces --set model.width=48 ...`), as JSON, e.g. '{\"width\": 64}'")
    parser.add_argument("--teacher", type=Path, help="teacher labels file (from trainer.gpu.teachers) to distil from")
    parser.add_argument("--temperature", type=positive_float, default=4.0)
    parser.add_argument("--alpha", type=non_negative_float, default=0.5,
                        help="weight of the teacher's term (default 0.5, as trainer fit's distill.alpha)")
    args = parser.parse_args(argv)
    if args.alpha > 1:
        parser.error("--alpha is a weight in [0, 1]")

    def log(message: str) -> None:
        print(message, flush=True)

    torch.manual_seed(args.seed)
    where = device()
    data = load(args.faces, where, args.limit, args.seed)
    y, y_val = data.train_labels, data.archive.val_labels
    unknown = sorted(set(args.model) - set(data.archive.model))
    if unknown:
        raise UserError(f"--model: unknown keys {unknown}; the network's keys are {sorted(data.archive.model)}")
    wrong = sorted(k for k, v in args.model.items() if type(v) is not type(data.archive.model[k]))
    if wrong:
        raise UserError(f"--model: {wrong} must have the types of the archive's values "
                        f"({', '.join(f'{k}: {data.archive.model[k]!r}' for k in wrong)})")
    model_cfg = data.archive.model | args.model
    check_model(model_cfg)
    distill = None
    if args.teacher:
        labels = read_labels(args.teacher)
        labels.check(args.teacher, data.archive.digest, len(data.archive.train), data.archive.preprocess,
                     model_cfg["num_classes"])
        soft = soften(labels.probabilities[data.keep], args.temperature)
        targets = torch.zeros(len(data.faces), soft.shape[1], device=where)
        targets[:len(y)] = torch.from_numpy(soft).to(where)
        distill = Distillation(targets, args.temperature, args.alpha)
        log(f"distilling from {args.teacher} ({labels.description}) at T={args.temperature}, alpha={args.alpha}")
    log(f"{data.archive.source}: {len(y)} training, {len(y_val)} validation faces on {device_name(where)} "
        f"(torch {torch.__version__}); model {model_cfg}")
    model = StudentNet(model_cfg).to(where, memory_format=torch.channels_last)
    started = time.perf_counter()
    recipe = recipe_of(args)
    history, averaged = train(model, recipe, data.faces, data.labels, data.train_index, args.epochs,
                                     args.minutes * 60, log, distill)
    kept = model if averaged is None else averaged

    def scores_of(network: nn.Module) -> dict[str, float]:
        return {tta: accuracy(predict(network, data.faces, data.val_index, tta), y_val)
                for tta in ("none", "flip-crops")}

    scores, last = scores_of(kept), None if averaged is None else scores_of(model)
    log(f"validation {scores['none']:.2%} one pass, {scores['flip-crops']:.2%} ten views ("
        f"{'the weight average' if last else 'last epoch'}, float, bf16 autocast)"
        + (f"; the last epoch's weights {last['none']:.2%} and {last['flip-crops']:.2%}" if last else "")
        + f"; {len(history)} epochs in {(time.perf_counter() - started) / 60:.1f} min")
    details = {"recipe": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                          if k not in ("faces", "out", "model")}
                         | {"warmup": recipe.warmup, "augment": AUGMENT | {"mixup": args.mixup}},
               "device": device_name(where), "torch": torch.__version__, "history": history,
               "val_accuracy": scores, "val_accuracy_last_epoch": last or scores, "dataset": data.archive.dataset,
               "protocol": data.archive.protocol, "fold": data.archive.fold}
    write_student(args.out, StudentWeights(kept.keras_weights(), model_cfg, data.archive.preprocess, details))
    log(f"wrote {args.out}")
    print(json.dumps(scores))
    return 0



if __name__ == "__main__":
    sys.exit(run_command(main, "python -m trainer.gpu.student"))
