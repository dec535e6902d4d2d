"""Turn a recording into pictures: when each device saw which emotion, and how often overall.

The timeline's x-axis is clock time in this machine's time zone (named in the axis label), so a
moment on the plot can be matched with what happened in the room; ticks adapt to the span (seconds
to days) through matplotlib's concise date formatter."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402  (the backend must be chosen first)
import matplotlib.pyplot as plt  # noqa: E402

from edge import CLASS_NAMES  # noqa: E402
from edge.errors import UserError  # noqa: E402
from tools.recording import read_rows  # noqa: E402

COLORS = dict(zip(CLASS_NAMES, plt.get_cmap("tab10").colors))


def plot(recordings: list[Path], out: Path) -> list[Path]:
    """Write ``timeline.png`` (label over time per device, dot size by confidence) and ``distribution.png``."""
    rows = [r for r in read_rows(recordings) if r.get("ts") is not None and r.get("label") in COLORS]
    if not rows:
        raise UserError(f"no events with a time and a label in {', '.join(map(str, recordings))}")
    out.mkdir(parents=True, exist_ok=True)
    devices = sorted({r["device"] for r in rows})
    return [_timeline(rows, devices, out / "timeline.png"), _distribution(rows, devices, out / "distribution.png")]


def _timeline(rows: list[dict], devices: list[str], path: Path) -> Path:
    zone = datetime.now().astimezone().tzinfo
    fig, axes = plt.subplots(len(devices), 1, figsize=(10, 1.8 + 1.6 * len(devices)), sharex=True, squeeze=False)
    for ax, device in zip(axes[:, 0], devices):
        mine = [r for r in rows if r["device"] == device]
        ax.scatter([datetime.fromtimestamp(r["ts"], zone) for r in mine], [CLASS_NAMES.index(r["label"]) for r in mine],
                   s=[8 + 40 * (r.get("confidence") or 0) for r in mine], c=[COLORS[r["label"]] for r in mine])
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_title(device, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    locator = mdates.AutoDateLocator(tz=zone)
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=zone))
    axes[-1, 0].set_xlabel(f"time ({datetime.now(zone).tzname()})")
    return _save(fig, path)


def _distribution(rows: list[dict], devices: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.5 * len(devices)))
    left = [0.0] * len(devices)
    counts = {d: Counter(r["label"] for r in rows if r["device"] == d) for d in devices}
    for label in CLASS_NAMES:
        shares = [counts[d][label] / sum(counts[d].values()) for d in devices]
        ax.barh(devices, shares, left=left, color=COLORS[label], label=label)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of face events")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
