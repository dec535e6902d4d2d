"""``trainer average``: a uniform model soup, the mean of the weights of runs fine-tuned from one start.

Why: runs fine-tuned from the same weights (``--init``) at a small learning rate stay in one basin
of the loss, so the mean of their weights is a network of that basin too, and it usually scores
better than each of them: a cheap share of an ensemble's gain that still costs one pass on the
device (Wortsman et al. 2022, "Model soups"). Networks trained from different starts have no such
relation (their units are permuted), so the runs must name the same ``init``. Every weight is
averaged, batch-norm statistics included, as :mod:`trainer.fit.averaging` does within one run. (Measured
here on two pairs of polishes of the 2026.11.26.4 network: one pass below both members each time,
flip-averaged once above both and once between them; README *At length*. Score a soup before
shipping it.)

The soup is a run folder like any other (its config is the first run's; ``averaged.json`` lists
the runs), scored as ``fit`` scores a run, so ``evaluate``, ``export``, ``--init`` and
``--teacher`` take it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.errors import UserError
from trainer.data.experiment import load_experiment
from trainer.evaluate.predict import load_trained
from trainer.evaluate.reports import write_json
from trainer.evaluate.scoring import evaluate_fold, summarize
from trainer.run.config import TrainConfig
from trainer.run.folder import RunDir, file_sha256

SAME = ("dataset", "protocol", "contempt", "dedup", "prune_no_face", "detector", "model", "preprocess", "init")
"""What the runs of a soup must share: the data and folds they were scored on, the network and its input, the start."""


def check_ingredients(runs: list[Path]) -> list[TrainConfig]:
    """The runs' configurations, refused in one line unless they are one network fine-tuned from one start."""
    if len(runs) < 2:
        raise UserError("a soup averages at least two runs")
    if len(set(map(Path.resolve, runs))) < len(runs):
        raise UserError("the same run is given twice: each run is one ingredient")
    configs = [RunDir(run).load_config() for run in runs]
    if not configs[0].init:
        raise UserError(f"{runs[0]} was not fine-tuned (no init): only runs fine-tuned from one start average into "
                        "a working network")
    for run, cfg in zip(runs[1:], configs[1:]):
        differ = [key for key in SAME if getattr(cfg, key) != getattr(configs[0], key)]
        if differ:
            raise UserError(f"{run} differs from {runs[0]} in {', '.join(differ)}: a soup's runs are one network, "
                            "fine-tuned from one start on one dataset")
    return configs


def average_runs(runs: list[Path], out: Path, data: str | None = None, log=print) -> dict:
    """Average the best checkpoints of ``runs`` fold by fold into the run ``out``; score it; return its summary."""
    runs, result = [Path(r) for r in runs], RunDir(out)
    configs = check_ingredients(runs)
    if result.has_run:
        raise UserError(f"run directory {out} is not empty: choose another --out")
    cfg = configs[0] if data is None else replace(configs[0], data=data)
    experiment = load_experiment(cfg, log)
    checkpoints = {fold.name: [RunDir(run).fold(fold.name).best for run in runs] for fold in experiment.folds}
    missing = [path for paths in checkpoints.values() for path in paths if not path.is_file()]
    if missing:  # before anything is written
        raise UserError(f"{missing[0]} is missing: every run must have trained every fold of {cfg.dataset}")
    result.write_config(cfg)
    reports = []
    for fold in experiment.folds:
        weights = [load_trained(c, path).get_weights() for c, path in zip(configs, checkpoints[fold.name])]
        model = load_trained(cfg, checkpoints[fold.name][0])
        model.set_weights([np.mean(np.stack(arrays).astype(np.float64), 0).astype(arrays[0].dtype)
                           for arrays in zip(*weights)])
        fold_dir = result.fold(fold.name)
        fold_dir.path.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(fold_dir.best))
        reports.append(evaluate_fold(cfg, experiment, fold, fold_dir))
        log(f"{fold.name}: averaged {len(runs)} runs")
    write_json(result.averaged, {"runs": [str(r) for r in runs],
                                 "checkpoints": {name: [file_sha256(path) for path in paths]
                                                 for name, paths in checkpoints.items()}})
    return summarize(cfg, experiment, reports, result, log)
