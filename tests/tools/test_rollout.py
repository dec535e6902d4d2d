"""``tools rollout``: the plan, the health gates, the state file and its resume (units), and a real fleet of ``edge run``
processes on a real mosquitto: a bundle that answers one class for every face stops at its canary and is rolled
back; a good one reaches every device."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from fixtures.bundles import set_version, signed_copy
from fixtures.mqtt import Device, device_config

from edge.errors import UserError
from edge.model.bundle import MANIFEST_FILE, MODEL_FILE, sha256_bytes, tensor_description
from edge.model.litert import load_interpreter
from edge.protocol.payloads import decode, validator
from tools import rollout
from tools.cli import main
from tools.mqtt_client import Connection
from tools.rollout import Limits, Observation, Rollout, WaveSize, judge, parse_waves, plan
from tools.signing import sign_bundle

# ------------------------------------------------------------------------------------------------------------ plan


def test_waves_from_counts_and_percentages():
    assert parse_waves("1,50%,100%") == [WaveSize(1, False), WaveSize(50, True), WaveSize(100, True)]
    devices = [f"pi-{n:02d}" for n in range(10, 0, -1)]
    waves = plan(devices, parse_waves("1,50%,100%"))
    assert waves == [["pi-01"], [f"pi-{n:02d}" for n in range(2, 6)], [f"pi-{n:02d}" for n in range(6, 11)]]
    assert plan(list(reversed(devices)), parse_waves("1,50%,100%")) == waves  # deterministic, whatever the order
    assert plan(devices, parse_waves("2,5")) == [devices[::-1][:2], devices[::-1][2:5], devices[::-1][5:]]  # the rest
    assert plan(["a", "b"], parse_waves("1,50%,100%")) == [["a"], ["b"]]  # 50% of 2 adds nobody: skipped
    assert plan(["a"], parse_waves("1,50%")) == [["a"]]
    assert plan(["a", "b", "c"], parse_waves("34%")) == [["a", "b"], ["c"]]  # ceil
    for bad in ("0", "1,,2", "150%", "x", "-1", "nan%", "0%"):
        with pytest.raises(UserError):
            parse_waves(bad)


# ----------------------------------------------------------------------------------------------------------- gates

def observed(labels: list[str], version: str = "2", confidence: float = 0.6, seconds: float = 10, fps: float = 5.0,
             availability: str | None = "online") -> Observation:
    return Observation(seconds, [(label, confidence, version) for label in labels], [(fps, version)], availability)


MIXED = ["happy"] * 10 + ["neutral"] * 6 + ["sad"] * 4


def test_gates_healthy_and_one_class():
    base = rollout.baseline(observed(MIXED, version="1"))
    assert base["events"] == 20 and base["rate"] == 2.0 and base["labels"]["happy"] == 0.5
    healthy, why = judge(observed(MIXED), "2", base)
    assert healthy, why
    healthy, why = judge(observed(["disgust"] * 20, confidence=0.94), "2", base)
    assert not healthy and "one class for every face" in why
    healthy, why = judge(observed(["sad"] * 12 + ["fear"] * 8), "2", base)  # no class dominates, but another mix
    assert not healthy and "class mix" in why
    healthy, why = judge(observed(MIXED[::4]), "2", base)
    assert not healthy and "event rate" in why
    healthy, why = judge(observed(MIXED, confidence=0.95), "2", base)
    assert not healthy and "confidence" in why
    single = rollout.baseline(observed(["happy"] * 20, version="1"))  # one class before: collapse is not a change
    assert judge(observed(["happy"] * 20), "2", single)[0]
    assert not judge(observed(["sad"] * 20), "2", single)[0]  # but another single class is


def test_gates_offline_never_healthy_and_version_needed():
    base = rollout.baseline(observed(MIXED, version="1"))
    for availability in ("offline", None):
        healthy, why = judge(observed(MIXED, availability=availability), "2", base)
        assert not healthy and "not online" in why
    assert not judge(observed(MIXED, version="1"), "2", base)[0]  # still the old version: stats say so
    healthy, why = judge(observed(MIXED, fps=0), "2", base)
    assert not healthy and "fps 0" in why
    quiet = rollout.baseline(observed(["happy"] * 3, version="1"))  # no faces to judge by: only the device gates
    assert judge(observed([]), "2", quiet)[0]
    assert Limits().min_events == 10


# ----------------------------------------------------------------------------------------------- state machine

class FakeFleet:
    """Devices whose behaviour after a flash the test decides; ``crash_after`` raises once that many flashes ran."""

    def __init__(self, online: set[str], bad: bool = False, crash_after: int | None = None):
        self.online, self.bad, self.crash_after = online, bad, crash_after
        self.version: dict[str, str] = {}
        self.flashed: list[tuple[str, tuple[str, ...], bool]] = []
        self.published: list[dict] = []

    def availability(self, devices):
        return {d: "online" if d in self.online else "offline" for d in devices}

    def observe(self, devices, seconds):
        out = {}
        for d in devices:
            version = self.version.get(d, "1")
            labels = ["disgust"] * 20 if self.bad and version == "2" else MIXED
            out[d] = observed(labels, version, availability="online" if d in self.online else "offline")
        return out

    def flash(self, folder, devices, downgrade_key):
        if self.crash_after is not None and len(self.flashed) >= self.crash_after:
            self.crash_after = None
            raise KeyboardInterrupt("crash")
        self.flashed.append((folder.name, tuple(devices), downgrade_key is not None))
        for d in devices:
            self.version[d] = "1" if folder.name == "old" else "2"
        return {d: ("installed", "") for d in devices}

    def publish(self, message):
        validator("rollout").validate(message)
        self.published.append(message)


def state_for(devices, waves="1,50%,100%"):
    bundle = {"path": "new", "name": "tiny", "version": "2", "manifest_sha256": "a" * 64}
    previous = {"path": "old", "name": "tiny", "version": "1", "manifest_sha256": "b" * 64}
    return rollout.new_state("r1", bundle, previous, plan(devices, parse_waves(waves)))


DEVICES = ["pi-01", "pi-02", "pi-03", "pi-04"]


def test_good_rollout_offline_device_retried_and_never_healthy(tmp_path):
    fleet = FakeFleet({"pi-01", "pi-02", "pi-04"})  # pi-03 is offline
    state = Rollout(state_for(DEVICES), tmp_path / "s.json", fleet, 1, 1, None, say=lambda line: None).run()
    assert state["status"] == "incomplete" and state["deferred"] == ["pi-03"]
    assert state["devices"]["pi-03"]["status"] == "offline"
    assert {d: v["status"] for d, v in state["devices"].items() if d != "pi-03"} == dict.fromkeys(
        ["pi-01", "pi-02", "pi-04"], "healthy")
    assert fleet.flashed[0] == ("new", ("pi-01",), False)  # the canary alone first
    assert all("pi-03" not in devices for _, devices, _ in fleet.flashed)
    fleet.online.add("pi-03")  # back: the same command again retries it
    state = Rollout(rollout.load_state(tmp_path / "s.json"), tmp_path / "s.json", fleet, 1, 1, None,
                    say=lambda line: None).run()
    assert state["status"] == "passed" and state["devices"]["pi-03"]["status"] == "healthy"
    assert fleet.published[-1]["status"] == "passed"


def test_offline_canary_replaced_by_an_online_device(tmp_path):
    fleet = FakeFleet({"pi-02", "pi-03", "pi-04"})
    state = Rollout(state_for(DEVICES), None, fleet, 1, 1, None, say=lambda line: None).run()
    assert fleet.flashed[0] == ("new", ("pi-02",), False)  # still one device in the canary wave
    assert state["devices"]["pi-01"]["status"] == "offline" and state["status"] == "incomplete"


def test_one_class_bundle_stops_at_the_canary_and_rolls_back(tmp_path):
    fleet = FakeFleet(set(DEVICES), bad=True)
    state = Rollout(state_for(DEVICES), tmp_path / "s.json", fleet, 1, 1, Path("k"), say=lambda line: None).run()
    assert state["status"] == "rolled_back"
    assert fleet.flashed == [("new", ("pi-01",), False), ("old", ("pi-01",), True)]
    assert state["devices"]["pi-01"]["status"] == "rolled_back"
    assert "one class" in state["devices"]["pi-01"]["detail"]
    assert all(state["devices"][d]["status"] == "pending" for d in DEVICES[1:])
    assert json.loads((tmp_path / "s.json").read_text())["status"] == "rolled_back"
    again = Rollout(rollout.load_state(tmp_path / "s.json"), None, fleet, 1, 1, Path("k"), say=lambda line: None).run()
    assert again["status"] == "rolled_back" and len(fleet.flashed) == 2  # finished: a rerun changes nothing


def test_crash_and_resume_from_the_state_file(tmp_path):
    path = tmp_path / "s.json"
    fleet = FakeFleet(set(DEVICES), crash_after=1)  # dies while flashing wave 2
    with pytest.raises(KeyboardInterrupt):
        Rollout(state_for(DEVICES), path, fleet, 1, 1, None, say=lambda line: None).run()
    saved = rollout.load_state(path)
    assert (saved["wave"], saved["phase"], saved["status"]) == (1, "flash", "running")
    assert saved["devices"]["pi-01"]["status"] == "healthy" and saved["baselines"]["pi-02"]["events"] == 20
    assert not list(tmp_path.glob(".s.json.*"))  # written atomically: no temporary file left
    state = Rollout(saved, path, fleet, 1, 1, None, say=lambda line: None).run()
    assert state["status"] == "passed"
    assert [devices for _, devices, _ in fleet.flashed] == [("pi-01",), ("pi-02",), ("pi-03", "pi-04")]
    with pytest.raises(UserError, match="not a rollout state"):
        path.write_text("[]")
        rollout.load_state(path)


def test_state_belongs_to_its_bundle(tmp_path, bundles):
    path = tmp_path / "s.json"
    rollout.save_state(path, rollout.start(None, "r1", bundles["v1"], None, DEVICES, parse_waves("1")))
    assert rollout.start(path, "r1", bundles["v1"], None, DEVICES, parse_waves("1"))["name"] == "r1"
    with pytest.raises(UserError, match="not this one"):
        rollout.start(path, "r1", bundles["v2"], None, DEVICES, parse_waves("1"))
    for bad in ("events", "a/b", "", "-x"):
        with pytest.raises(UserError):
            rollout.check_name(bad)


# ------------------------------------------------------------------------------------------- a real fleet, e2e

FLEET = tuple(f"pi-{i:02d}" for i in range(1, int(os.environ.get("FER_TEST_ROLLOUT_DEVICES", "4")) + 1))
"""Four prove the point in every run of the suite on a 2-core machine; ``FER_TEST_ROLLOUT_DEVICES=10`` runs the same
test on ten (docs/operators/fleet.md quotes that run)."""


def one_class_bundle(tiny_bundle: Path, folder: Path, version: str, key: Path) -> Path:
    """A signed bundle that passes the self-check (valid probabilities, XNNPACK = reference) but answers 'disgust'
    (0.94) for every face: tests/data/one-class.tflite (tests/data/make_test_bundles.py)."""
    manifest = json.loads((tiny_bundle / MANIFEST_FILE).read_text())
    model_bytes = (tiny_bundle.parent / "one-class.tflite").read_bytes()
    interpreter = load_interpreter(model_bytes)
    manifest.pop("golden", None)
    manifest.update(name="oneclass", version=version, input=tensor_description(interpreter.get_input_details()[0]),
                    output=tensor_description(interpreter.get_output_details()[0]),
                    tflite={"sha256": sha256_bytes(model_bytes), "bytes": len(model_bytes)})
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(model_bytes)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    sign_bundle(folder, key)
    return folder


@pytest.fixture
def releases(tiny_bundle, keys, tmp_path) -> dict[str, Path]:
    """Release-ordered bundles: ``old`` (installed), ``bad`` (newer, one class for every face), ``good`` (newest)."""
    old = set_version(signed_copy(tiny_bundle, tmp_path / "tiny-old", keys[0]), "2026.12.1", keys[0])
    good = set_version(signed_copy(tiny_bundle, tmp_path / "tiny-good", keys[0]), "2026.12.3", keys[0])
    return {"old": old, "bad": one_class_bundle(tiny_bundle, tmp_path / "oneclass", "2026.12.2", keys[0]), "good": good}


@pytest.fixture
def fleet(broker, releases, keys, video, tmp_path):
    devices = {}
    for device in FLEET:
        models = tmp_path / device / "models"
        shutil.copytree(releases["old"], models / "incoming" / "tiny")
        config = device_config(tmp_path / device, models, video, broker.url,
                               source={"fps": 8}, publish={"rate_hz": 4, "stats_interval_s": 1},
                               model={"bundle": "", "dir": str(models), "trusted_keys": [str(keys[1])]},
                               mqtt={"device_id": device})
        devices[device] = Device(config)
    yield devices
    for device in devices.values():
        device.stop()


def answering(watch: Connection, versions: dict[str, str], devices: dict, timeout: float = 120) -> None:
    waiting, end = dict(versions), time.monotonic() + timeout
    while waiting:
        message = watch.get(end - time.monotonic())
        if message is None:
            logs = "\n".join(devices[d].text()[-1500:] for d in waiting)
            raise AssertionError(f"no event from {sorted(waiting)} with model {waiting} in {timeout} s\n{logs}")
        if not message[0].endswith("/events"):
            continue
        event = decode(message[1])
        if waiting.get(event["device"]) == event["model"]["version"]:
            del waiting[event["device"]]


def test_rollout_on_a_real_fleet(broker, fleet, releases, keys, tmp_path, capsys):
    watch = Connection(broker.url, "test-watch")
    watch.subscribe("fer/+/events", "fer/+/cmd", "fer/rollout/#")
    common = ["--device", "pi-*", "--broker", broker.url, "--previous", str(releases["old"]), "--key", str(keys[0]),
              "--waves", "1,50%,100%", "--soak", "8", "--baseline", "6", "--timeout", "120"]
    try:
        answering(watch, dict.fromkeys(FLEET, "2026.12.1"), fleet)
        assert main(["rollout", str(releases["bad"]), *common, "--dry-run"]) == 0
        out = capsys.readouterr().out
        half = -(-len(FLEET) // 2)  # the waves 1, 50%, 100%: one device, up to half of all, the rest
        assert "wave 1: 1 device: pi-01" in out and f"wave 3: {len(FLEET) - half} devices: {', '.join(FLEET[half:])}" in out
        assert not (tmp_path / "bad.json").exists()
        labels = tmp_path / "labels.yaml"  # the same plan for a label: the operator's file says who carries it
        labels.write_text(yaml.safe_dump({"labels": {"canary": [FLEET[-1]], "first-two": FLEET[:2]}}))
        assert main(["rollout", str(releases["bad"]), *common[2:], "--device", "label:canary", "--device",
                     "label:first-two", "--labels", str(labels), "--dry-run"]) == 0
        out = capsys.readouterr().out
        planned = {d for d in FLEET if re.search(rf"\b{d}\b", out)}
        assert "to 3 devices" in out and planned == {FLEET[0], FLEET[1], FLEET[-1]}, out

        assert main(["rollout", str(releases["bad"]), *common, "--state", str(tmp_path / "bad.json")]) == 1
        out = capsys.readouterr().out
        state = json.loads((tmp_path / "bad.json").read_text())
        assert state["status"] == "rolled_back", out
        assert state["devices"]["pi-01"]["status"] == "rolled_back", out
        assert "one class for every face" in state["devices"]["pi-01"]["detail"] \
            or "class mix" in state["devices"]["pi-01"]["detail"], out
        assert all(state["devices"][d]["status"] == "pending" for d in FLEET[1:]), out
        answering(watch, dict.fromkeys(FLEET, "2026.12.1"), fleet)  # pi-01 answers with the old bundle again
        begins = []
        while (message := watch.get(0.1)) is not None:
            if message[0].endswith("/cmd") and b"ota_begin" in message[1]:
                begins.append((message[0].split("/")[1], json.loads(message[1])["name"]))
        assert ("pi-01", "oneclass") in begins
        assert not [b for b in begins if b[1] == "oneclass" and b[0] != "pi-01"]  # no later wave ever received it

        assert main(["rollout", str(releases["good"]), *common, "--state", str(tmp_path / "good.json")]) == 0
        out = capsys.readouterr().out
        state = json.loads((tmp_path / "good.json").read_text())
        assert state["status"] == "passed" and len(state["waves"]) == 3, out
        assert all(v["status"] == "healthy" for v in state["devices"].values()), out
        answering(watch, dict.fromkeys(FLEET, "2026.12.3"), fleet)
    finally:
        watch.close()
    reader = Connection(broker.url, "test-progress")  # what the dashboard reads: the retained progress
    try:
        reader.subscribe("fer/rollout/#")
        retained = dict(iter(lambda: reader.get(3), None))
    finally:
        reader.close()
    for body in retained.values():
        validator("rollout").validate(decode(body))
    assert decode(retained["fer/rollout/tiny-ck-2026.12.3"])["status"] == "passed"
    bad = decode(retained["fer/rollout/oneclass-2026.12.2"])
    assert bad["status"] == "rolled_back" and [d["status"] for d in bad["devices"]] == \
        ["rolled_back"] + ["pending"] * (len(FLEET) - 1)
    print(bad["devices"][0]["detail"])
