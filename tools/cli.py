"""The ``tools`` command: operate a fleet of devices (sign and flash model bundles, watch their emotion streams)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge import commandline
from edge.commandline import name, output_file, positive_float, positive_int
from edge.errors import UserError
from edge.protocol.client import PROTOCOLS

EPILOG = """examples:
  tools demo --duration 60                          # broker + a device on a sample video + the live table
  tools keygen --out ~/.fer-keys                    # then copy ~/.fer-keys/signing.pub to each device
  tools sign models/fer2013-resnet18-cbam --key ~/.fer-keys/signing.key
  tools flash models/fer2013-resnet18-cbam --device pi-01 --device pi-02 --broker mqtt://broker.local
  MQTT_PASSWORD=... tools flash models/fer2013-resnet18-cbam --device 'kitchen/*' --broker mqtts://ops@broker.local
  tools flash models/fer2013-resnet18-cbam --ssh pi@pi-01.local:fer-edge/models
  tools flash old-bundle --device pi-01 --broker mqtt://broker.local --allow-downgrade ~/.fer-keys/signing.key
  tools rollout models/new --device 'pi-*' --broker mqtt://broker.local --previous models/old \
      --key ~/.fer-keys/signing.key --waves 1,50%,100% --soak 300 --state rollout.json
  tools trust add-key new.pub --key ~/.fer-keys/signing.key --device '*' --broker mqtts://ops%40operator@broker.local
  sudo tools broker-user device pi-01                # prints pi-01's broker password and where it goes
  tools subscribe all --broker mqtt://broker.local --record today.csv --rotate-mb 100
  tools subscribe --broker mqtt://broker.local --store postgresql://fer@db.local/fleet
  tools dashboard --broker mqtt://broker.local --store postgresql://fer@db.local/fleet --port 8080
  tools drift --broker mqtt://broker.local              # retained PREFIX/DEVICE/drift alerts, HA binary sensors
  tools dashboard-user alice --auth-file ~/.fer-dashboard-users    # prints alice's new password once
  tools dashboard --broker mqtt://broker.local --host 0.0.0.0 --auth-file ~/.fer-dashboard-users --allow-host fleet.lan
  tools plot today.csv --out plots/
"""
PREFIX_HELP = "topic prefix the devices use (default fer)"
PROTOCOL_HELP = "MQTT protocol version (default 5; 3.1.1 for brokers without MQTT 5)"


def parser() -> argparse.ArgumentParser:
    parser, commands = commandline.make_parser("tools", __doc__, EPILOG)

    keygen = commands.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                                 description="Write NAME.key (private: keep it on the operator's machine, mode 600) and "
                                 "NAME.pub (give it to the devices, which refuse bundles no trusted key signed).")
    keygen.add_argument("--out", type=Path, required=True, help="folder for the key files")
    keygen.add_argument("--name", type=name, default="signing", help="file name stem (default signing)")
    keygen.set_defaults(func=keygen_command)

    sign = commands.add_parser("sign", help="sign a model bundle (writes its signature.json)",
                               description="Validate the bundle, then sign its manifest and its model's sha256 "
                               "with an Ed25519 private key; the signature goes into BUNDLE/signature.json.")
    sign.add_argument("bundle", type=Path, metavar="BUNDLE")
    sign.add_argument("--key", type=Path, required=True, help="private key file from `tools keygen`")
    sign.set_defaults(func=sign_command)

    flash = commands.add_parser(
        "flash", help="install a signed bundle on devices (MQTT, SSH or a mounted card)",
        description="Over MQTT (--device/--broker): send the bundle in chunks to each device's cmd topic and wait for "
        "each device to verify, self-check and switch to it, or to say why it refused; the old model keeps running on "
        "any failure. Prints one line per device and exits 1 if any device refused or did not answer. "
        "--ssh and --to copy the bundle into the device's incoming/ folder instead; the device installs it, with the "
        "same checks, on its next start or reload.")
    flash.add_argument("bundle", type=Path, metavar="BUNDLE", help="a signed bundle folder (see `tools sign`)")
    where = flash.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", action="append", metavar="ID_GLOB_OR_LABEL",
                       help="device id, a glob over [group/]id such as 'pi-*' or 'kitchen/*' (globs match devices "
                       "that announced themselves on the broker), or label:NAME (see --labels); repeatable")
    where.add_argument("--ssh", metavar="USER@HOST[:PATH]", help="scp to the device's models folder (default: models in "
                       "the remote home)")
    where.add_argument("--to", type=Path, metavar="MODELS_DIR", help="copy to a mounted models folder (an SD card)")
    add_broker_options(flash)
    add_labels(flash)
    flash.add_argument("--timeout", type=positive_float, default=60.0,
                       help="seconds to wait for each device's answer (default 60)")
    flash.add_argument("--allow-downgrade", type=Path, metavar="KEY",
                       help="sign, with this private key (one the devices trust), a permission for devices that run a "
                       "newer release to install this older one; without it they refuse (over MQTT only)")
    flash.set_defaults(func=flash_command)

    trust = commands.add_parser(
        "trust", help="revoke keys or introduce a new one on devices (a signed statement)",
        description="Sign a statement with --key (a key the devices trust) and send it to each device, which keeps it "
        "across restarts. 'revoke ID...': the devices refuse whatever those keys signed, from then on and at every "
        "start. 'add-key NEW.pub': the devices trust the new key too (rotation: introduce the successor with the old "
        "key, flash bundles signed by the new one, then revoke the old one). Prints each device's answer; exits 1 if "
        "any refused or did not answer.")
    trust.add_argument("action", choices=["revoke", "add-key"])
    trust.add_argument("values", nargs="+", metavar="KEY_ID_OR_PUB", help="key ids to revoke, or one .pub file to add")
    trust.add_argument("--key", type=Path, required=True, help="private key that signs the statement")
    trust.add_argument("--device", action="append", required=True, metavar="ID_GLOB_OR_LABEL",
                       help="device id, glob over [group/]id, or label:NAME (see --labels); repeatable")
    add_broker_options(trust, required=True)
    add_labels(trust)
    trust.add_argument("--timeout", type=positive_float, default=20.0, help="seconds to wait for answers (default 20)")
    trust.set_defaults(func=trust_command)

    rollout = commands.add_parser(
        "rollout", help="flash a signed bundle in waves, each held against health gates; roll back on failure",
        description="Plan waves over the devices (sorted by id; --waves 1,50%%,100%%: one device as the canary, then up "
        "to half of all, then the rest; counts and percentages are cumulative). For each wave: measure every device's "
        "event rate, class mix and confidence for --baseline seconds, flash the bundle (as `tools flash`), then watch "
        "it for --soak seconds: a device is healthy when it is online, its stats say the new version with fps > 0, its "
        "event rate is at least half its baseline, no single class takes over (more than 90%% of the events when the "
        "baseline's top class was below that), the class mix stays within a total-variation distance of 0.5 of the "
        "baseline and mean confidence within 0.25. Any refusal or unhealthy device: every device that got the bundle "
        "is flashed back to --previous (with a downgrade permission signed by --key) and the rollout stops, exit 1. "
        "Offline devices are skipped and retried in a later wave, never counted healthy. --state FILE is written after "
        "every step: run the same command again to resume. Progress is published retained on <prefix>/rollout/NAME "
        "(the dashboard shows it). Details: docs/operators/fleet.md.")
    rollout.add_argument("bundle", type=Path, metavar="BUNDLE", help="the signed bundle folder to roll out")
    rollout.add_argument("--device", action="append", required=True, metavar="ID_GLOB_OR_LABEL",
                         help="device id, glob over [group/]id (globs match devices that announced themselves), or "
                         "label:NAME (see --labels); repeatable")
    add_broker_options(rollout, required=True)
    add_labels(rollout)
    rollout.add_argument("--previous", type=Path, metavar="BUNDLE",
                         help="the signed bundle the devices run now: a failed wave goes back to it (needed unless "
                         "--dry-run)")
    rollout.add_argument("--key", type=Path, metavar="KEY", help="operator's private key that signs the permission to "
                         "go back to --previous (devices refuse older versions otherwise)")
    rollout.add_argument("--waves", default="1,50%,100%", help="cumulative wave sizes, counts or percentages of all "
                         "devices (default 1,50%%,100%%)")
    rollout.add_argument("--soak", type=positive_float, default=60.0, metavar="SECONDS",
                         help="seconds each wave is watched after its flash (default 60; at least the devices' "
                         "publish.stats_interval_s)")
    rollout.add_argument("--baseline", type=positive_float, metavar="SECONDS",
                         help="seconds of each device's events measured before its wave (default: --soak, at most 60)")
    rollout.add_argument("--state", type=output_file, metavar="FILE", help="JSON state, rewritten after every step; "
                         "the same command with the same FILE resumes (needed unless --dry-run)")
    rollout.add_argument("--name", type=name, help="rollout name for the progress topic (default BUNDLE-NAME-VERSION)")
    rollout.add_argument("--timeout", type=positive_float, default=120.0,
                         help="seconds to wait for each flash's answers (default 120)")
    rollout.add_argument("--dry-run", action="store_true", help="print the plan (waves, devices, who is offline) and "
                         "change nothing")
    rollout.set_defaults(func=rollout_command)

    broker_user = commands.add_parser(
        "broker-user", help="create a device's, operator's or viewer's broker credentials",
        description="Add or replace a user in the shipped mosquitto configuration's password file and rewrite its ACL "
        "(deploy/mosquitto/fer-edge.conf, docs/security.md): a device reads only its own cmd topic and writes only "
        "its own topics; operators command; viewers only read. Prints the new password once, with the lines to "
        "install on the device or for the operator's tools.")
    broker_user.add_argument("role", choices=["device", "operator", "viewer"])
    broker_user.add_argument("name", type=name, help="the device id, or the person's name")
    broker_user.add_argument("--dir", type=Path, default=Path("/etc/mosquitto/fer-edge"),
                             help="folder of the broker's passwd and acl files (default /etc/mosquitto/fer-edge)")
    broker_user.add_argument("--prefix", type=prefix, default="fer", help=PREFIX_HELP)
    broker_user.set_defaults(func=broker_user_command)

    sub = commands.add_parser(
        "subscribe", help="live table of devices' emotions; record, aggregate per minute",
        description="Show one row per device (online/offline, faces, current emotion and confidence, fps, model "
        "version, the last minute's emotion distribution). Events are de-duplicated by event id. --record writes one "
        "row per face event (.jsonl, .csv, or .parquet with pyarrow) and the per-minute distribution per device to "
        "NAME.minutes.csv beside it; a restart appends. --store writes every event once into PostgreSQL (table "
        "events, per-minute view emotion_minutes). With --record or --store nothing the broker delivered is lost: "
        "the broker keeps this subscriber's MQTT 5 session (its events) while it is down, and a message is "
        "acknowledged only once it is written or in the store's local buffer.")
    sub.add_argument("scope", nargs="?", choices=["all"], help="all devices (the default)")
    one = sub.add_mutually_exclusive_group()
    one.add_argument("--device", help="one device id")
    one.add_argument("--group", metavar="PATTERN", help="a glob over [group/]id, such as 'pi-*' or 'kitchen/*'")
    add_broker_options(sub, required=True)
    sub.add_argument("--record", type=output_file, metavar="FILE", help="recording file: .jsonl, .csv or .parquet")
    sub.add_argument("--rotate-mb", type=positive_float, help="start a new numbered recording file at this size")
    sub.add_argument("--share", type=name, metavar="GROUP",
                     help="MQTT 5 shared subscription: processes with the same GROUP split the events between them")
    sub.add_argument("--store", metavar="URL", help="postgresql://[user@]host[:port]/database (password from $PGPASSWORD, "
                     "~/.pgpass or the file $PGPASSFILE names; a URL with a password is refused)")
    sub.add_argument("--buffer", type=output_file, metavar="FILE", help="--store's local buffer (SQLite; default "
                     "~/.local/state/fer-edge/SESSION.buffer.db)")
    sub.add_argument("--session", type=name, metavar="NAME",
                     help="the persistent MQTT session's name (default: derived from host, --record, --store and --share; "
                     "give each --share process its own)")
    sub.add_argument("--duration", type=positive_float, help="stop after this many seconds (default: until Ctrl-C)")
    add_max_devices(sub, "table")
    sub.set_defaults(func=subscribe_command)

    drift = commands.add_parser(
        "drift", help="watch each device's inputs for drift from its baseline; alert on MQTT and in Home Assistant",
        description="From the events the devices publish (no frames): per device, a baseline of the first "
        "--baseline-events events (class mix, top confidence, face size, faces per second), frozen until SIGHUP or a "
        "restart, against a sliding window of the last --window-events events and --window-s seconds. The score is the "
        "largest population stability index (PSI) of the features; above --threshold the device is drifting: a "
        "retained message on PREFIX/DEVICE/drift says so (and says when it is back below 0.8 x the threshold), read by "
        "the dashboard and by a Home Assistant binary sensor this command announces.")
    add_broker_options(drift, required=True)
    drift.add_argument("--group", metavar="PATTERN", default="*",
                       help="a glob over [group/]id, such as 'pi-*' or 'kitchen/*' (default: every device)")
    drift.add_argument("--baseline-events", type=positive_int, default=2000, metavar="N",
                       help="events in a device's baseline (default 2000)")
    drift.add_argument("--window-events", type=positive_int, default=500, metavar="M",
                       help="events in the sliding window (default 500)")
    drift.add_argument("--window-s", type=positive_int, default=60, metavar="S",
                       help="seconds in the sliding window of faces per second (default 60)")
    drift.add_argument("--threshold", type=positive_float, default=0.25, metavar="PSI",
                       help="alert above this PSI (default 0.25, a significant shift; raise it for small windows)")
    drift.add_argument("--every", type=positive_float, default=10.0, metavar="S",
                       help="re-publish each device's score this often (default 10 s)")
    drift.add_argument("--discovery-prefix", type=prefix, default="homeassistant",
                       help="Home Assistant discovery prefix (default homeassistant)")
    drift.add_argument("--duration", type=positive_float, help="stop after this many seconds (default: until Ctrl-C)")
    add_max_devices(drift, "watch")
    drift.set_defaults(func=drift_command)

    dash = commands.add_parser(
        "dashboard", help="a live web page of the fleet (online, emotion, faces, fps, model, flash status)",
        description="Serve a page showing every device: online/offline, overall emotion and confidence, faces in view, "
        "fps, model version, last seen and flash progress, updated live (a subscriber in this process pushes changes to "
        "the page with Server-Sent Events), and each device's emotion timeline for the last minutes (from --store's "
        "database when given, else from the events this process has seen). No images: none leave the devices. "
        "It answers only requests addressed to localhost, an IP address or an --allow-host name (DNS rebinding), and "
        "with --auth-file asks for a user name and password (a session cookie after that); without --auth-file it "
        "serves on loopback only.")
    add_broker_options(dash, default="mqtt://localhost:1883")
    dash.add_argument("--store", metavar="URL", help="postgresql://... written by `tools subscribe --store`: timelines from it "
                      "(password from $PGPASSWORD, ~/.pgpass or $PGPASSFILE, never in the URL)")
    dash.add_argument("--port", type=port, default=8080, help="HTTP port (default 8080)")
    dash.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for the network, "
                      "which needs --auth-file)")
    dash.add_argument("--auth-file", type=Path, metavar="FILE", help="users who may log in: NAME:HASH lines written by "
                      "`tools dashboard-user` (passwords are never flags: `ps` shows flags)")
    dash.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                      help="a host name the page is reached by (localhost and IP addresses always are); requests for "
                      "other names are refused; repeatable")
    dash.add_argument("--minutes", type=positive_int, default=10, help="timeline length in minutes (default 10)")
    add_max_devices(dash, "page")
    dash.set_defaults(func=dashboard_command)

    user = commands.add_parser(
        "dashboard-user", help="add a dashboard user (or give one a new password) in an --auth-file",
        description="Add NAME to FILE (created mode 600) with a new random password, or replace NAME's password; the "
        "file keeps only a scrypt hash of it. The password is printed once: hand it to the user.")
    user.add_argument("user", type=name, metavar="NAME", help="the user name (letters, digits, '.', '_', '-')")
    user.add_argument("--auth-file", type=output_file, required=True, metavar="FILE", help="the users file")
    user.set_defaults(func=dashboard_user_command)

    plot = commands.add_parser("plot", help="emotion-timeline and distribution PNGs from recordings",
                               description="Read one or more recording files (rotated parts included by listing "
                               "them) and write OUT/timeline.png and OUT/distribution.png.")
    plot.add_argument("recordings", type=Path, nargs="+", metavar="RECORDING")
    plot.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    plot.set_defaults(func=plot_command)

    demo = commands.add_parser(
        "demo", help="the whole system on this machine: broker, a device on a sample video, the live table",
        description="Start a local MQTT broker (mosquitto where installed, else an embedded one), one device running "
        "`edge run` on a generated video of a real face (scikit-image's astronaut) with the shipped model bundle, and "
        "the subscriber's live table. Stops cleanly after --duration seconds or on Ctrl-C.")
    demo.add_argument("--duration", type=positive_float, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--bundle", type=Path, help="model bundle for the device (default: the shipped release model)")
    demo.set_defaults(func=demo_command)
    return parser


def keygen_command(args: argparse.Namespace) -> int:
    from tools.signing import keygen

    private, public = keygen(args.out, args.name)
    print(f"wrote {private} (keep it secret) and {public} (copy it to the devices' trusted keys)")
    return 0


def sign_command(args: argparse.Namespace) -> int:
    from tools.signing import sign_bundle

    print(f"signed {args.bundle} with key {sign_bundle(args.bundle, args.key)}")
    return 0


def subscribe_command(args: argparse.Namespace) -> int:
    from edge.protocol.topics import Target
    from tools.subscribe import subscribe

    if args.scope and (args.device is not None or args.group is not None):
        raise UserError("name one of: all, --device ID, --group PATTERN")
    target = Target.parse(next((t for t in (args.device, args.group) if t is not None), "*"))
    subscribe(broker_config(args), target, args.prefix, args.record, args.rotate_mb, args.share, args.duration,
              protocol=args.protocol, store=args.store, session=args.session, buffer=args.buffer,
              max_devices=args.max_devices)
    return 0


def drift_command(args: argparse.Namespace) -> int:
    from edge.protocol.topics import Target
    from tools.drift import summary, watch

    drift = watch(broker_config(args), args.prefix, args.baseline_events, args.window_events, args.window_s,
                  args.threshold, args.every, args.duration, args.protocol, Target.parse(args.group),
                  args.max_devices, args.discovery_prefix)
    print(f"tools drift: {summary(drift)}")
    return 0


def dashboard_command(args: argparse.Namespace) -> int:
    from tools.dashboard import serve

    serve(broker_config(args), args.port, args.host, args.store, args.prefix, args.protocol, args.minutes,
          auth_file=args.auth_file, allow_hosts=args.allow_host, max_devices=args.max_devices)
    return 0


def dashboard_user_command(args: argparse.Namespace) -> int:
    from tools.access import add_user

    password = add_user(args.auth_file, args.user)
    print(f"user {args.user} in {args.auth_file}; password (shown once, stored only hashed): {password}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from tools.demo import demo

    return demo(args.bundle, args.duration)


def plot_command(args: argparse.Namespace) -> int:
    from tools.plot import plot

    for path in plot(args.recordings, args.out):
        print(f"wrote {path}")
    return 0


def flash_command(args: argparse.Namespace) -> int:
    from tools import flash
    from tools.labels import device_targets

    if args.to:
        print(f"copied to {flash.copy_to(args.bundle, args.to)}: the device installs it on its next start or reload")
        return 0
    if args.ssh:
        print(f"copied to {flash.copy_ssh(args.bundle, args.ssh)}: the device installs it on its next start or reload")
        return 0
    if not args.broker:
        raise UserError("--device needs --broker mqtt://host[:port]")

    targets = device_targets(args.device, args.labels)
    results = flash.flash_mqtt(args.bundle, targets, broker_config(args), args.prefix, args.timeout,
                               protocol=args.protocol, downgrade_key=args.allow_downgrade)
    print(flash.summary(results))
    failed = [r for r in results if r.status != "installed"]
    if failed:
        print(f"tools: error: {len(failed)} of {len(results)} devices did not install the bundle", file=sys.stderr)
    return 1 if failed else 0


def trust_command(args: argparse.Namespace) -> int:
    from tools import trust
    from tools.labels import device_targets

    if args.action == "add-key" and len(args.values) != 1:
        raise UserError("add-key takes one public key file")
    targets = device_targets(args.device, args.labels)  # before the private key is read
    signed = trust.statement(args.action, args.values, args.key)
    answers = trust.send(signed, targets, broker_config(args), args.prefix,
                         args.timeout, args.protocol)
    for device, answer in sorted(answers.items()):
        print(f"{device}: {answer}")
    failed = [d for d, a in answers.items() if a != "ok"]
    if failed:
        print(f"tools: error: {len(failed)} of {len(answers)} devices did not take the statement", file=sys.stderr)
    return 1 if failed else 0


def rollout_command(args: argparse.Namespace) -> int:
    from tools import rollout
    from tools.labels import device_targets

    sizes = rollout.parse_waves(args.waves)
    label = rollout.check_name(args.name) if args.name else rollout.default_name(args.bundle)
    if not args.dry_run:
        missing = [flag for flag, value in (("--previous", args.previous), ("--key", args.key), ("--state", args.state))
                   if value is None]
        if missing:
            raise UserError(f"rollout needs {', '.join(missing)} (or --dry-run to see the plan)")
    from tools.flash import read_signed_bundle

    for folder in (args.bundle, args.previous):
        if folder is not None:
            read_signed_bundle(folder)  # a bad bundle fails here, before any device is touched
    config = broker_config(args)
    seen = rollout.resolve(config, args.prefix, device_targets(args.device, args.labels), args.protocol)
    state = rollout.start(None if args.dry_run else args.state, label, args.bundle, args.previous, list(seen), sizes)
    if args.dry_run:
        print(f"rollout {label}: {state['bundle']['name']} {state['bundle']['version']} to {len(seen)} devices")
        print(rollout.describe_plan(state["waves"], seen))
        return 0
    devices = sorted(state["devices"])
    fleet = rollout.MqttFleet(config, args.prefix, label, devices, args.protocol, args.timeout)
    try:
        run = rollout.Rollout(state, args.state, fleet, args.soak, args.baseline or min(args.soak, 60.0), args.key)
        run.step()
        state = run.run()
    finally:
        fleet.close()
    print(rollout.report(state))
    if state["status"] != "passed":
        print(f"tools: error: rollout {state['status']}: {state['reason']}", file=sys.stderr)
    return 0 if state["status"] == "passed" else 1


def broker_user_command(args: argparse.Namespace) -> int:
    from tools.credentials import add_user, install_lines

    user, password = add_user(args.dir, args.role, args.name, args.prefix)
    print(install_lines(args.role, user, password, args.dir))
    return 0


def broker_config(args: argparse.Namespace):
    """The one MQTT config of a tools command, from its flags (TLS CA, client certificate and key honoured)."""
    from tools.mqtt_client import broker_config as build

    return build(args.broker, args.protocol, args.tls_ca, args.tls_cert, args.tls_key)


def add_broker_options(command: argparse.ArgumentParser, default: str | None = None, required: bool = False) -> None:
    """--broker, --prefix, --protocol and the TLS files, the same for every command that talks to devices."""
    command.add_argument("--broker", default=default, required=required,
                         help="mqtt[s]://[user@]host[:port]; the password comes from $MQTT_PASSWORD"
                         + (f" (default {default})" if default else ""))
    command.add_argument("--prefix", default="fer", type=prefix, help=PREFIX_HELP)
    command.add_argument("--protocol", choices=PROTOCOLS, default="5", help=PROTOCOL_HELP)
    command.add_argument("--tls-ca", metavar="FILE", help="CA certificate for mqtts:// (default: the system's CAs)")
    command.add_argument("--tls-cert", metavar="FILE", help="client certificate for mqtts://")
    command.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key")


def add_labels(command: argparse.ArgumentParser) -> None:
    command.add_argument("--labels", type=Path, metavar="FILE",
                         help="YAML file of device labels for --device label:NAME ({labels: {canary: [pi-07], lobby: "
                         "[lobby-1, 'kitchen/*']}}); see docs/operators/fleet.md")


def add_max_devices(command: argparse.ArgumentParser, where: str) -> None:
    """--max-devices: the bound on the devices a tool keeps a view of, whatever names are published."""
    from tools.inbound import MAX_DEVICES

    command.add_argument("--max-devices", type=positive_int, default=MAX_DEVICES, metavar="N",
                         help=f"devices the {where} keeps (default {MAX_DEVICES}); beyond it the one heard from longest "
                         "ago is dropped, so published names cannot exhaust memory")


def port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def prefix(text: str) -> str:
    from edge.protocol.topics import check_prefix

    try:
        return check_prefix(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    return commandline.main("tools", parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
