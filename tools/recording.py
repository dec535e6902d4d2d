"""Recordings of emotion events: one flat row per face event, written by ``subscribe``, read by ``plot``.

One row schema for every format (JSONL, CSV, Parquet where pyarrow is installed), so a recording
can be converted or plotted without knowing how it was written. Files rotate at a size limit:
``out.jsonl``, ``out.1.jsonl``, ``out.2.jsonl``, ...
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

from edge import CLASS_NAMES
from edge.errors import UserError

COLUMNS = ["ts", "device", "event_id", "frame", "track", "label", "confidence",
           *(f"p_{c}" for c in CLASS_NAMES), "x", "y", "w", "h", "model_id", "model_version"]
TEXT_COLUMNS = {"device", "event_id", "label", "model_id", "model_version"}
FORMATS = (".jsonl", ".csv", ".parquet")


def event_row(device: str, event: dict) -> dict:
    """Flatten an ``events`` payload (docs/mqtt.md) into a recording row; missing fields stay empty."""
    scores = event.get("scores") or {}
    box = event.get("box") or [None] * 4
    model = event.get("model") or {}
    return {"ts": to_epoch(event.get("ts")), "device": device, "event_id": event.get("event_id"),
            "frame": event.get("frame"), "track": event.get("track_id"), "label": event.get("label"),
            "confidence": event.get("confidence"), **{f"p_{c}": scores.get(c) for c in CLASS_NAMES},
            **dict(zip("xywh", box)), "model_id": model.get("id"), "model_version": model.get("version")}


def to_epoch(value) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 time (UTC assumed when it names no zone)."""
    if isinstance(value, (int, float)) or value is None:
        return value
    stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def check_format(path: Path) -> None:
    if path.suffix not in FORMATS:
        raise UserError(f"cannot record to {path.name}: use a .jsonl, .csv or .parquet file")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("recording to .parquet needs pyarrow (pip install pyarrow); or use .jsonl or .csv") from None


class Recorder:
    """Appends rows to ``path``, starting the next numbered file when one reaches ``rotate_mb``."""

    def __init__(self, path: Path, rotate_mb: float | None = None, batch: int = 1000):
        check_format(path)
        self.path, self.limit, self.batch = path, rotate_mb * 2**20 if rotate_mb else None, batch
        self.index, self.rows, self.file, self.writer = 0, [], None, None
        self.files: list[Path] = []

    def current(self) -> Path:
        return self.path if self.index == 0 else self.path.with_suffix(f".{self.index}{self.path.suffix}")

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.path.suffix != ".parquet" or len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows (Parquet buffers into row groups; text formats write through)."""
        if not self.rows:
            return
        if self.file is None:
            self._open()
        if self.path.suffix == ".parquet":
            import pyarrow as pa

            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.writer.schema))
        elif self.path.suffix == ".csv":
            self.writer.writerows(self.rows)
        else:
            self.file.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in self.rows)
        self.file.flush()
        self.rows = []
        if self.limit and self.current().stat().st_size >= self.limit:
            self.close()
            self.index += 1

    def _open(self) -> None:
        path = self.current()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(path)
        if self.path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([(c, pa.string() if c in TEXT_COLUMNS else pa.float64()) for c in COLUMNS])
            self.file = open(path, "wb")
            self.writer = pq.ParquetWriter(self.file, schema)
        elif self.path.suffix == ".csv":
            self.file = open(path, "w", newline="")
            self.writer = csv.DictWriter(self.file, COLUMNS)
            self.writer.writeheader()
        else:
            self.file = open(path, "w")

    def close(self) -> None:
        self.flush()
        if self.path.suffix == ".parquet" and self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
        self.file = self.writer = None


def read_rows(paths: list[Path]) -> list[dict]:
    """All rows of one or more recording files, in file order."""
    rows = []
    for path in paths:
        check_format(path)
        if not path.is_file():
            raise UserError(f"recording {path} not found")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(path).to_pylist()
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                rows += [{k: v if k in TEXT_COLUMNS else float(v) if v else None for k, v in r.items()}
                         for r in csv.DictReader(f)]
        else:
            with open(path) as f:
                rows += [json.loads(line) for line in f if line.strip()]
    return rows

