"""Time-to-accuracy benchmark: validation accuracy against wall-clock minutes and epochs.

    python bench/time_to_accuracy.py --train --out runs/tta        # train the default FER2013 recipe, then report
    python bench/time_to_accuracy.py --run /work/runs/fer-release   # report an existing run

A warm-started run (``trainer fit --init PARENT``) is reported with its parent's epochs first, where the run
behind ``PARENT`` (a run directory, a checkpoint in one, or a bundle whose manifest names its run) is here.

Prints a table, writes ``time_to_accuracy.json`` and ``time_to_accuracy.png`` into the run
directory. Minutes are the sum of per-epoch wall-clock times (training + validation, as logged in
``history.csv``); data loading before the first epoch is not counted. Validation accuracy is
one pass, as Keras logs it (the averaged weights' with ``ema`` on); the run's ``report.json`` has
the best checkpoint's one-pass and flip-averaged figures. Teachers' minutes (``--teacher`` runs,
or the runs behind teacher bundles where they are on this machine) are counted separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TARGETS = (0.659, 0.71)  # the `fer` package's PublicTest accuracy; this project's goal


def summarize(run: Path, descendants: tuple[Path, ...] = ()) -> dict:
    """The run's epochs as rows; a warm-started run continues its parent's rows (where the run behind ``init``
    is on this machine), so minutes and epochs count all the training that went into the model.

    ``descendants`` are the runs that learned from this one: a bundle path in an older config (``--teacher
    models/NAME``) names whatever bundle is there now, possibly one of them, which is not followed."""
    from trainer.data.experiment import load_experiment
    from trainer.evaluate.reports import read_history
    from trainer.run.folder import RunDir

    cfg = RunDir(run).load_config()
    lineage = (*descendants, Path(run).resolve())
    parent_run = behind(cfg.init, lineage) if cfg.init else None
    parent = summarize(parent_run, lineage) if parent_run else None
    teachers = [summarize(t, lineage) for t in (behind(t, lineage) for t in cfg.distill.teachers) if t is not None]
    fold = RunDir(run).first_trained_fold()
    history = read_history(fold.history)
    monitor = "val_ema_accuracy" if cfg.ema else "val_accuracy"
    n_train = len(load_experiment(cfg, log=lambda *a: None).folds[0].train)
    rows = list(parent["epochs"]) if parent else []
    epoch0, total = len(rows), 60 * rows[-1]["minutes"] if rows else 0.0
    for e, a, lr, seconds in zip(history["epoch"], history[monitor], history["lr"], history["seconds"]):
        total += seconds
        rows.append({"epoch": epoch0 + int(e) + 1, "minutes": round(total / 60, 2), "val_accuracy": round(a, 4),
                     "lr": lr, "img_per_s": round(n_train / seconds, 1)})
    reached = {f"{t:.3f}": next(({"epoch": r["epoch"], "minutes": r["minutes"]} for r in rows if r["val_accuracy"] >= t), None)
               for t in TARGETS}
    report = json.loads(fold.report.read_text()) if fold.done else {}
    return {"run": str(run), "dataset": cfg.dataset, "epochs_planned": epoch0 + cfg.epochs, "train_images": n_train,
            "warm_start": {"run": parent["run"], "epochs": epoch0} if parent else None,
            "teachers": [{"run": t["run"], "minutes": t["epochs"][-1]["minutes"]} for t in teachers],
            "teacher_minutes": round(sum(t["epochs"][-1]["minutes"] + t["teacher_minutes"] for t in teachers), 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "best_val_accuracy": max(r["val_accuracy"] for r in rows), "best_checkpoint_accuracy": report.get("accuracy"),
            "best_checkpoint_flip_accuracy": report.get("flip_accuracy"),
            "mean_img_per_s": round(n_train * len(rows) / (total or 1), 1), "reached": reached, "epochs": rows}


def behind(model: str, descendants: tuple[Path, ...] = ()) -> Path | None:
    """The run directory behind a teacher or an ``init``: a run itself, the run a checkpoint file lies in
    (``RUN/FOLD/best.weights.h5``), or the run a bundle's manifest names; None where it is not here, or is
    one of ``descendants``."""
    from edge.model.bundle import load_bundle
    from trainer.run.folder import RunDir, is_bundle

    path = Path(model)
    if is_bundle(path):
        run = load_bundle(path).manifest.get("training", {}).get("run")
        if not isinstance(run, str):
            return None
        path = Path(run)
    elif path.suffix == ".h5":
        path = path.resolve().parents[1]
    if not RunDir(path).is_run or path.resolve() in descendants:
        return None
    return path


def plot(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["minutes"] for r in summary["epochs"]], [r["val_accuracy"] for r in summary["epochs"]], marker=".")
    if summary["warm_start"]:
        restart = summary["epochs"][summary["warm_start"]["epochs"] - 1]["minutes"]
        ax.axvline(restart, color="grey", lw=0.8)
        ax.text(restart, ax.get_ylim()[0], " warm restart", fontsize=8, color="grey", va="bottom")
    for target in TARGETS:
        ax.axhline(target, ls="--", color="grey", lw=0.8)
        ax.text(0, target, f" {target:.1%}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("wall-clock minutes (training + validation)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"time to accuracy, {summary['dataset']} ({summary['machine']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="existing run directory to report")
    parser.add_argument("--train", action="store_true", help="train the default FER2013 recipe first (seed 0)")
    parser.add_argument("--out", type=Path, default=Path("runs/time-to-accuracy"))
    parser.add_argument("--data", default=os.environ.get("TRAINER_DATA", "../shared/data"))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    args = parser.parse_args()
    run = args.run or args.out
    if args.train:
        command = ["trainer", "fit", "--dataset", "fer2013", "--data", args.data, "--seed", "0", "--out", str(run)]
        command += ["--epochs", str(args.epochs)] if args.epochs else []
        command += ["--resume"] if run.exists() else []
        if subprocess.run(command).returncode:
            return 1
    if not (run / "config.yaml").exists():
        print(f"time_to_accuracy: error: {run} is not a run directory (pass --run RUN_DIR or --train)", file=sys.stderr)
        return 2
    summary = summarize(run)
    print(f"{'epoch':>5} {'minutes':>8} {'val acc':>8} {'img/s':>7}")
    for r in summary["epochs"]:
        print(f"{r['epoch']:>5} {r['minutes']:>8.1f} {r['val_accuracy']:>8.4f} {r['img_per_s']:>7.0f}")
    for target, hit in summary["reached"].items():
        print(f"{float(target):.1%}: " + (f"epoch {hit['epoch']}, {hit['minutes']:.1f} min" if hit else "not reached"))
    print(f"best {summary['best_val_accuracy']:.4f}; best checkpoint one pass {summary['best_checkpoint_accuracy']}, "
          f"flip-averaged {summary['best_checkpoint_flip_accuracy']}; {summary['mean_img_per_s']:.0f} img/s on "
          f"{summary['machine']}")
    if summary["teachers"]:
        print(f"teachers behind it: {summary['teacher_minutes']:.1f} more minutes "
              f"({', '.join(t['run'] for t in summary['teachers'])})")
    (run / "time_to_accuracy.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, run / "time_to_accuracy.png")
    print(f"wrote {run / 'time_to_accuracy.json'} and {run / 'time_to_accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
