"""MkDocs hook: the figures of the results pages, read at build time from what the benchmarks wrote.

No figure on a page that uses it is typed by hand. A page holds fenced blocks::

    ```results
    table: per-class              # which table (TABLES below)
    file: int8-publictest.json    # its arguments, YAML
    ```

and inline references in prose, ``{{ pct: [json, int8-publictest.json, accuracy] }}``. Each is replaced with
Markdown made from the JSON, CSV and log files in ``docs/results/`` (``bench/*.py``, ``edge bench``,
``trainer evaluate`` and ``trainer export`` write them) and the shipped bundle's ``manifest.json``. A missing file
or key fails the build, so a page cannot show a figure its data no longer holds.

References (YAML lists, the first item says what they read):

- ``[json, FILE, key, key, ...]``: a value in a JSON file under docs/results (keys may contain spaces and dots);
- ``[best, RUN]`` / ``[last, RUN]``: a training run's validation accuracy (the weight-averaged one where the run
  kept one) at its best or last epoch, from ``campaign/history-RUN.csv``;
- ``[student, NAME]``: a GPU student's one-pass accuracy, from the JSON line of ``campaign/gpu-students.log``'s
  section ``== NAME``;
- ``[max, FILE, KEY]``: the largest ``KEY`` over the ``rows`` of an ensembles/soup JSON file;
- ``[logjson, FILE, key, ...]``: a value in the last JSON line of a log file (the GPU scripts end with one).

Inline kinds: ``pct`` (a fraction as a percentage), ``num`` (as written), ``pp`` (how far apart two fractions are, in
points), ``se`` (the standard error, in points, of the ``accuracy`` over ``n`` of a report: ``[json, FILE]``).
"""

from __future__ import annotations

import csv
import json
import math
import posixpath
import re
from functools import cache
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

RESULTS = "results"
"""docs/results: the benchmarks' output, relative to docs_dir."""
BUNDLE = "models/fer2013-resnet18-cbam"
BLOCK = re.compile(r"^```results[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"\{\{\s*(pct|num|pp|se)\s*:\s*(.+?)\s*\}\}")
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_docs: Path = Path("docs")
_root: Path = Path(".")


class Missing(PluginError):
    pass


# ---------------------------------------------------------------- reading

@cache
def load_json(name: str):
    path = _docs / RESULTS / name
    if not path.is_file():
        raise Missing(f"results: {RESULTS}/{name} not found")
    return json.loads(path.read_text(encoding="utf-8"))


def dig(data, keys, where: str):
    for key in keys:
        if isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        elif isinstance(data, dict) and str(key) in data:
            data = data[str(key)]
        else:
            raise Missing(f"results: {where} has no {key!r}")
    return data


@cache
def history(run: str) -> list[dict]:
    path = _docs / RESULTS / "campaign" / f"history-{run}.csv"
    if not path.is_file():
        raise Missing(f"results: {path.relative_to(_docs)} not found")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def val_key(rows: list[dict]) -> str:
    return "val_ema_accuracy" if "val_ema_accuracy" in rows[0] else "val_accuracy"


def run_summary(run: str) -> dict:
    rows = history(run)
    key = val_key(rows)
    best = max(range(len(rows)), key=lambda i: rows[i][key])
    return {"best": rows[best][key], "best_epoch": best + 1, "epochs": len(rows), "last": rows[-1][key],
            "first": rows[0][key], "minutes": sum(r["seconds"] for r in rows) / 60, "train": rows[-1]["accuracy"],
            "averaged": key == "val_ema_accuracy"}


@cache
def run_config(run: str) -> dict:
    path = _docs / RESULTS / "campaign" / f"config-{run}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


@cache
def students() -> dict[str, dict]:
    """``== NAME`` sections of gpu-students.log: their JSON result line and 'N epochs in M min'."""
    path = _docs / RESULTS / "campaign" / "gpu-students.log"
    if not path.is_file():
        raise Missing("results: campaign/gpu-students.log not found")
    out: dict[str, dict] = {}
    name = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("== "):
            name = line[3:].split(" ", 1)[0].split(":", 1)[0]
            out[name] = {}
        elif name and line.startswith("{"):
            out[name].update(json.loads(line))
        elif name and (m := re.search(r"(\d+) epochs in ([\d.]+) min", line)):
            out[name]["epochs"], out[name]["minutes"] = int(m[1]), float(m[2])
    return out


@cache
def log_json(name: str) -> dict:
    """The last JSON line of a log file under docs/results (the GPU scripts end their logs with one)."""
    path = _docs / RESULTS / name
    if not path.is_file():
        raise Missing(f"results: {RESULTS}/{name} not found")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    if not lines:
        raise Missing(f"results: {RESULTS}/{name} has no JSON line")
    return json.loads(lines[-1])


def resolve(ref) -> float:
    """The number a reference (see the module's docstring) stands for."""
    if not isinstance(ref, list) or not ref:
        raise PluginError(f"results: a reference is a list such as [json, FILE, key], got {ref!r}")
    kind, args = ref[0], ref[1:]
    if kind == "json":
        return dig(load_json(args[0]), args[1:], args[0])
    if kind in ("best", "last"):
        return run_summary(args[0])[kind]
    if kind == "student":
        return dig(students(), [args[0], "none"], "campaign/gpu-students.log")
    if kind == "logjson":
        return dig(log_json(args[0]), args[1:], args[0])
    if kind == "max":
        return max(dig(row, [args[1]], args[0]) for row in dig(load_json(args[0]), ["rows"], args[0]))
    raise PluginError(f"results: unknown reference kind {kind!r}")


# ---------------------------------------------------------------- formatting

def pct(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f} %"


def pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def num(x, digits: int | None = None) -> str:
    if isinstance(x, float) and digits is not None:
        return f"{x:.{digits}f}"
    if isinstance(x, int) and x >= 10_000:
        return f"{x:,}".replace(",", " ")
    return str(x)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def source_line(files: list[str], command: str | None = None, note: str = "") -> str:
    """The line under a table: the files it was read from, the command that writes them, a note."""
    links = ", ".join(f"[`{f}`]({f})" for f in files)
    return f"*Data: {links}" + (f"; command: `{command}`" if command else "") + "." + (f" {note}" if note else "") + "*"


# ---------------------------------------------------------------- tables

def t_accuracy(args) -> list[str]:
    """The shipped model, float and INT8, on PublicTest: one pass, flip-averaged, without the Training copies, on the
    faces the detector finds."""
    rows = []
    for label, prefix in (("float (Keras)", "float"), ("**INT8 bundle (LiteRT, as on the device)**", "int8")):
        one, flip, pruned = (load_json(f"{prefix}-publictest{s}.json") for s in ("", "-flip", "-pruned"))
        rows.append([label, pct(one["accuracy"]), pct(flip["accuracy"]),
                     pct(one["without_training_copies"]["accuracy"]), pct(pruned["accuracy"])])
    n = load_json("int8-publictest.json")
    header = [f"{bundle_version()}", f"one pass ({n['n']} images)", "flip-averaged",
              f"one pass, without the {n['without_training_copies']['excluded']} Training copies",
              f"one pass, faces BlazeFace detects ({load_json('int8-publictest-pruned.json')['n']})"]
    files = [f"{p}-publictest{s}.json" for p in ("float", "int8") for s in ("", "-flip", "-pruned")]
    return table(header, rows) + ["", source_line(files, args.get("command"))]


def t_parity(args) -> list[str]:
    data = load_json(args.get("file", "parity.json"))
    names = {"float_keras": "float Keras", "float_tflite": "float32 TFLite", "ptq_int8": "post-training INT8",
             "qat_int8": "QAT INT8"}
    rows = []
    for key, label in names.items():
        if key in data:
            shipped = " (shipped)" if data.get("shipped") == key else ""
            rows.append([label + shipped, pct(data[key]["accuracy"]), pct(data[key]["agreement_with_float"], 1)])
    return table(["model", f"accuracy ({data['n']} images, one pass)", "same top-1 as float"], rows) + [
        "", source_line([args.get("file", "parity.json")], args.get("command"))]


def t_per_class(args) -> list[str]:
    data = load_json(args["file"])
    rows = [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
            for c, m in data["per_class"].items() if m["support"]]
    return table(["class", "precision", "recall", "F1", "images"], rows) + [
        "", source_line([args["file"]], args.get("command"))]


def t_recall(args) -> list[str]:
    """Recall per class across several reports (columns), e.g. PublicTest and the cross-dataset scores."""
    columns = args["columns"]
    reports = [load_json(c["file"]) for c in columns]
    rows = []
    for name in CLASSES:
        row = [name]
        for report in reports:
            m = report["per_class"].get(name)
            row.append(f"{pct(m['recall'], 1)} ({m['support']})" if m and m["support"] else "–")
        rows.append(row)
    rows.append(["**all classes (accuracy)**"] + [f"**{pct(r['accuracy'], 1)}** ({r['n']})" for r in reports])
    return table(["class"] + [c["label"] for c in columns], rows) + [
        "", source_line([c["file"] for c in columns], args.get("command"))]


def t_cross(args) -> list[str]:
    rows = []
    for entry in args["rows"]:
        data = load_json(entry["file"])
        rows.append([entry["label"], data["n"], pct(data["accuracy"]), f"{data['macro_f1']:.3f}"])
    return table(["dataset (never trained on)", "images", "accuracy, one pass", "macro F1"], rows) + [
        "", source_line([e["file"] for e in args["rows"]], args.get("command"))]


def t_folds(args) -> list[str]:
    rows = []
    files = []
    for entry in args["rows"]:
        cells = [entry["label"], entry["protocol"]]
        for key in ("scratch", "finetuned"):
            data = load_json(entry[key])
            files.append(entry[key])
            cells.append(f"{pct(data['accuracy'])} ({pct(data['fold_accuracy_mean'], 1)} ± "
                         f"{100 * data['fold_accuracy_std']:.1f} per fold)")
        rows.append(cells)
    return table(["dataset", "protocol", "from scratch", "fine-tuned from the FER2013 bundle"], rows) + [
        "", source_line(files, args.get("command"))]


EDGE_COLUMNS = {
    "stream": ("faces", lambda r: r["stream"]),
    "model": ("model", lambda r: r["model"]),
    "detector": ("detector", lambda r: f"`{r['detector']}`"),
    "threads": ("threads", lambda r: r["threads"]),
    "every_n": ("every_n", lambda r: r.get("every_n", 1)),
    "detect": ("detect ms", lambda r: num(r["stage_ms"]["detect"], 2)),
    "preprocess": ("preprocess ms", lambda r: num(r["stage_ms"]["preprocess"], 2)),
    "infer": ("infer ms", lambda r: num(r["stage_ms"]["infer"], 2)),
    "infer_per_face": ("infer ms per face", lambda r: num(r["infer_ms_per_face"], 2)),
    "track_publish": ("track + publish ms", lambda r: num(r["stage_ms"]["track"] + r["stage_ms"]["publish"], 2)),
    "frame": ("frame ms (wall, median)", lambda r: num(r["frame_ms"], 2)),
    "cpu": ("CPU ms per frame", lambda r: num(r["cpu_ms"], 2)),
    "fps": ("FPS (wall)", lambda r: num(round(r["fps"]))),
    "floor": ("floor ms (the two invokes)", lambda r: num(r["detector_invoke_ms"] + r["emotion_invoke_ms"], 2)),
    "over_floor": ("CPU / floor", lambda r: f"{r['cpu_over_floor']:.2f}×"),
    "detected": ("frames detected", lambda r: pct(r.get("detected_frames", 1.0 if r.get("every_n", 1) == 1 else None), 0)),
    "found": ("faces found", lambda r: pct(r["found"], 1)),
    "box_iou": ("box IoU with the truth", lambda r: num(r["box_iou"], 3)),
    "agreement": ("same emotion as every_n 1", lambda r: pct(r["label_agreement"], 1)),
}


def t_edge_bench(args) -> list[str]:
    data = load_json(args["file"])
    columns = args["columns"]
    unknown = [c for c in columns if c not in EDGE_COLUMNS]
    if unknown:
        raise PluginError(f"results: edge-bench columns {unknown} unknown; known: {', '.join(EDGE_COLUMNS)}")
    rows = []
    for r in data["rows"]:
        if any(str(r.get(k)) != str(v) for k, v in (args.get("where") or {}).items()):
            continue
        try:
            rows.append([EDGE_COLUMNS[c][1](r) for c in columns])
        except KeyError as e:
            raise Missing(f"results: {args['file']} row has no {e}") from None
    note = f"{data['frames']} frames of {data['width']}×{data['height']} per row"
    note += f"; resident memory {num(data['rss_mb'], 0)} MB." if "rss_mb" in data else "."
    ids = sorted({r["model_id"] for r in data["rows"] if r.get("model") == "int8" and "model_id" in r})
    shipped = bundle_manifest()["model_id"]
    if ids:
        note += " INT8 bundle " + ", ".join(f"`{i}`" for i in ids) + (
            " (the shipped one)." if ids == [shipped] else f" (not the shipped `{shipped}`).")
    return table([EDGE_COLUMNS[c][0] for c in columns], rows) + [
        "", source_line([args["file"]], args.get("command"), note=note.strip())]


def t_detection(args) -> list[str]:
    data = load_json(args["file"])
    detectors = args.get("detectors") or list(data["detectors"])
    sizes = list(data["detectors"][detectors[0]]["by_size"])
    rows = [[f"{s} px"] + [pct(data["detectors"][d]["by_size"][s]["recall"], 1) for d in detectors] for s in sizes]
    if all("room" in data["detectors"][d] for d in detectors):
        rows.append(["room: 10 faces of 32–48 px with heads (recall)"]
                    + [pct(data["detectors"][d]["room"]["heads"]["recall"], 1) for d in detectors])
    rows.append(["precision, all frames"] + [pct(data["detectors"][d]["all"]["precision"], 1) for d in detectors])
    rows.append(["CPU ms per frame (median)"] + [num(data["detectors"][d]["median_cpu_ms"], 2) for d in detectors])
    note = f" {data['frames_composed']} composed 640×480 frames; a detection counts at IoU ≥ {data['match_iou']}."
    return table(["face size"] + [f"`{d}`" for d in detectors], rows) + [
        "", source_line([args["file"]], args.get("command"), note=note.strip())]


def t_onnx(args) -> list[str]:
    data = load_json("onnx-backend.json")
    rows = [["LiteRT (`model.tflite`)", pct(data["accuracy"]["litert"]), "100 %",
             num(data["ms_per_face"]["litert"], 2)],
            [f"onnxruntime, {', '.join(data['providers'])} (`model.onnx`, QDQ INT8)",
             pct(data["accuracy"]["onnxruntime"]), pct(data["agreement_top1"]), num(data["ms_per_face"]["onnxruntime"], 2)]]
    return table(["back-end", f"accuracy ({data['split']}, {data['n']})", "same top-1 as LiteRT", "ms per face"],
                 rows) + ["", source_line(["onnx-backend.json"], args.get("command"))]


def t_time_to_accuracy(args) -> list[str]:
    data = load_json(args["file"])
    every = args.get("every", 10)
    epochs = data["epochs"]
    rows = [[num(e["minutes"], 1), e["epoch"], pct(e["val_accuracy"], 1)] for e in epochs
            if e["epoch"] % every == 0 or e["epoch"] == len(epochs)]
    reached = "; ".join(f"{pct(float(t), 1)}: " + (f"epoch {v['epoch']}, {num(v['minutes'], 1)} min" if v else
                                                   "not reached") for t, v in data["reached"].items())
    note = f" {data['train_images']} training images an epoch, {num(data['mean_img_per_s'], 0)} img/s on average; " \
           f"targets {reached}."
    return table(["minutes", "epoch", "validation accuracy (one pass)"], rows) + [
        "", source_line([args["file"]], args.get("command"), note=note.strip())]


def t_throughput(args) -> list[str]:
    data = load_json(args["file"])
    rows = []
    for r in data["rows"]:
        change = ", ".join(f"`{k}={v}`" for k, v in r["changes"].items()) or "default"
        rows.append([change, r["precision"], r["batch_size"], r["width"], r["stem"], f"{r['parameters'] / 1e6:.2f} M",
                     num(r["img_per_s"], 0), " ".join(num(x, 0) for x in r["img_per_s_repeats"])])
    return table(["variant", "precision", "batch", "width", "stem", "parameters", "img/s (best)", "repeats"], rows) + [
        "", source_line([args["file"]], args.get("command"), f"Machine: {data['machine']}.")]


def t_fleet(args) -> list[str]:
    d = load_json("fleet-load.json")
    lat = d["latency_ms"]
    rows = [["devices × rate", f"{d['devices']} × {num(d['rate_per_device'])} events/s, QoS 1, {num(d['duration_s'], 0)} s"],
            ["offered (acknowledged by the broker)", f"{num(d['offered_events_per_s'], 0)} events/s "
             f"({num(d['acknowledged_by_broker'])} events)"],
            ["stored in PostgreSQL", f"{num(d['stored_events_per_s'], 0)} events/s by {d['subscribers']} shared "
             f"subscribers; drained {num(d['drain_s_after_load'])} s after the load ended"],
            ["latency p50 / p99 / max (publish → committed row)",
             f"{num(lat['p50'], 0)} / {num(lat['p99'], 0)} / {num(lat['max'], 0)} ms"],
            ["every event id exactly once", f"{'yes' if d['every_event_exactly_once'] else 'NO'}: "
             f"{d['missing']} missing, {d['duplicates']} duplicates, {d['unexpected']} unexpected"]]
    m = d["machine"]
    return table(["", ""], rows) + ["", source_line(["fleet-load.json"], d.get("command"),
                                                    f"{m['cores']}-core {m['cpu']}, Python {m['python']}, {m['date']}.")]


def t_fleet_rates(args) -> list[str]:
    """One row per load test of ``files``: how the tail grows with the offered rate on one machine."""
    rows = []
    for name in args["files"]:
        d = load_json(name)
        lat = d["latency_ms"]
        rows.append([f"{d['devices']} × {d['rate_per_device']:g}/s", f"{num(d['offered_events_per_s'], 0)}",
                     f"{num(d['stored_events_per_s'], 0)}", f"{num(lat['p50'], 0)} / {num(lat['p99'], 0)}",
                     "yes" if d["every_event_exactly_once"] else "NO"])
    return table(["devices × rate", "offered, events/s", "stored, events/s", "p50 / p99, ms", "exactly once"], rows) + [
        "", source_line(args["files"], "python bench/fleet_load.py --devices N --duration 60 --json FILE")]


def t_ensembles(args) -> list[str]:
    data = load_json(args["file"])
    rows = data["rows"]
    name = lambda r: " + ".join(Path(m).name for m in r["models"])  # noqa: E731
    picked = [r for r in rows if len(r["models"]) == 1]
    for key in ("none", "flip-crops"):
        best = max(rows, key=lambda r: r[key])
        if best not in picked:
            picked.append(best)
    full = max(rows, key=lambda r: len(r["models"]))
    if full not in picked:
        picked.append(full)
    out = [[name(r), pct(r["none"]), pct(r["flip"]), pct(r["flip-crops"])] for r in picked]
    kind = "weights averaged (a soup)" if data.get("kind") == "soup" else "probabilities averaged"
    return table([f"models, {kind} (float, {data['split']})", "one pass", "flip-averaged", "ten views"], out) + [
        "", source_line([args["file"]], args.get("command"), f"Rows: the single models, the best one-pass and "
                        f"ten-view combinations of all {len(rows)}, and all of them together.")]


def t_students(args) -> list[str]:
    data = students()
    rows = []
    for entry in args["rows"]:
        s = data.get(entry["name"])
        if not s or "none" not in s:
            raise Missing(f"results: campaign/gpu-students.log has no result for {entry['name']!r}")
        rows.append([entry["label"], s.get("epochs", "–"), num(s.get("minutes", "–")), pct(s["none"]),
                     pct(s["flip-crops"])])
    return table(["student (from scratch, H100, last epoch, float)", "epochs", "minutes", "PublicTest one pass",
                  "ten views"], rows) + ["", source_line(["campaign/gpu-students.log", "campaign/gpu-students.json"],
                                                         args.get("command"))]


def recipe(run: str) -> str:
    c = run_config(run)
    if not c:
        return ""
    parts = [f"{c.get('epochs')} epochs", f"LR {c.get('schedule', {}).get('lr')}"]
    model = c.get("model", {})
    parts.append(f"width {model.get('width')}" + (f", crop {model['crop']}" if model.get("crop") else ""))
    if c.get("ema"):
        parts.append(f"EMA {c['ema']}")
    teachers = c.get("distill", {}).get("teachers") or []
    if teachers:
        parts.append(f"{len(teachers)} teacher{'s' if len(teachers) > 1 else ''}, α {c['distill']['alpha']}")
    return "; ".join(parts)


def t_campaign(args) -> list[str]:
    """One row per lever: what it started from, what it reached (float, one pass, PublicTest), the difference."""
    rows = []
    files: list[str] = []
    for entry in args["rows"]:
        start = resolve(entry["from"]) if entry.get("from") else None
        if "run" in entry:
            s = run_summary(entry["run"])
            result = s["best"]
            reached = f"{pct(result)} (epoch {s['best_epoch']} of {s['epochs']}" + (
                f"; last {pct(s['last'])})" if s["best_epoch"] != s["epochs"] else ")")
            cost = f"{num(s['minutes'], 0)} min, 2 cores"
            how = recipe(entry["run"])
            files.append(f"campaign/history-{entry['run']}.csv")
        else:
            result = resolve(entry["result"])
            reached = pct(result)
            cost = entry.get("cost", "–")
            how = ""
            if entry["result"][0] == "student":
                s = students()[entry["result"][1]]
                cost = f"{num(s['minutes'])} min, H100"
                how = f"{s['epochs']} epochs"
                files.append("campaign/gpu-students.log")
            elif entry["result"][0] in ("json", "max"):
                files.append(entry["result"][1])
        what = entry["lever"] + (f" ({how})" if how else "")
        begin = "–" if start is None else (f"{entry['from_label']}: {pct(start)}" if entry.get("from_label") else pct(start))
        rows.append([what, begin, reached,
                     pp(result - start) if start is not None else "–", cost, entry.get("verdict", "")])
    unique = list(dict.fromkeys(files))
    note = "Each run's configuration is beside its history (`config-RUN.yaml`)."
    return table(["what was tried", "start", "reached (float, PublicTest, one pass)", "Δ points", "training",
                  "verdict"], rows) + ["", source_line(unique, note=note)]


def t_releases(args) -> list[str]:
    rows = []
    for entry in args["rows"]:
        rows.append([entry["version"], entry["what"], pct(resolve(entry["float"])) if entry.get("float") else "–",
                     pct(resolve(entry["int8"])) if entry.get("int8") else "–"])
    return table(["release", "how it was made", "float, one pass", "INT8 bundle, one pass"], rows) + [
        "", "*Float: the run's validation (PublicTest) accuracy at its kept epoch; INT8: `trainer evaluate` of the "
        "exported bundle where its report is kept in docs/results (– where it is not).*"]


def t_int8_fix(args) -> list[str]:
    data = load_json("campaign/int8-channel-pool.json")
    rows = []
    for label, key in (("the 2026.11.26.4 network", "the 2026.11.26.4 network (runs/gpu-long-b)"),
                       ("the weight-averaged polish", "the weight-averaged polish (runs/gpu-swa)")):
        before, after = data[key]["before"], data[key]["after"]
        for q, name in (("ptq_int8", "post-training"), ("qat_int8", "QAT")):
            rows.append([label, name, f"{pct(before[q]['accuracy'])} ({pct(before[q]['agreement_with_float'], 1)})",
                         f"{pct(after[q]['accuracy'])} ({pct(after[q]['agreement_with_float'], 1)})",
                         pp(after[q]["accuracy"] - before[q]["accuracy"])])
    return table(["network", "INT8", "before the fix (same top-1 as float)", "after", "Δ points"], rows) + [
        "", source_line(["campaign/int8-channel-pool.json"])]


def t_bundle(args) -> list[str]:
    m = bundle_manifest()
    rows = [["version", m["version"]], ["model id", f"`{m['model_id']}`"],
            ["INT8 model file", f"{m['tflite']['bytes'] / 1e6:.1f} MB (`model.tflite`)"],
            ["input", f"{'×'.join(str(x) for x in m['input']['shape'][1:])} {m['input']['dtype']}"],
            ["classes", ", ".join(m["classes"])],
            ["trained on", f"{m['training']['dataset']} ({m['training']['protocol']} protocol)"],
            ["created", m["created"]]]
    return table(["the shipped bundle", ""], rows) + ["", f"*Data: the bundle's `manifest.json` ({BUNDLE}).*"]


def t_pi_estimate(args) -> list[str]:
    data = load_json("pi-estimate.json")
    columns = {"pi4_1_thread": "Pi 4, 1 thread", "pi4_4_threads": "Pi 4, 4 threads", "pi5_1_thread": "Pi 5, 1 thread",
               "pi5_4_threads": "Pi 5, 4 threads"}
    rows = [[row["model"], num(round(row["macs"] / 1e6, 1))]
            + [f"{row['ms'][c][1]:.0f}-{row['ms'][c][0]:.0f}" for c in columns] for row in data["rows"]]
    return table(["model (one invoke)", "M MACs", *(f"{c}, ms (estimate)" for c in columns.values())], rows) + [
        "", source_line(["pi-estimate.json"], data["command"],
                        "An estimate from published figures and stated assumptions, not measured on hardware.")]


def t_variants(args) -> list[str]:
    """The shipped variants side by side (``bench/variants.py``): accuracy, cost, frame time, and x the fer package."""
    data = load_json(args.get("file", "variants.json"))
    rows = [[f"`{r['variant']}`", pct(r["accuracy"]), num(r["mmacs"]), f"{r['mb']:.1f}", num(r["infer_ms_per_face"], 2),
             num(r["frame_cpu_ms_n1"], 2), f"{r['x_fer_n1']}×" if r["x_fer_n1"] else "–", num(r["frame_cpu_ms_n3"], 2),
             f"{r['x_fer_n3']}×" if r["x_fer_n3"] else "–",
             pct(r["outside_models_share"], 0) if "outside_models_share" in r else "–"] for r in data["rows"]]
    kind = "with AVX-512" if data["avx512"] else "AVX2, no AVX-512"
    return table(["variant", "PublicTest, one pass", "M MACs", "MB", "INT8 ms/face", "frame ms", "× fer",
                  "frame ms, detect every 3rd", "× fer", "outside the models"], rows) + [
        "", source_line([args.get("file", "variants.json")], "PYTHONPATH=/tmp/fer-pkg python bench/variants.py --fer "
                        "--json docs/results/variants.json",
                        f"{data['cpu']} ({kind}), one thread; {data['stream']}; median CPU ms per frame; the `fer` "
                        f"package took {data['fer_frame_cpu_ms']} ms per frame on the same frames in the same run. "
                        "Accuracy: FER2013 PublicTest (validation), one pass through the device's classifier, "
                        "from each bundle's manifest.")]


TABLES = {"accuracy": t_accuracy, "parity": t_parity, "per-class": t_per_class, "recall": t_recall,
          "cross-dataset": t_cross, "folds": t_folds, "edge-bench": t_edge_bench, "detection": t_detection,
          "onnx": t_onnx, "time-to-accuracy": t_time_to_accuracy, "throughput": t_throughput, "fleet": t_fleet,
          "fleet-rates": t_fleet_rates,
          "ensembles": t_ensembles, "students": t_students, "campaign": t_campaign, "releases": t_releases,
          "int8-fix": t_int8_fix, "bundle": t_bundle, "pi-estimate": t_pi_estimate,
          "variants": t_variants}


@cache
def bundle_manifest() -> dict:
    path = _root / BUNDLE / "manifest.json"
    if not path.is_file():
        raise Missing(f"results: {BUNDLE}/manifest.json not found")
    return json.loads(path.read_text(encoding="utf-8"))


def bundle_version() -> str:
    return f"model ({bundle_manifest()['version']})"


# ---------------------------------------------------------------- the hook

def _relative_links(lines: list[str], page_src: str) -> list[str]:
    """Data links are written relative to docs/results; make them relative to the page."""
    here = posixpath.dirname(page_src) or "."

    def fix(m: re.Match) -> str:
        return f"]({posixpath.relpath(f'{RESULTS}/{m[1]}', here)})"

    return [re.sub(r"\]\(((?![a-z]+:|#|\.\./)[^)]+)\)", fix, line) for line in lines]


def on_pre_build(config) -> None:
    global _docs, _root
    _docs = Path(config["docs_dir"]).resolve()
    _root = Path(config["config_file_path"]).resolve().parent
    for f in (load_json, history, run_config, students, bundle_manifest, log_json):
        f.cache_clear()


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "```results" not in markdown and "{{" not in markdown:
        return markdown
    where = page.file.src_uri

    def block(match: re.Match) -> str:
        try:
            args = yaml.safe_load(match[1]) or {}
        except yaml.YAMLError as e:
            raise PluginError(f"results: {where}: a results block is not YAML: {e}") from None
        name = args.get("table")
        if name not in TABLES:
            raise PluginError(f"results: {where}: unknown table {name!r}; known: {', '.join(TABLES)}")
        try:
            return "\n".join(_relative_links(TABLES[name](args), where))
        except PluginError as e:
            raise PluginError(f"{where}: {e}") from None

    def inline(match: re.Match) -> str:
        kind = match[1]
        try:
            refs = yaml.safe_load(f"[{match[2]}]")
        except yaml.YAMLError as e:
            raise PluginError(f"results: {where}: {match[0]} is not a reference: {e}") from None
        try:
            values = [resolve(r) for r in refs]
        except PluginError as e:
            raise PluginError(f"{where}: {e}") from None
        if kind == "pct":
            return pct(values[0])
        if kind == "pp":  # in prose: how far apart two fractions are, in points
            return f"{100 * abs(values[0] - values[1]):.2f}"
        if kind == "se":  # the standard error of an accuracy, in points, from a report's accuracy and n
            report = values[0]
            return f"{100 * math.sqrt(report['accuracy'] * (1 - report['accuracy']) / report['n']):.2f}"
        return num(values[0])

    markdown = BLOCK.sub(block, markdown)
    return INLINE.sub(inline, markdown)
