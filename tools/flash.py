"""Put a signed bundle on devices: over MQTT (acknowledged), or by copying it for the device to pick up.

Over MQTT the bundle travels as the flash protocol of :mod:`edge.protocol.flash` on each device's ``cmd``
topic (QoS 1), to all devices at once; each device answers on its ``ota`` topic. ``flash`` waits for
every answer, resends the chunks a device reports missing, and fails when any device refused or
stayed silent. ``--ssh`` and ``--to`` copy the bundle into the device's ``incoming/`` folder under a
hidden name and rename it when complete; the device verifies and installs it on its next start or
reload, exactly as if it had arrived over MQTT.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from edge.errors import UserError, printable
from edge.model.bundle import load_bundle
from edge.model.trust import downgrade_permission, sign_statement
from edge.protocol.client import MqttConfig
from edge.protocol.flash import COMMIT, INCOMING, SIGNATURE_FILE, chunk_message, messages, pack, parse_ranges
from edge.protocol.payloads import PayloadError
from edge.protocol.topics import AVAILABILITY, CMD, NAME, OFFLINE, OTA, Target, device_topic
from tools.inbound import Gate, parse_payload
from tools.mqtt_client import Connection
from tools.signing import load_private_key

CHUNK_BYTES = 64 * 1024
DISCOVERY_S = 1.0
COMMIT_ROUNDS = 3
PUBLISH_TIMEOUT_S = 30.0


@dataclass
class DeviceFlash:
    """One device's progress through a transfer."""

    path: str
    status: str = "waiting"  # waiting | ready | committing | installed | refused | timeout | offline
    detail: str = ""
    missing: list[int] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ("ready", "committing")


def read_signed_bundle(folder: Path) -> tuple[str, bytes]:
    """Validate the bundle here first, so a bad one fails on the operator's machine, not on the fleet."""
    bundle = load_bundle(folder)
    for name in (folder.resolve().name, bundle.manifest["name"]):
        if not NAME.fullmatch(name):
            raise UserError(f"bundle name {name!r} is not allowed (letters, digits, '.', '_', '-'; no paths)")
    if not (folder / SIGNATURE_FILE).exists():
        raise UserError(f"bundle {folder} is not signed: run `tools sign {folder} --key KEY` first")
    return bundle.manifest["name"], pack(folder)


def resolve_devices(conn: Connection, prefix: str, targets: list[Target]) -> dict[str, str]:
    """Device paths for the targets with what their retained availability says (``?`` when nothing).

    Globs match the devices that announced themselves; named devices are taken as given."""
    devices = {t.text: "?" for t in targets if not t.is_pattern}
    patterns = [t for t in targets if t.is_pattern]
    if patterns:
        conn.subscribe(*(t.topic_filter(prefix, AVAILABILITY) for t in patterns))
        found, deadline, gate = {}, time.monotonic() + DISCOVERY_S, Gate(prefix, (AVAILABILITY,))
        while (message := conn.get(deadline - time.monotonic())) is not None:
            announced = gate.admit(*message)  # anyone may publish there: only online/offline of a real name counts
            if announced is not None and any(t.device_of(prefix, message[0]) for t in patterns):
                found[announced.device] = announced.payload
        if not found:
            raise UserError(f"no device matches {', '.join(t.text for t in patterns)} under {prefix}/")
        devices.update(found)
    return devices


def flash_mqtt(folder: Path, targets: list[Target], broker: MqttConfig | str, prefix: str = "fer",
               timeout: float = 60.0, chunk_bytes: int = CHUNK_BYTES, protocol: str = "5",
               downgrade_key: Path | None = None) -> list[DeviceFlash]:
    """Send the bundle to every target device and wait for each one's verdict.

    ``downgrade_key``: the operator's private key; it signs a permission for devices that run a newer bundle to
    install this one (without it they refuse to go back, so a captured old release cannot be replayed)."""
    name, payload = read_signed_bundle(folder)
    transfer = hashlib.sha256(payload).hexdigest()[:16]  # the same bundle, the same id: a rerun resumes
    permission = None if downgrade_key is None else sign_statement(load_private_key(downgrade_key),
                                                                  downgrade_permission(folder))
    begin = next(messages(payload, name, transfer, chunk_bytes, allow_downgrade=permission))
    chunks = begin["chunks"]
    conn = Connection(broker, "tools-flash", protocol=protocol)
    try:
        devices = {p: DeviceFlash(p) if seen != OFFLINE else DeviceFlash(p, OFFLINE, "announced itself offline")
                   for p, seen in resolve_devices(conn, prefix, targets).items()}
        conn.subscribe(*(device_topic(f"{prefix}/{p}", OTA) for p in devices))
        for device in devices.values():
            if device.status == "waiting":
                conn.publish(device_topic(f"{prefix}/{device.path}", CMD), begin)
        _await(conn, prefix, transfer, chunks, devices, "waiting", timeout)
        for _ in range(COMMIT_ROUNDS):
            _send_chunks(conn, prefix, transfer, payload, chunk_bytes, devices)
            for device in devices.values():
                if device.active:
                    device.status = "committing"
                    conn.publish(device_topic(f"{prefix}/{device.path}", CMD), {"cmd": COMMIT, "transfer": transfer})
            _await(conn, prefix, transfer, chunks, devices, "committing", timeout)
            if not any(d.active for d in devices.values()):
                break
        for device in devices.values():
            if device.active:
                device.status, device.detail = "refused", f"chunks still missing after {COMMIT_ROUNDS} rounds"
    finally:
        conn.close()
    return list(devices.values())


def _send_chunks(conn: Connection, prefix: str, transfer: str, payload: bytes, chunk_bytes: int,
                 devices: dict) -> None:
    sends = [(d, i) for d in devices.values() if d.active for i in d.missing]
    with tqdm(total=len(sends), unit="chunk", desc="flash", leave=False) as bar:
        pending = []
        for device, index in sends:
            pending.append(conn.publish(device_topic(f"{prefix}/{device.path}", CMD),
                                        chunk_message(payload, transfer, index, chunk_bytes)))
        for info in pending:
            if info.rc == 0:  # else not sent (connection lost): the device reports it missing at commit
                info.wait_for_publish(PUBLISH_TIMEOUT_S)
            bar.update()
    for device in devices.values():
        device.missing = []


def _await(conn: Connection, prefix: str, transfer: str, chunks: int, devices: dict[str, DeviceFlash], status: str,
           timeout: float) -> None:
    """Read ``ota`` answers until no device is in ``status`` any more or the timeout passes."""
    deadline = time.monotonic() + timeout
    while any(d.status == status for d in devices.values()):
        message = conn.get(deadline - time.monotonic())
        if message is None:
            for device in devices.values():
                if device.status == status:
                    device.status, device.detail = "timeout", f"no answer within {timeout:g} s (device offline?)"
            return
        topic, body = message
        try:
            answer = parse_payload(OTA, body)
        except PayloadError:
            continue  # not a device's answer (anyone may publish on the broker)
        device = devices.get(topic[len(prefix) + 1:].rpartition("/")[0])
        if device is None or device.status != status or answer["transfer"] != transfer:
            continue  # another transfer's answer, or a device that already has its verdict
        kind = answer.get("status")
        if kind in ("ready", "incomplete"):
            try:
                missing = parse_ranges(answer.get("missing", ""), chunks)
            except UserError:
                continue  # ranges outside this transfer: not this device's answer to it
            device.status, device.missing = "ready", missing
        elif kind == "installed":
            device.status, device.detail = "installed", f"model {answer.get('model_id')} version {answer.get('version')}"
        elif kind == "refused":
            device.status, device.detail = "refused", str(answer.get("reason"))


def copy_to(folder: Path, models_dir: Path) -> Path:
    """Copy the bundle into ``<models_dir>/incoming/`` (a mounted SD card, say) so it appears complete or not at all."""
    read_signed_bundle(folder)
    incoming = models_dir / INCOMING
    if not models_dir.is_dir():
        raise UserError(f"{models_dir} is not a folder: --to takes the device's models folder")
    incoming.mkdir(exist_ok=True)
    partial, final = incoming / f".{folder.name}.partial", incoming / folder.name
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(folder, partial)
    for path in partial.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    return final


def copy_ssh(folder: Path, destination: str) -> str:
    """``scp`` the bundle to ``user@host[:models_dir]`` (default ``models`` in the remote home), then rename it there."""
    read_signed_bundle(folder)
    host, _, models_dir = destination.partition(":")
    if not host or host.startswith("-"):
        raise UserError(f"--ssh {destination!r} is not user@host[:path]")
    incoming = f"{models_dir or 'models'}/{INCOMING}"
    partial, final = f"{incoming}/.{folder.name}.partial", f"{incoming}/{folder.name}"
    steps = [["ssh", host, f"mkdir -p {shlex.quote(incoming)} && rm -rf {shlex.quote(partial)}"],
             ["scp", "-rq", str(folder), f"{host}:{partial}"],
             ["ssh", host, f"rm -rf {shlex.quote(final)} && mv {shlex.quote(partial)} {shlex.quote(final)}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"{step[0]} to {host} failed: {last}")
    return f"{host}:{final}"


def summary(results: list[DeviceFlash]) -> str:
    width = max(len(r.path) for r in results)
    return "\n".join(f"{r.path:<{width}}  {r.status:<9}  {printable(r.detail, 2000)}" for r in results)

