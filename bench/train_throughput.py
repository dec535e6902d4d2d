"""Training throughput of model and precision variants: images per second through the real training step.

    python bench/train_throughput.py                       # the default rows below
    python bench/train_throughput.py --row "width=48" --row "precision=bfloat16,batch_size=64"

Each row changes the default FER2013 recipe in one or more ways (``key=value`` pairs: ``precision``,
``batch_size`` or any ``model.`` key such as ``width`` or ``stem``) and times ``--steps`` training
steps of the trainer's compiled model (after two warm-up steps; ``--repeats`` times, the best counts)
on generated faces already normalized in memory: the model's cost alone (the augmentation pipeline
is the same for every row). Best-of-N because the build machine's speed flips between two levels
~1.8x apart from one repeat to the next. No accuracy here: the time-to-accuracy benchmark measures
what the speed buys. Prints a table, writes JSON (``--json``).

``precision=bfloat16`` is Keras' ``mixed_bfloat16`` policy (bfloat16 compute, float32 weights), which
oneDNN can run with AVX512_BF16 / AMX instructions where the CPU has them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_ROWS = ("", "precision=bfloat16", "batch_size=64", "batch_size=256", "width=48", "width=64", "stem=3x3")


def parse_row(text: str) -> dict:
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"train_throughput: error: --row expects key=value[,key=value], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def measure(changes: dict, steps: int, repeats: int = 3) -> dict:
    import numpy as np
    import tf_keras as keras

    from trainer.data.pipeline import normalize
    from trainer.fit.loop import compile_model
    from trainer.run.config import load_config

    cfg = load_config("fer2013")
    precision = changes.get("precision", "float32")
    if "batch_size" in changes:
        cfg = replace(cfg, batch_size=int(changes["batch_size"]))
    model_changes = {k: (v if k == "stem" else int(v)) for k, v in changes.items() if k not in ("precision", "batch_size")}
    cfg = replace(cfg, model=replace(cfg.model, **model_changes))
    rng = np.random.default_rng(0)
    n = cfg.batch_size * steps
    faces = rng.integers(0, 256, (n, cfg.model.input_size, cfg.model.input_size), dtype=np.uint8)
    x = normalize(faces, cfg.preprocess).numpy()
    y = np.eye(cfg.model.num_classes, dtype=np.float32)[rng.integers(0, cfg.model.num_classes, n)]
    keras.backend.clear_session()  # a fresh graph for each row
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = compile_model(cfg)
        model.fit(x[:2 * cfg.batch_size], y[:2 * cfg.batch_size], batch_size=cfg.batch_size, verbose=0)
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.fit(x, y, batch_size=cfg.batch_size, shuffle=False, verbose=0)
            rates.append(round(steps * cfg.batch_size / (time.perf_counter() - started), 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {"changes": changes, "precision": precision, "batch_size": cfg.batch_size, "width": cfg.model.width,
            "stem": cfg.model.stem, "parameters": model.count_params(), "steps": steps,
            "img_per_s": max(rates), "img_per_s_repeats": rates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", action="append", help="a variant (repeatable); default: " + " | ".join(
        r or "default" for r in DEFAULT_ROWS))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per repeat (default 30)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row; the best is reported (default 3)")
    parser.add_argument("--json", type=Path, default=Path("train-throughput.json"))
    args = parser.parse_args()
    try:
        rows = [measure(parse_row(r), args.steps, args.repeats) for r in (args.row or DEFAULT_ROWS)]
    except (TypeError, ValueError) as exc:  # an unknown model key or a value that is not a number
        print(f"train_throughput: error: bad --row: {exc}", file=sys.stderr)
        return 2
    print(f"{'variant':<40} {'params':>10} {'img/s':>7}  repeats")
    for r in rows:
        name = ",".join(f"{k}={v}" for k, v in r["changes"].items()) or "default (float32, batch 128, width 32)"
        print(f"{name:<40} {r['parameters']:>10,} {r['img_per_s']:>7.0f}  {' '.join(f'{x:.0f}' for x in r['img_per_s_repeats'])}")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json} ({machine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
