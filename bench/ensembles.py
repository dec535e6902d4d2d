"""Ensemble benchmark: how accurate the models on this machine are together, the ceiling of distilling them.

    python bench/ensembles.py runs/fer-widen48 runs/fer-widen64 runs/fer-seed1 --split PublicTest
    python bench/ensembles.py runs/fer-crop40-mixup30 runs/fer-mixup-restart2 --soup --json soup.json

Each model (a run directory's best checkpoint, or a bundle through LiteRT) scores the split's images
once per test-time averaging (one pass, flip, ten views); every combination of two or more models is
then scored by averaging their probabilities. A student distilled from teachers rarely beats their
ensemble, so the best row bounds what `trainer fit --teacher ...` can ship in one pass.

``--soup`` scores weight averages instead (every combination's uniform average of the checkpoints'
weights, one network, one pass): a free ensemble where the runs share architecture and lineage.

Prints a table (best combinations of each size first) and writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

VIEWS = ("none", "flip", "flip-crops")
MOST = {"ensemble": 12, "soup": 5}
"""Models at most: 2^n - 1 combinations, each soup scored by a network pass (an ensemble by a mean)."""


def images(model: Path, data: str | None, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The split's faces, labels and name, as ``trainer evaluate --split`` scores ``model`` (default: FER2013's
    PublicTest, another dataset's every image)."""
    from trainer.evaluate.evaluate import default_split, scoring_experiment, select

    cfg, experiment, _ = scoring_experiment(model, None, data, log=lambda *a: None)
    split = split or default_split(cfg)
    index = select(experiment, split)
    return experiment.faces[index], experiment.labels[index], split


def ensembles(probabilities: dict[str, dict[str, np.ndarray]], labels: np.ndarray) -> list[dict]:
    """Every combination of the models (singles included), scored with their probabilities averaged, per view."""
    names = list(probabilities)
    rows = []
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            rows.append({"models": list(combo), **{
                view: float(np.mean(np.mean([probabilities[n][view] for n in combo], axis=0).argmax(1) == labels))
                for view in VIEWS}})
    return rows


def scored(models: list[Path], faces: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Each model's probabilities for each view."""
    from edge.errors import UserError
    from trainer.evaluate.predict import open_scorer, target_config

    if len({target_config(m).model.num_classes for m in models}) > 1:
        raise UserError("the models predict different numbers of classes: an ensemble averages the same classes")
    probabilities = {}
    for model in models:
        print(f"scoring {model} on {len(faces)} images ({', '.join(VIEWS)})", file=sys.stderr)
        probabilities[str(model)] = {view: open_scorer(model, tta=view).predict(faces) for view in VIEWS}
    return probabilities


def soup_check(models: list[Path]) -> None:
    """Weight averages need float checkpoints of one network."""
    from edge.errors import UserError
    from trainer.evaluate.predict import target_config
    from trainer.run.folder import is_bundle

    if any(is_bundle(m) for m in models):
        raise UserError("--soup averages float weights: pass run directories, not bundles")
    first, *others = (target_config(m).model for m in models)
    if any(other != first for other in others):
        raise UserError("--soup needs runs of one architecture (their model settings differ)")


def soups(models: list[Path], faces: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Every combination of the runs, scored as one network with their checkpoints' weights averaged."""
    from trainer.evaluate.predict import keras_predictor, load_trained, target_config
    from trainer.run.folder import RunDir

    soup_check(models)
    configs = [target_config(m) for m in models]
    weights = [load_trained(c, RunDir(m).first_trained_fold().best).get_weights() for c, m in zip(configs, models)]
    network = load_trained(configs[0], RunDir(models[0]).first_trained_fold().best)
    rows = []
    for size in range(1, len(models) + 1):
        for combo in itertools.combinations(range(len(models)), size):
            network.set_weights([np.mean([weights[i][j] for i in combo], axis=0) for j in range(len(weights[0]))])
            rows.append({"models": [str(models[i]) for i in combo], **{
                view: float(np.mean(keras_predictor(network, configs[0], view)(faces).argmax(1) == labels))
                for view in VIEWS}})
    return rows


def table(rows: list[dict], per_size: int) -> list[dict]:
    """Singles, then each size's ``per_size`` best combinations (by one pass, then ten views)."""
    by_size = itertools.groupby(rows, key=lambda r: len(r["models"]))
    return [r for size, group in by_size
            for r in (list(group) if size == 1 else sorted(group, key=lambda r: (-r["none"], -r["flip-crops"]))[:per_size])]


def main() -> int:
    from edge.commandline import output_file, positive_int
    from edge.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, metavar="RUN_DIR_OR_BUNDLE")
    parser.add_argument("--data", default=os.environ.get("TRAINER_DATA"), help="dataset path (default: the first model's)")
    parser.add_argument("--split", choices=("Training", "PublicTest", "PrivateTest", "all"),
                        help="default: FER2013's PublicTest, another dataset's every image")
    parser.add_argument("--soup", action="store_true", help="average the runs' weights instead of their probabilities")
    parser.add_argument("--show", type=positive_int, default=3,
                        help="best combinations printed per size (default 3; the JSON has all)")
    parser.add_argument("--json", type=output_file, help="write every row here")
    args = parser.parse_args()
    kind = "soup" if args.soup else "ensemble"
    if len(set(args.models)) != len(args.models):
        parser.error("a model is named twice")
    if len(args.models) > MOST[kind]:
        parser.error(f"at most {MOST[kind]} models for a {kind} ({2 ** MOST[kind] - 1} combinations)")
    try:
        if args.soup:
            soup_check(args.models)
        faces, labels, split = images(args.models[0], args.data, args.split)
        rows = soups(args.models, faces, labels) if args.soup else ensembles(scored(args.models, faces), labels)
    except UserError as e:
        print(f"ensembles: error: {e}", file=sys.stderr)
        return 2
    print(f"{kind} on {split} ({len(faces)} images): one pass, flip-averaged, ten views")
    for r in table(rows, args.show):
        print(f"{r['none']:7.2%} {r['flip']:7.2%} {r['flip-crops']:7.2%}  {' + '.join(Path(m).name for m in r['models'])}")
    if args.json:
        report = {"split": split, "images": len(faces), "kind": kind,
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}", "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
