"""The operator's view of a fleet: two real ``edge run`` processes on the astronaut video and a real mosquitto.

Flash a signed update to both, a tampered one (refused by both, old model still answering) and one
that fails the device's self-check (rolled back); record what the devices publish and plot it.
"""

from __future__ import annotations

import shutil
import time

import pytest
from fixtures.bundles import set_version
from fixtures.mqtt import Device, device_config

from edge.protocol.payloads import decode, validator
from edge.protocol.topics import Target
from tools.cli import main
from tools.mqtt_client import Connection
from tools.recording import read_rows
from tools.subscribe import subscribe

DEVICES = ("pi-01", "pi-02")


@pytest.fixture
def fleet(broker, bundles, keys, video, tmp_path):
    """Two devices that trust ``keys``; each installs ``v1`` from its incoming/ folder at start."""
    devices = {}
    for device in DEVICES:
        models = tmp_path / device / "models"
        shutil.copytree(bundles["v1"], models / "incoming" / "tiny")
        config = device_config(tmp_path / device, models, video, broker.url,
                               model={"bundle": "", "dir": str(models), "trusted_keys": [str(keys[1])]},
                               mqtt={"device_id": device})
        devices[device] = Device(config)
    yield devices
    for device in devices.values():
        device.stop()


def answering(watch: Connection, versions: dict[str, str], devices: dict, timeout: float = 90) -> None:
    """Wait until every device publishes a (schema-valid) event made by the expected model version."""
    waiting, end = dict(versions), time.monotonic() + timeout
    while waiting:
        message = watch.get(end - time.monotonic())
        if message is None:
            logs = "\n".join(devices[d].text()[-1500:] for d in waiting)
            raise AssertionError(f"no event from {sorted(waiting)} with model {waiting} in {timeout} s\n{logs}")
        event = decode(message[1])
        validator("events").validate(event)
        if waiting.get(event["device"]) == event["model"]["version"]:
            del waiting[event["device"]]


def flash(*args: str) -> int:
    return main(["flash", *map(str, args), "--timeout", "90"])


def test_fleet_flash_refusals_and_recording(broker, fleet, bundles, broken_bundle, tmp_path, capsys):
    watch = Connection(broker.url, "test-watch")
    watch.subscribe("fer/+/events")
    try:
        answering(watch, dict.fromkeys(DEVICES, "v1"), fleet)
        assert flash(bundles["v2"], "--device", "pi-*", "--broker", broker.url) == 0
        assert capsys.readouterr().out.count("version v2") == 2
        answering(watch, dict.fromkeys(DEVICES, "v2"), fleet)

        tampered = set_version(bundles["v1"], "v3", key=None)  # signed as v1, manifest now says v3
        assert flash(tampered, "--device", "pi-01", "--device", "pi-02", "--broker", broker.url) == 1
        assert capsys.readouterr().out.count("signature does not match") == 2
        assert flash(broken_bundle, "--device", "pi-01", "--broker", broker.url) == 1
        assert "self-check failed" in capsys.readouterr().out
        answering(watch, dict.fromkeys(DEVICES, "v2"), fleet)  # the old model still answers on both
        assert "refused: self-check failed" in fleet["pi-01"].text()  # and the device's log says why
    finally:
        watch.close()

    result = subscribe(broker.url, Target.parse("*"), record=tmp_path / "rec.jsonl", duration=4)
    rows = read_rows([tmp_path / "rec.jsonl"])
    assert {r["device"] for r in rows} == set(DEVICES) and {r["model_version"] for r in rows} == {"v2"}
    assert len({r["event_id"] for r in rows}) == len(rows)
    assert all(result.devices[d].online == "online" and result.devices[d].fps for d in DEVICES)
    assert main(["plot", str(tmp_path / "rec.jsonl"), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "timeline.png").exists() and (tmp_path / "plots" / "distribution.png").exists()
