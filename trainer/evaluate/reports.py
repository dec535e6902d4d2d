"""Metrics, printed tables, JSON reports and plots (confusion matrix, training curves)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from edge import CLASS_NAMES  # noqa: E402


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes=CLASS_NAMES) -> dict:
    """accuracy, per-class precision/recall/F1/support, macro F1, confusion (rows: true) and n."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true), np.asarray(y_pred)), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    support = confusion.sum(1)
    present = support > 0
    return {
        "n": int(confusion.sum()),
        "accuracy": float(tp.sum() / max(1, confusion.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }


def format_report(report: dict, title: str) -> str:
    lines = [title, f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in report["per_class"].items():
        if row["support"]:
            lines.append(f"{name:<10}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10d}")
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['n']} images, macro F1 {report['macro_f1']:.4f}")
    if "flip_accuracy" in report:
        lines.append(f"flip-averaged: accuracy {report['flip_accuracy']:.4f}")
    copies = report.get("without_training_copies")
    if copies:
        lines.append(f"without the {copies['excluded']} images that have an exact copy in Training: accuracy "
                     f"{copies['accuracy']:.4f} on {copies['n']} images, macro F1 {copies['macro_f1']:.4f}")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot_confusion(report: dict, path: Path, title: str) -> None:
    confusion = np.array(report["confusion"], dtype=float)
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    classes = report["classes"]
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rows[i, j]:.2f}\n({int(confusion[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {report['accuracy']:.3f} (n={report['n']}), rows normalized")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_history(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}


def plot_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training vs validation."""
    epochs = [e + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history.get(metric, []), label="train")
        ax.plot(epochs, history.get(f"val_{metric}", []), label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
