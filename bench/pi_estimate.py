"""What a Raspberry Pi should take per face and per frame: an ESTIMATE from published figures, not a measurement.

    python bench/pi_estimate.py                  # the shipped bundle; writes docs/results/pi-estimate.json
    python bench/pi_estimate.py --bundle models/fer2013-resnet18-cbam --json pi.json

Nothing here runs on a Pi, and emulation says nothing about speed. The estimate counts each model's
multiply-accumulates (MACs) from its TFLite graph (every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: output
elements x the kernel's size) and divides them by what a Pi's cores reach in published benchmarks:

- **Raspberry Pi 4** (BCM2711, four Cortex-A72 at 1.5 GHz): XNNPACK's own table (README, "Raspberry Pi", end2end-bench
  on Raspbian Buster, February 2020) gives MobileNet v1 1.0 (569 M MACs of dense convolutions, like ResNet's) in
  75 ms with 4 threads, in float32: 7.6 G MAC/s.
- INT8 against float32 on a Cortex-A72: **assumed 1x to 2x**. The A72 has no dot-product instructions, so XNNPACK's
  INT8 kernels widen to 16 bits (SMLAL), which at best doubles float32's MACs per cycle.
- One thread against four: **assumed 3x to 4x slower** (75-100 % scaling over the four cores).
- **Raspberry Pi 5** (BCM2712, four Cortex-A76 at 2.4 GHz): Raspberry Pi's announcement gives 2-3x a Pi 4's CPU
  performance. Its dot-product instructions should give INT8 more than that, so the range is a conservative one.

Each row is a range from those assumptions, the slow end first. A real Pi's figures come from ``edge bench``
(docs/devices/raspberry-pi.md); once they exist they replace this page.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.device.config import SHIPPED_BUNDLE  # noqa: E402
from edge.errors import UserError  # noqa: E402
from edge.model.bundle import load_bundle  # noqa: E402
from edge.model.detectors.blazeface import FULL_RANGE, SHORT_RANGE, SHORT_RANGE_INT8  # noqa: E402
from edge.model.litert import load_interpreter  # noqa: E402

PI4_FP32_GMACS_4_THREADS = 569e6 / 75e-3 / 1e9
"""MobileNet v1 1.0 (569 M MACs) in 75 ms, 4 threads, float32, on a Pi 4: XNNPACK's README."""
INT8_SPEEDUP = (1.0, 2.0)
"""INT8 against float32 on a Cortex-A72 (no dot product): assumed."""
THREAD_SCALING = (3.0, 4.0)
"""Four threads against one: assumed."""
PI5_OVER_PI4 = (2.0, 3.0)
"""A Pi 5's CPU against a Pi 4's: Raspberry Pi's announcement of the Pi 5 (October 2023)."""
SOURCES = [
    "https://github.com/google/XNNPACK#raspberry-pi (MobileNet v1 1.0X, RPi 4 (BCM2711), 75 ms, multi-threaded)",
    "https://www.raspberrypi.com/news/introducing-raspberry-pi-5/ (2-3x the CPU performance of Raspberry Pi 4)",
]


def macs(model: bytes | Path) -> int:
    """Multiply-accumulates of one invoke: convolutions and fully connected layers, which are nearly all of them."""
    interpreter = load_interpreter(model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():  # noqa: SLF001 - LiteRT's only view of the graph's operators
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out, weights = tensors[op["outputs"][0]]["shape"], tensors[op["inputs"][1]]["shape"]
        # weights: (out, kh, kw, in) for CONV_2D, (1, kh, kw, out) for DEPTHWISE_CONV_2D, (out, in) otherwise
        per_output = weights[1] * weights[2] if op["op_name"] == "DEPTHWISE_CONV_2D" else np.prod(weights[1:])
        total += int(np.prod(out)) * int(per_output)
    return total


def estimate_ms(mac_count: int, int8: bool) -> dict[str, list[float]]:
    """Milliseconds per invoke, [slow, fast], on a Pi 4 and a Pi 5 with one thread and with four."""
    speed = INT8_SPEEDUP if int8 else (1.0, 1.0)
    four = [mac_count / (PI4_FP32_GMACS_4_THREADS * 1e9 * s) * 1e3 for s in speed]
    one = [four[0] * THREAD_SCALING[1], four[1] * THREAD_SCALING[0]]
    return {"pi4_1_thread": one, "pi4_4_threads": four,
            "pi5_1_thread": [one[0] / PI5_OVER_PI4[0], one[1] / PI5_OVER_PI4[1]],
            "pi5_4_threads": [four[0] / PI5_OVER_PI4[0], four[1] / PI5_OVER_PI4[1]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE, help="the emotion model (default: shipped)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "pi-estimate.json")
    args = parser.parse_args()
    try:
        bundle = load_bundle(args.bundle)
    except UserError as exc:
        raise SystemExit(f"pi_estimate: error: {exc}") from None
    rows = [{"model": f"emotion {bundle.model_id} (INT8)", "int8": True, "macs": macs(bundle.model_bytes)}]
    rows += [{"model": f"detector {d.name} ({d.size} px)", "int8": d is SHORT_RANGE_INT8, "macs": macs(d.file)}
             for d in (SHORT_RANGE, SHORT_RANGE_INT8, FULL_RANGE)]
    for row in rows:
        row["ms"] = {k: [round(v, 1) for v in pair] for k, pair in estimate_ms(row["macs"], row["int8"]).items()}
    columns = ("pi4_1_thread", "pi4_4_threads", "pi5_1_thread", "pi5_4_threads")
    print("ESTIMATE, not measured on hardware: ms per invoke (fastest-slowest of the assumptions), "
          "from published figures (see --help)")
    print(f"{'model':<52}{'M MACs':>8}" + "".join(f"{c:>16}" for c in columns))
    for row in rows:
        print(f"{row['model']:<52}{row['macs'] / 1e6:>8.1f}"
              + "".join(f"{'{:.0f}-{:.0f}'.format(*reversed(row['ms'][c])):>16}" for c in columns))
    report = {"estimate": True, "measured_on_hardware": False, "rows": rows, "sources": SOURCES,
              "assumptions": {"pi4_fp32_gmacs_4_threads": round(PI4_FP32_GMACS_4_THREADS, 2),
                              "int8_speedup_over_fp32": INT8_SPEEDUP, "one_thread_slower_by": THREAD_SCALING,
                              "pi5_over_pi4": PI5_OVER_PI4},
              "command": " ".join(["python", "bench/pi_estimate.py", *sys.argv[1:]])}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
