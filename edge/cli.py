"""The ``edge`` command: ``run`` the device, ``bench`` its per-frame cost, ``check`` a model bundle.

Every problem a user can fix ends as one line ``edge: error: ...`` and exit status 2, no traceback
(:mod:`edge.commandline`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from edge import commandline
from edge.commandline import output_file, positive_float, positive_int
from edge.errors import UserError


def parser() -> argparse.ArgumentParser:
    from edge.device.config import SHIPPED_BUNDLE
    from edge.model.detect import DETECTORS

    p, sub = commandline.make_parser("edge", "Facial-expression recognition on an edge device.")
    run = sub.add_parser("run", help="watch a camera and publish emotions over MQTT")
    run.add_argument("--config", type=Path, help="YAML or TOML configuration (see deploy/device.yaml)")
    run.add_argument("--source", help="camera index, 'picamera', a video file, a folder of images, a stream URL or "
                     "'gst:PIPELINE' (a GStreamer pipeline ending in appsink; needs OpenCV built with GStreamer)")
    run.add_argument("--bundle", help="model bundle folder (default: <model.dir>/current, else the shipped release bundle)")
    run.add_argument("--broker", help="mqtt[s]://[user@]host[:port]; the password comes from $MQTT_PASSWORD")
    run.add_argument("--device-id", help="this device's name in MQTT topics")
    run.set_defaults(func=run_command)
    bench = sub.add_parser("bench", help="per-stage milliseconds and FPS on a 640x480 stream")
    bench.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE, help="the (INT8) model bundle (default: the shipped one)")
    bench.add_argument("--float-bundle", type=Path, help="a float bundle to compare with")
    bench.add_argument("--source", help="frames to use instead of the built-in streams")
    bench.add_argument("--stream", action="append", help="built-in stream: '1 face', '3 faces', '10 faces' or 'moving face' "
                       "(repeatable; default the first two)")
    bench.add_argument("--threads", type=positive_int, action="append", help="inference threads (repeatable; default 1 and 2)")
    bench.add_argument("--detector", action="append", choices=list(DETECTORS), help="repeatable; default blazeface and haar")
    bench.add_argument("--every-n", type=positive_int, action="append", help="detect on every n-th frame, follow faces "
                       "in between (repeatable; default 1)")
    bench.add_argument("--frames", type=positive_int, default=200, help="timed frames per combination (default 200)")
    bench.add_argument("--publish-hz", type=positive_float, default=1.0,
                       help="events per second per face while its emotion stays the same, as publish.rate_hz (default 1, "
                       "the device's default; e.g. 1000 publishes an event per face and frame: the worst case)")
    bench.add_argument("--json", type=output_file, help="also write the report here")
    bench.add_argument("--choose", action="store_true", help="instead: time every shipped model variant on this machine "
                       "(at the configured threads, back-end and detector) and pick the most accurate one whose frame "
                       "fits the budget, as model.variant: auto does at start; says why")
    bench.add_argument("--config", type=Path, help="with --choose: the device's configuration (its model.target_fps, "
                       "model.expected_faces, threads, back-end, detector and frame size)")
    bench.add_argument("--target-fps", type=positive_float, help="with --choose: frames per second to keep up with "
                       "(default: model.target_fps, 10)")
    bench.add_argument("--faces", type=positive_int, help="with --choose: faces per frame (default: model.expected_faces, 1)")
    bench.set_defaults(func=bench_command)
    check = sub.add_parser("check", help="validate a bundle, compare its answers with LiteRT's reference kernels and its "
                           "golden outputs, and run the face detector on a known face")
    check.add_argument("--bundle", type=Path, default=SHIPPED_BUNDLE, help="default: the shipped release bundle")
    check.add_argument("--config", type=Path, help="also check the bundle's signature as the device with this "
                       "configuration would: its model.trusted_keys, the revocation list beside them and the key "
                       "changes it received (run it in the device's working folder)")
    check.set_defaults(func=check_command)
    return p


def run_command(args: argparse.Namespace) -> int:
    from edge.device.config import load_config
    from edge.device.runtime import run

    overrides = {"source": {"uri": args.source}, "model": {"bundle": args.bundle},
                 "mqtt": {"broker": args.broker, "device_id": args.device_id}}
    overrides = {s: {k: v for k, v in values.items() if v is not None} for s, values in overrides.items()}
    cfg = load_config(args.config, {s: v for s, v in overrides.items() if v})
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log_level.upper())
    return run(cfg)


def bench_command(args: argparse.Namespace) -> int:
    from edge.device.bench import bench, table

    if args.choose:
        return choose_command(args)
    if args.config or args.target_fps or args.faces:
        raise UserError("--config, --target-fps and --faces go with --choose")
    report = bench(args.bundle, args.float_bundle, args.source, args.threads or [1, 2],
                   args.detector or ["blazeface", "haar"], args.frames, args.json,
                   args.stream or ["1 face", "3 faces"], args.every_n or [1], args.publish_hz)
    print(table(report))
    return 0


def choose_command(args: argparse.Namespace) -> int:
    """``edge bench --choose``: the measurement ``model.variant: auto`` makes at start, as a table."""
    import json

    from edge.device.config import AUTO, load_config
    from edge.device.variants import resolve

    budget = {k: v for k, v in {"target_fps": args.target_fps, "expected_faces": args.faces}.items() if v is not None}
    cfg = load_config(args.config, {"model": {**budget, "variant": AUTO}})
    choice = resolve(cfg)
    print(choice.table())
    if args.json:
        args.json.write_text(json.dumps({"variant": choice.variant, "reason": choice.reason, "threads": cfg.model.threads,
                                         "backend": cfg.model.backend, "detector": cfg.detector.name,
                                         "frame": [cfg.source.width, cfg.source.height],
                                         "timings": [t.__dict__ for t in choice.timings]}, indent=2) + "\n")
    return 0


def check_command(args: argparse.Namespace) -> int:
    from edge.device.config import DetectorConfig, ModelConfig, load_config
    from edge.device.variants import resolve
    from edge.model.bundle import load_bundle
    from edge.model.classifier import EmotionClassifier
    from edge.model.selfcheck import check_detector, self_check

    bundle = load_bundle(args.bundle)
    signer = check_signature(args.bundle, args.config) if args.config else None
    config = load_config(args.config) if args.config else None
    detector, model = (config.detector, config.model) if config else (DetectorConfig(), ModelConfig())
    start = time.perf_counter()  # the model as the configured device runs it: its back-end and providers
    checked = self_check(bundle, lambda b: EmotionClassifier(b, backend=model.backend, providers=model.providers))
    elapsed = time.perf_counter() - start
    faces = check_detector(detector.name, detector.min_score, detector.min_size)
    spec, manifest = bundle.spec, bundle.manifest
    print(f"{args.bundle}: ok - model {bundle.model_id} version {bundle.version}, "
          f"{manifest['input']['dtype']} {spec.input_size}x{spec.input_size} input, classes {', '.join(bundle.classes)}; "
          f"{checked.describe()} ({elapsed:.1f} s); the {detector.name} detector found {faces} face"
          f"{'s' * (faces != 1)} in the known face" + (f"; signed by trusted key {signer}" if signer else ""))
    if config:
        choice = resolve(config)
        print(f"with {args.config} the device's release bundle is " + (
            f"variant {choice.variant}, measured here:\n{choice.table()}" if choice.timings
            else f"variant {choice.variant}: {choice.reason}" if choice.variant else choice.reason))
    return 0


def check_signature(bundle: Path, config: Path) -> str:
    """The signer's key id if the device configured by ``config`` would accept ``bundle``'s signature (revoked keys
    refused, rotated keys trusted, exactly as at its start), else one line saying why not."""
    from edge.device.config import load_config
    from edge.model.trust import device_trust, verify_bundle_files

    model = load_config(config).model
    if not model.trusted_keys:
        raise UserError(f"{config} sets no model.trusted_keys: that device checks no signatures")
    return verify_bundle_files(bundle, device_trust(model.trusted_keys, model.dir))


def main(argv: list[str] | None = None) -> int:
    return commandline.main("edge", parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
