"""Recordings of emotion events: one flat row per face event, written by ``subscribe``, read by ``plot``.

One row schema for every format (JSONL, CSV, Parquet where pyarrow is installed), so a recording
can be converted or plotted without knowing how it was written. Files rotate at a size limit:
``out.jsonl``, ``out.1.jsonl``, ``out.2.jsonl``, ...

A recording never loses what was written to it, because operators restart subscribers:

- A restart carries on: text formats are appended to the newest file (a new file only when it is
  full), and :meth:`Recorder.recent_ids` hands the subscriber the event ids already recorded, so
  de-duplication holds across the restart.
- ``subscribe`` acknowledges a message to the broker only after :meth:`Recorder.flush` wrote its row,
  so a killed subscriber leaves at most a partial last line; the next start cuts it off, and the
  broker delivers that message again.
- Parquet cannot be appended to and a Parquet file without its footer is unreadable, so its rows
  are staged in ``NAME.parquet.part`` (JSON lines, appended like the text formats). When the file
  rotates or the recorder closes, the Parquet file is written beside it under a temporary name,
  synced and renamed into place, so a ``.parquet`` file is always whole; a start first finishes a
  part that a killed run left behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from edge import CLASS_NAMES
from edge.device.updates.store import fsync_path as sync  # a file or folder: survives a power cut
from edge.errors import UserError

COLUMNS = ["ts", "device", "event_id", "frame", "track", "label", "confidence",
           *(f"p_{c}" for c in CLASS_NAMES), "x", "y", "w", "h", "model_id", "model_version"]
TEXT_COLUMNS = {"device", "event_id", "label", "model_id", "model_version"}
FORMATS = (".jsonl", ".csv", ".parquet")
PART = ".part"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
"""A CSV text cell starting with one of these gets a ``'`` in front (OWASP's CSV-injection rule), so a spreadsheet
shows it as text instead of running it as a formula; ``'`` itself too, so reading back strips exactly one."""


def event_row(device: str, event: dict) -> dict:
    """Flatten an ``events`` payload (docs/mqtt.md) into a recording row; missing fields stay empty."""
    scores = event.get("scores") or {}
    box = event.get("box") or [None] * 4
    model = event.get("model") or {}
    return {"ts": to_epoch(event.get("ts")), "device": device, "event_id": event.get("event_id"),
            "frame": event.get("frame"), "track": event.get("track_id"), "label": event.get("label"),
            "confidence": event.get("confidence"), **{f"p_{c}": scores.get(c) for c in CLASS_NAMES},
            **dict(zip("xywh", box)), "model_id": model.get("id"), "model_version": model.get("version")}


def spreadsheet_row(row: dict) -> dict:
    """``row`` with every text cell that a spreadsheet would take for a formula quoted (see :data:`FORMULA_START`).

    Only strings change: numbers (a negative coordinate or score, say) stay numbers."""
    return {key: "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value
            for key, value in row.items()}


def _unquote_cell(value: str | None) -> str | None:
    """The text :func:`spreadsheet_row` quoted, as it was recorded."""
    return value[1:] if value and value.startswith("'") else value


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


def _parquet_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string() if c in TEXT_COLUMNS else pa.float64()) for c in COLUMNS])


def _cut_partial_line(path: Path) -> None:
    """Truncate a text file after its last newline: a killed writer's half row goes (it was never acknowledged)."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 65536)
            f.seek(pos - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                pos = pos - step + newline + 1
                break
            pos -= step
        if pos != end:
            f.truncate(pos)


class Recorder:
    """Appends rows to ``path`` and its numbered successors, starting the next file at ``rotate_mb``."""

    def __init__(self, path: Path, rotate_mb: float | None = None, batch: int = 1000):
        """``batch``: rows per Parquet row group, and the most rows held before :meth:`write` flushes itself."""
        check_format(path)
        self.path, self.limit, self.batch = path, rotate_mb * 2**20 if rotate_mb else None, batch
        self.parquet = path.suffix == ".parquet"
        self.rows: list[dict] = []
        self.file = self.writer = None
        self.index = self._resume()

    def name(self, index: int) -> Path:
        return numbered(self.path, index)

    def staging(self, index: int) -> Path:
        """Where rows go before they reach a file: the file itself, or a Parquet file's ``.part``."""
        return self.name(index).with_name(self.name(index).name + PART) if self.parquet else self.name(index)

    @property
    def files(self) -> list[Path]:
        return recording_files(self.path)

    def _resume(self) -> int:
        """The index to write to: the newest file while it has room (text), else the next one."""
        last = 0
        while self.name(last + 1).exists() or self.staging(last + 1).exists():
            last += 1
        staged = self.staging(last)
        if self.parquet:
            if staged.exists():
                self._finish_parquet(last)
            return last + 1 if self.name(last).exists() else last
        if not staged.exists():
            return last
        _cut_partial_line(staged)
        return last + 1 if self.limit and staged.stat().st_size >= self.limit else last

    def recent_ids(self, limit: int) -> list[str]:
        """Up to ``limit`` event ids from the newest files, oldest first: what a restarted subscriber has seen."""
        ids: list[str] = []
        for path in reversed(self.files):
            if self.parquet:
                import pyarrow.parquet as pq

                found = pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist()
            else:
                found = [r["event_id"] for r in read_rows([path])]
            ids[:0] = [str(i) for i in found[-(limit - len(ids)):]]
            if len(ids) >= limit:
                break
        return ids

    def write(self, row: dict) -> None:
        """Buffer a row; :meth:`flush` writes it (call it before acknowledging the row's message)."""
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows through to the operating system; rotate when the file is full."""
        if not self.rows:
            return
        if self.file is None:
            self._open()
        if self.path.suffix == ".csv":
            self.writer.writerows(map(spreadsheet_row, self.rows))
        else:
            self.file.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in self.rows)
        self.file.flush()
        self.rows = []
        if self.limit and self.file.tell() >= self.limit:
            self._close_file()
            self.index += 1

    def _open(self) -> None:
        path = self.staging(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", newline="" if path.suffix == ".csv" else None)
        if path.suffix == ".csv":
            self.writer = csv.DictWriter(self.file, COLUMNS)
            if fresh:
                self.writer.writeheader()

    def _close_file(self) -> None:
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = self.writer = None
        if self.parquet:
            self._finish_parquet(self.index)

    def _finish_parquet(self, index: int) -> None:
        """Write ``NAME.parquet`` from its part (temporary name, sync, rename), then drop the part."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        part, final = self.staging(index), self.name(index)
        if not final.exists():
            _cut_partial_line(part)
            tmp = final.with_name(final.name + ".tmp")
            schema = _parquet_schema()
            with open(part) as f, pq.ParquetWriter(tmp, schema) as writer:
                rows: list[dict] = []
                for line in f:
                    rows.append(json.loads(line))
                    if len(rows) >= self.batch:
                        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                        rows = []
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            sync(tmp)
            os.replace(tmp, final)
            sync(final.parent)
        part.unlink()

    def close(self) -> None:
        self.flush()
        self._close_file()


def numbered(path: Path, index: int) -> Path:
    """A recording's ``index``-th file: ``out.jsonl``, ``out.1.jsonl``, ``out.2.jsonl``, ..."""
    return path if index == 0 else path.with_suffix(f".{index}{path.suffix}")


def recording_files(path: Path) -> list[Path]:
    """The complete files of the recording ``path``, oldest first (a Parquet part is not one until it is closed)."""
    found, index = [], 0
    while True:
        name = numbered(path, index)
        if name.exists():
            found.append(name)
        elif not name.with_name(name.name + PART).exists():
            return found
        index += 1


def read_rows(paths: list[Path]) -> list[dict]:
    """All rows of one or more recording files, in file order."""
    rows = []
    for path in paths:
        check_format(path)
        if not path.is_file():
            raise UserError(f"recording {path} not found")
        try:
            rows += [_checked_row(row, path, n) for n, row in enumerate(_raw_rows(path), 1)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"recording {path} is unreadable: {exc}") from None
    return rows


def _raw_rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            yield from pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own kinds for a damaged file
            raise UserError(f"recording {path} is not a readable Parquet file: {exc}") from None
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                yield {key: _unquote_cell(value) if key in TEXT_COLUMNS else value for key, value in row.items()}
    else:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        raise UserError(f"recording {path} line {n} is not JSON") from None


def _checked_row(row, path: Path, n: int) -> dict:
    """A recorded event with the fields plots need: ``device`` and ``label`` as text, ``ts`` and scores as numbers."""
    if not isinstance(row, dict):
        raise UserError(f"recording {path} row {n} is not an event")
    missing = [key for key in ("ts", "device", "label") if row.get(key) in (None, "")]
    if missing:
        raise UserError(f"recording {path} row {n} has no {', '.join(missing)}")
    checked = {}
    for key, value in row.items():
        if key in TEXT_COLUMNS or value in (None, "") or isinstance(value, (dict, list)):
            checked[key] = value if value != "" else None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"recording {path} row {n}: {key} {str(value)[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise UserError(f"recording {path} row {n}: {key} {value!r} is not a finite number")
        checked[key] = number
    return checked
