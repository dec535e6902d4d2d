"""What the two GPU commands (``python -m trainer.gpu.teachers``, ``python -m trainer.gpu.student``) share: their
flags, their entry point's one-line errors, and the device they train on."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from edge.commandline import non_negative_float, non_negative_int, plain, positive_float, positive_int
from edge.errors import UserError
from trainer.gpu.loop import Recipe


def command_parser(prog: str, doc: str, out: str, minutes: float) -> argparse.ArgumentParser:
    """The flags both GPU commands take: the archive, the output, the budget, the recipe, a smoke run's sample."""
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog=prog, description=plain(doc), formatter_class=argparse.RawDescriptionHelpFormatter)
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
