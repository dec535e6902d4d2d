"""The ``edge`` command: ``run`` the device, ``bench`` its per-frame cost, ``check`` a model bundle.

Every problem a user can fix ends as one line ``edge: error: ...`` and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge.device.config import SHIPPED_BUNDLE
from edge.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge", description="Facial-expression recognition on an edge device.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch a camera and publish emotions over MQTT")
    run.add_argument("--config", type=Path, help="YAML or TOML configuration (see deploy/device.yaml)")
    run.add_argument("--source", help="camera index, 'picamera', a video file, a folder of images or a stream URL")
    run.add_argument("--bundle", help="model bundle folder (default: <model.dir>/current, else the shipped release bundle)")
    run.add_argument("--broker", help="mqtt[s]://[user@]host[:port]; the password comes from $MQTT_PASSWORD")
    run.add_argument("--device-id", help="this device's name in MQTT topics")
    bench = sub.add_parser("bench", help="per-stage milliseconds and FPS on a 640x480 stream")
    bench.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE, help="the (INT8) model bundle (default: the shipped one)")
    bench.add_argument("--float-bundle", type=Path, help="a float bundle to compare with")
    bench.add_argument("--source", help="frames to use instead of the built-in 1- and 3-face streams")
    bench.add_argument("--threads", type=int, action="append", help="inference threads (repeatable; default 1 and 2)")
    bench.add_argument("--detector", action="append", choices=["blazeface", "haar"], help="repeatable; default both")
    bench.add_argument("--frames", type=int, default=200, help="timed frames per combination (default 200)")
    bench.add_argument("--json", type=Path, help="also write the report here")
    check = sub.add_parser("check", help="validate a bundle and run it once on a built-in input")
    check.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE, help="default: the shipped release bundle")
    return p


def run_command(args: argparse.Namespace) -> int:
    from edge.device.config import load_config
    from edge.device.runtime import run

    overrides = {"source": {"uri": args.source}, "model": {"bundle": args.bundle},
                 "mqtt": {"broker": args.broker, "device_id": args.device_id}}
    overrides = {s: {k: v for k, v in values.items() if v is not None} for s, values in overrides.items()}
    return run(load_config(args.config, {s: v for s, v in overrides.items() if v}))


def bench_command(args: argparse.Namespace) -> int:
    from edge.device.bench import bench, table

    if args.frames < 1 or any(n < 1 for n in args.threads or []):
        raise UserError("--frames and --threads must be at least 1")
    report = bench(args.bundle, args.float_bundle, args.source, args.threads or [1, 2],
                   args.detector or ["blazeface", "haar"], args.frames, args.json)
    print(table(report))
    return 0


def check_command(args: argparse.Namespace) -> int:
    from edge.model.bundle import load_bundle
    from edge.model.selfcheck import self_check

    bundle = load_bundle(args.bundle)
    start = time.perf_counter()
    self_check(bundle)
    spec, manifest = bundle.spec, bundle.manifest
    print(f"{args.bundle}: ok - model {bundle.model_id} version {bundle.version}, "
          f"{manifest['input']['dtype']} {spec.input_size}x{spec.input_size} input, classes {', '.join(bundle.classes)}; "
          f"ran once in {(time.perf_counter() - start) * 1e3:.1f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"run": run_command, "bench": bench_command, "check": check_command}[args.command](args)
    except UserError as exc:
        print(f"edge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
