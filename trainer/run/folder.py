"""One home for a run folder: what ``trainer fit`` writes and ``evaluate``, ``export``, ``--init``,
``--teacher`` and the benchmarks read. No other module spells a file name of a run.

    RUN/config.yaml                 the resolved configuration (everything else rebuilds from it)
    RUN/summary.json, confusion.png accuracy pooled over the folds
    RUN/export/                     ``trainer export``'s float32, PTQ and QAT models and parity.json
    RUN/<fold>/best.weights.h5      the selected checkpoint (best validation accuracy; the averaged
                                    weights' best when ``ema`` is on): what is evaluated and exported
    RUN/<fold>/last.weights.h5      the weights after the latest epoch (a warm restart from the cycle's end)
    RUN/<fold>/ema.weights.h5       the moving average after the latest epoch (``ema`` on; resumed from)
    RUN/<fold>/history.csv          per-epoch loss, accuracy, LR, seconds
    RUN/<fold>/backup/              Keras BackupAndRestore state (weights, optimizer, epoch) for --resume
    RUN/<fold>/teachers/            cached teacher probabilities over the fold's training images
    RUN/<fold>/report.json          test report of the best checkpoint; its presence marks the fold done
    RUN/<fold>/curves.png, confusion.png
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from edge.errors import UserError
from edge.model.bundle import MANIFEST_FILE, load_bundle
from edge.protocol.flash import FLOAT_WEIGHTS_FILE
from trainer.run.config import TrainConfig, config_from_dict


@dataclass(frozen=True)
class FoldDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best(self) -> Path:
        return self.path / "best.weights.h5"

    @property
    def last(self) -> Path:
        return self.path / "last.weights.h5"

    @property
    def ema(self) -> Path:
        return self.path / "ema.weights.h5"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def teachers(self) -> Path:
        return self.path / "teachers"

    @property
    def report(self) -> Path:
        return self.path / "report.json"

    @property
    def imported(self) -> Path:
        """How a network trained elsewhere (``trainer import-weights``) was trained and scored there."""
        return self.path / "imported.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.png"

    @property
    def done(self) -> bool:
        return self.report.exists()


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.png"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def averaged(self) -> Path:
        """A soup's record of the runs it averages (``trainer average``)."""
        return self.path / "averaged.json"

    @property
    def is_run(self) -> bool:
        return self.config.is_file()

    @property
    def has_run(self) -> bool:
        """Anything in the folder (a run to resume, or something else that a new run must not mix with)."""
        return self.path.exists() and any(self.path.iterdir())

    @property
    def started(self) -> bool:
        """Anything beyond the configuration. A fit that failed before training (unreadable data, say) leaves only
        its config.yaml, so the same command, or a corrected one, starts it again instead of asking for --resume."""
        return self.path.exists() and any(p != self.config for p in self.path.iterdir())

    def fold(self, name: str) -> FoldDir:
        return FoldDir(self.path / name)

    def trained_folds(self) -> list[FoldDir]:
        folds = [FoldDir(p) for p in sorted(self.path.iterdir()) if p.is_dir()] if self.path.is_dir() else []
        return [f for f in folds if f.best.exists()]

    def first_trained_fold(self) -> FoldDir:
        folds = self.trained_folds()
        if not folds:
            raise UserError(f"{self.path} has no trained fold (no <fold>/best.weights.h5): train it first")
        return folds[0]

    def fold_or_first(self, name: str) -> FoldDir:
        """The fold of that name where this run has it trained, else its first trained fold (a single-fold run)."""
        fold = self.fold(name)
        return fold if fold.best.exists() else self.first_trained_fold()

    def load_config(self) -> TrainConfig:
        if not self.is_run:
            raise UserError(f"{self.path} is neither a run directory (no config.yaml) nor a model bundle (no {MANIFEST_FILE})")
        return config_from_dict(yaml.safe_load(self.config.read_text()))

    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def is_bundle(path: Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_config(target: Path) -> TrainConfig | None:
    """The configuration a run folder or a bundle's manifest recorded; None for anything else (e.g. a bare checkpoint)."""
    target = Path(target)
    if is_bundle(target):
        recorded = load_bundle(target).manifest["training"].get("config")  # the manifest schema requires "training"
        if recorded is not None and not isinstance(recorded, dict):
            raise UserError(f"bundle {target}: training.config in its manifest is not a mapping")
        return config_from_dict(recorded) if recorded else None
    return RunDir(target).load_config() if RunDir(target).is_run else None


def init_weights_path(init: Path) -> Path:
    """The checkpoint a warm start loads: a ``.weights.h5`` file, a run's first trained fold's best, or a
    bundle's float weights (checked against the sha256 its manifest carries, which its signature covers)."""
    init = Path(init)
    if init.is_file():
        return init
    if is_bundle(init):
        return bundle_float_weights(init)
    if not RunDir(init).trained_folds():
        raise UserError(f"init {init} is neither a .weights.h5 file, a run directory with a trained fold nor a bundle")
    return RunDir(init).first_trained_fold().best


def bundle_float_weights(bundle: Path) -> Path:
    entry = load_bundle(bundle).manifest.get("float_weights")
    path = Path(bundle) / FLOAT_WEIGHTS_FILE
    if not entry or not path.is_file():
        raise UserError(f"bundle {bundle} ships no {FLOAT_WEIGHTS_FILE} (exported before bundles carried float "
                        "weights): warm-start from its run directory, or re-export it")
    if file_sha256(path) != entry.get("sha256"):
        raise UserError(f"bundle {bundle}: {FLOAT_WEIGHTS_FILE} does not match the checksum in its manifest "
                        "(corrupt or tampered copy)")
    return path
