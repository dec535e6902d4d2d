"""Roll a signed bundle out to a fleet in waves, each held against health gates before the next one starts.

The pieces, each small and testable alone:

- :func:`parse_waves` and :func:`plan`: ``1,50%,100%`` over the sorted device paths gives the waves (cumulative: one
  device, then up to half of all, then the rest);
- :class:`Observation`, :func:`baseline` and :func:`judge`: what a device published during a period, what it did
  before the rollout, and whether it is healthy on the new version (the gates, thresholds in :class:`Limits`);
- :class:`Rollout`: the state machine (baseline, flash, soak, next wave; on a failed wave: roll back and stop), its
  state written to a JSON file atomically after every step, so the same command resumes where a crash stopped it;
- :class:`MqttFleet`: the broker side (availability, events and stats, :func:`tools.flash.flash_mqtt`), which the
  tests replace with a fake to drive the state machine.

Progress is published retained on ``<prefix>/rollout/<name>`` (``edge/protocol/schemas/rollout.json``), for the
dashboard. docs/operators/fleet.md explains the gates and their thresholds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from edge.errors import UserError, printable
from edge.model.bundle import MANIFEST_FILE, load_bundle, sha256_bytes
from edge.protocol.client import MqttConfig
from edge.protocol.topics import AVAILABILITY, CMD, EVENTS, NAME, ONLINE, ROLLOUT, STATS, Target, device_topic
from tools.inbound import KINDS, MAX_DEVICES, Gate

STATE_FORMAT = 1
MAX_DETAIL = 256
"""Longest per-device reason kept in the state and published (the schema's bound)."""
FINAL = ("passed", "rolled_back", "failed", "incomplete")


# ---------------------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class WaveSize:
    """One entry of ``--waves``: a number of devices or a percentage of all, both cumulative."""

    value: float
    percent: bool

    def reach(self, total: int) -> int:
        """How many devices the waves up to this one cover, out of ``total``."""
        if self.percent:
            return min(total, math.ceil(total * self.value / 100 - 1e-9))
        return min(total, int(self.value))


def parse_waves(text: str) -> list[WaveSize]:
    """``1,50%,100%`` as :class:`WaveSize` entries; one :class:`UserError` line for anything else."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if part.endswith("%"):
                value = float(part[:-1])
                ok = 0 < value <= 100 and math.isfinite(value)
                sizes.append(WaveSize(value, True))
            else:
                value = int(part)
                ok = value >= 1
                sizes.append(WaveSize(value, False))
        except ValueError:
            ok = False
        if not ok:
            raise UserError(f"--waves {text!r}: {part!r} is not a device count (1, 2, ...) or a percentage (1% to 100%)")
    if len(sizes) > 100:
        raise UserError("--waves: at most 100 waves")
    return sizes


def plan(devices: list[str], sizes: list[WaveSize]) -> list[list[str]]:
    """The waves over ``devices``: sorted by path (the same plan for the same devices, so a rerun agrees), each wave
    reaching the cumulative count its size gives; a size that adds nobody is skipped and devices the sizes leave out
    form a last wave (a rollout always ends with every device)."""
    ordered = sorted(set(devices))
    waves, done = [], 0
    for size in sizes:
        reach = size.reach(len(ordered))
        if reach > done:
            waves.append(ordered[done:reach])
            done = reach
    if done < len(ordered):
        waves.append(ordered[done:])
    return waves


# --------------------------------------------------------------------------------------------------------- gates

@dataclass(frozen=True)
class Limits:
    """The health gates' thresholds (docs/operators/fleet.md)."""

    min_rate: float = 0.5
    """Event rate on the new version at least this share of the device's baseline rate."""
    max_class_distance: float = 0.5
    """Total-variation distance between the baseline's and the new version's label shares (0 same, 1 disjoint)."""
    max_top_share: float = 0.9
    """One label's share of the events may not rise above this when the baseline's top label was below it."""
    max_confidence_shift: float = 0.25
    """Mean top-class confidence may not move more than this from the baseline's."""
    min_events: int = 10
    """Baseline events a device needs for the rate and class gates (fewer: no faces seen, those gates are skipped)."""


@dataclass
class Observation:
    """What one device published during ``seconds``: events (label, confidence, model version), stats (fps, model
    version) and its last retained availability."""

    seconds: float
    events: list[tuple[str, float, str]] = field(default_factory=list)
    stats: list[tuple[float, str | None]] = field(default_factory=list)
    availability: str | None = None


def shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {label: n / len(labels) for label, n in sorted(counts.items())} if labels else {}


def class_distance(a: dict[str, float], b: dict[str, float]) -> float:
    """Total-variation distance between two label distributions: half the sum of absolute differences."""
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def baseline(observed: Observation) -> dict:
    """A device's pre-rollout behaviour, as kept in the state file."""
    events = observed.events
    return {"seconds": round(observed.seconds, 3), "events": len(events),
            "rate": round(len(events) / observed.seconds, 4) if observed.seconds > 0 else 0.0,
            "labels": {k: round(v, 4) for k, v in shares([e[0] for e in events]).items()},
            "confidence": round(sum(e[1] for e in events) / len(events), 4) if events else None}


def judge(observed: Observation, version: str, base: dict | None, limits: Limits = Limits()) -> tuple[bool, str]:
    """(healthy, why) for a device that installed bundle ``version`` and was then observed (the soak)."""
    if observed.availability != ONLINE:
        return False, f"not online after the update (availability {observed.availability or 'unknown'})"
    stats = [s for s in observed.stats if s[1] == version]
    if not stats:
        return False, (f"no stats from version {version} in {observed.seconds:g} s (is --soak at least the devices' "
                       "publish.stats_interval_s?)")
    if stats[-1][0] <= 0:
        return False, f"not analysing frames on version {version} (fps {stats[-1][0]:g}): inference errors?"
    events = [e for e in observed.events if e[2] == version]
    if base is None or base["events"] < limits.min_events:
        return True, (f"online on {version}, fps {stats[-1][0]:g}; {len(events)} events (too few baseline events "
                      "for the rate and class gates)")
    rate = len(events) / observed.seconds if observed.seconds > 0 else 0.0
    if rate < limits.min_rate * base["rate"]:
        return False, (f"event rate {rate:.2f}/s is below {limits.min_rate:.0%} of its baseline {base['rate']:.2f}/s")
    now = shares([e[0] for e in events])
    top, top_share = max(now.items(), key=lambda kv: kv[1])
    base_top = max(base["labels"].values())
    if top_share > limits.max_top_share and base_top <= limits.max_top_share:
        return False, (f"answers {top!r} for {top_share:.0%} of faces (baseline's most common label "
                       f"{base_top:.0%}, limit {limits.max_top_share:.0%}): one class for every face")
    distance = class_distance(base["labels"], now)
    if distance > limits.max_class_distance:
        return False, (f"class mix moved from its baseline by {distance:.2f} (total variation, limit "
                       f"{limits.max_class_distance:g}): now {_mix(now)}, was {_mix(base['labels'])}")
    confidence = sum(e[1] for e in events) / len(events)
    if abs(confidence - base["confidence"]) > limits.max_confidence_shift:
        return False, (f"mean confidence {confidence:.2f} against its baseline {base['confidence']:.2f} "
                       f"(limit ±{limits.max_confidence_shift:g})")
    return True, (f"online on {version}, fps {stats[-1][0]:g}, {rate:.2f} events/s (baseline {base['rate']:.2f}), "
                  f"class distance {distance:.2f}, confidence {confidence:.2f}")


def _mix(labels: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(labels.items(), key=lambda kv: -kv[1])[:3])


# --------------------------------------------------------------------------------------------------------- state

def save_state(path: Path, state: dict) -> None:
    """Write the state as JSON atomically: a temporary file beside it, flushed, then renamed over it."""
    state["updated"] = round(time.time(), 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"rollout state {path} is unreadable ({exc}): move it away to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"rollout state {path} is not a rollout state file of format {STATE_FORMAT}")
    return state


def bundle_identity(folder: Path) -> dict:
    """What names a bundle in the state: its folder, name, version and manifest sha256."""
    bundle = load_bundle(folder)
    return {"path": str(folder), "name": bundle.manifest["name"], "version": str(bundle.manifest.get("version", "")),
            "manifest_sha256": sha256_bytes((folder / MANIFEST_FILE).read_bytes())}


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name in (*KINDS, CMD):
        raise UserError(f"rollout name {name!r} is not allowed (letters, digits, '.', '_', '-'; not a topic kind)")
    return name


def new_state(name: str, bundle: dict, previous: dict | None, waves: list[list[str]]) -> dict:
    return {"format": STATE_FORMAT, "name": name, "bundle": bundle, "previous": previous, "waves": waves,
            "wave": 0, "phase": "start", "status": "running", "reason": "", "active": [], "deferred": [],
            "retries": 0, "baselines": {},
            "devices": {d: {"wave": i, "status": "pending", "detail": ""} for i, wave in enumerate(waves) for d in wave}}


def progress(state: dict) -> dict:
    """The retained progress message (``schemas/rollout.json``)."""
    return {"name": state["name"], "ts": round(time.time(), 3), "status": state["status"],
            "phase": state["phase"], "wave": min(state["wave"] + 1, len(state["waves"])), "waves": len(state["waves"]),
            "bundle": {"name": state["bundle"]["name"][:64], "version": state["bundle"]["version"][:64]},
            "reason": _cut(state["reason"]),
            "devices": [{"device": d, "wave": v["wave"] + 1, "status": v["status"],
                         "detail": _cut(v["detail"])}
                        for d, v in sorted(state["devices"].items())][:MAX_DEVICES]}


def _cut(text: str) -> str:
    return printable(text, MAX_DETAIL - 3)[:MAX_DETAIL]


# ------------------------------------------------------------------------------------------------- state machine

class Fleet(Protocol):
    def availability(self, devices: list[str]) -> dict[str, str | None]: ...
    def observe(self, devices: list[str], seconds: float) -> dict[str, Observation]: ...
    def flash(self, folder: Path, devices: list[str], downgrade_key: Path | None) -> dict[str, tuple[str, str]]: ...
    def publish(self, message: dict) -> None: ...


class Rollout:
    """Runs the waves of ``state`` against ``fleet``, saving the state to ``path`` after every step.

    A wave: choose its devices (the planned ones and those deferred earlier that are online now; offline ones are
    deferred to a later wave, and online devices of later waves fill a wave's place so a canary stays a canary),
    measure their baseline, flash, soak, judge. Every device healthy: the next wave. Any device refusing the bundle
    or failing a gate: every device that installed the bundle in this rollout gets ``previous`` back (with the
    operator's downgrade permission) and the rollout stops, ``rolled_back``."""

    def __init__(self, state: dict, path: Path | None, fleet: Fleet, soak: float, baseline_s: float,
                 downgrade_key: Path | None, limits: Limits = Limits(), say: Callable[[str], None] = print):
        self.state, self.path, self.fleet = state, path, fleet
        self.soak, self.baseline_s, self.downgrade_key, self.limits, self.say = soak, baseline_s, downgrade_key, limits, say

    def step(self, phase: str | None = None, status: str | None = None, reason: str | None = None) -> None:
        if phase is not None:
            self.state["phase"] = phase
        if status is not None:
            self.state["status"] = status
        if reason is not None:
            self.state["reason"] = reason
        if self.path is not None:
            save_state(self.path, self.state)
        self.fleet.publish(progress(self.state))

    def mark(self, device: str, status: str, detail: str = "") -> None:
        self.state["devices"][device].update(status=status, detail=detail[:1000])
        self.say(f"  {device}: {status}{' (' + printable(detail, 300) + ')' if detail else ''}")

    def run(self) -> dict:
        s = self.state
        if s["status"] == "incomplete" and s["deferred"]:  # the same command again: retry the offline devices
            s["waves"].append(sorted(s["deferred"]))
            s.update(wave=len(s["waves"]) - 1, phase="start", status="running", reason="", deferred=[])
            for device in s["waves"][-1]:
                s["devices"][device]["wave"] = s["wave"]
        if s["status"] in FINAL:
            return s
        while s["wave"] < len(s["waves"]):
            if s["phase"] == "rollback":
                self.rollback()
                return s
            if not self.wave():
                self.rollback()
                return s
            s["wave"] += 1
            s["active"] = []
            if s["wave"] == len(s["waves"]) and s["deferred"] and s["retries"] < 1:
                s["retries"] += 1  # offline devices get one more wave at the end
                s["waves"].append(sorted(s["deferred"]))
                for device in s["waves"][-1]:
                    s["devices"][device]["wave"] = s["wave"]
                s["deferred"] = []
            self.step(phase="start")
        offline = [d for d, v in s["devices"].items() if v["status"] == "offline"]
        if offline:
            s["deferred"] = sorted(offline)
            self.step(phase="done", status="incomplete",
                      reason=f"{len(offline)} devices offline, not updated: run the same command again to retry them")
        else:
            self.step(phase="done", status="passed", reason="every device healthy on the new version")
        return s

    def choose(self) -> list[str]:
        """This wave's devices: online ones of the plan and the deferred; offline ones deferred; the gap filled from
        later waves' online devices."""
        s, i = self.state, self.state["wave"]
        planned, want = s["waves"][i], len(s["waves"][i])
        candidates = sorted(set(planned) | set(s["deferred"]))
        later = [d for wave in s["waves"][i + 1:] for d in wave]
        seen = self.fleet.availability(candidates + later)
        active = [d for d in candidates if seen.get(d) == ONLINE]
        for device in later:
            if len(active) >= want:
                break
            if seen.get(device) == ONLINE:
                active.append(device)
                for wave in s["waves"][i + 1:]:
                    if device in wave:
                        wave.remove(device)
                s["waves"][i].append(device)
                s["devices"][device]["wave"] = i
        for device in active:
            if device not in s["waves"][i]:
                s["waves"][i].append(device)  # a deferred device, now online
            s["devices"][device]["wave"] = i
        s["waves"][:] = [w for j, w in enumerate(s["waves"]) if w or j <= i]
        for device in candidates:
            if device not in active:
                self.mark(device, "offline", f"availability {seen.get(device) or 'unknown'}: retried in a later wave")
        s["deferred"] = sorted(d for d in candidates if d not in active)
        return active

    def wave(self) -> bool:
        s = self.state
        number = f"wave {s['wave'] + 1}/{len(s['waves'])}"
        if s["phase"] == "start":
            s["active"] = self.choose()
            self.say(f"{number}: {', '.join(s['active']) or 'no device online'}")
            self.step(phase="baseline")
        active = s["active"]
        if not active:
            return True
        if s["phase"] == "baseline":
            self.say(f"{number}: measuring the baseline for {self.baseline_s:g} s")
            for device, seen in self.fleet.observe(active, self.baseline_s).items():
                s["baselines"][device] = baseline(seen)
            self.step(phase="flash")
        if s["phase"] == "flash":
            self.say(f"{number}: flashing {s['bundle']['name']} {s['bundle']['version']}")
            results = self.fleet.flash(Path(s["bundle"]["path"]), active, None)
            failed = False
            for device in active:
                status, detail = results.get(device, ("timeout", "no verdict"))
                if status == "installed":
                    self.mark(device, "installed", detail)
                elif status in ("offline", "timeout"):
                    self.mark(device, "offline", f"{status} during the flash ({detail}): retried in a later wave")
                    s["deferred"] = sorted({*s["deferred"], device})
                else:
                    self.mark(device, "refused", detail)
                    failed = True
            s["active"] = [d for d in active if s["devices"][d]["status"] in ("installed", "refused")]
            if failed:
                self.step(phase="rollback", reason=f"{number}: a device refused the bundle")
                return False
            self.step(phase="soak")
        if s["phase"] == "soak":
            installed = [d for d in s["active"] if s["devices"][d]["status"] in ("installed", "healthy")]
            self.say(f"{number}: soaking for {self.soak:g} s")
            observed = self.fleet.observe(installed, self.soak)
            bad = 0
            for device in installed:
                healthy, why = judge(observed.get(device, Observation(self.soak)), s["bundle"]["version"],
                                     s["baselines"].get(device), self.limits)
                self.mark(device, "healthy" if healthy else "unhealthy", why)
                bad += not healthy
            if bad:
                self.step(phase="rollback", reason=f"{number}: {bad} of {len(installed)} devices failed the health gates")
                return False
            self.step(phase="passed")
        return True

    def rollback(self) -> None:
        s = self.state
        got = sorted(d for d, v in s["devices"].items() if v["status"] in ("installed", "healthy", "unhealthy"))
        if s["previous"] is None or not got:
            self.step(phase="done", status="failed" if got else "rolled_back",
                      reason=s["reason"] + ("; no --previous bundle to roll back to" if got else "; nothing to roll back"))
            return
        self.say(f"rolling back {', '.join(got)} to {s['previous']['name']} {s['previous']['version']}")
        results = self.fleet.flash(Path(s["previous"]["path"]), got, self.downgrade_key)
        failed = 0
        for device in got:
            status, detail = results.get(device, ("timeout", "no verdict"))
            before = s["devices"][device]["detail"]
            if status == "installed":
                self.mark(device, "rolled_back", f"{before}; back on {s['previous']['version']}")
            else:
                self.mark(device, "rollback_failed", f"{before}; rollback {status}: {detail}")
                failed += 1
        self.step(phase="done", status="failed" if failed else "rolled_back",
                  reason=s["reason"] + (f"; {failed} devices could not be rolled back" if failed else ""))


def report(state: dict) -> str:
    width = max([len(d) for d in state["devices"]] + [6])
    lines = [f"rollout {state['name']}: {state['status']} ({printable(state['reason'], 500)})"]
    for device, v in sorted(state["devices"].items(), key=lambda kv: (kv[1]["wave"], kv[0])):
        lines.append(f"{device:<{width}}  wave {v['wave'] + 1:<3} {v['status']:<15} {printable(v['detail'], 500)}")
    return "\n".join(lines)


def describe_plan(waves: list[list[str]], seen: dict[str, str | None]) -> str:
    lines = []
    for i, wave in enumerate(waves):
        marks = [f"{d}{'' if seen.get(d) == ONLINE else ' (' + (seen.get(d) or 'unknown') + ': deferred)'}"
                 for d in wave]
        lines.append(f"wave {i + 1}: {len(wave)} device{'s' * (len(wave) != 1)}: {', '.join(marks)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ the broker

class MqttFleet:
    """The broker side of a rollout: one connection that follows every device's availability, events and stats,
    publishes progress retained on ``<prefix>/rollout/<name>``, and flashes with :func:`tools.flash.flash_mqtt`."""

    def __init__(self, broker: MqttConfig | str, prefix: str, name: str, devices: list[str], protocol: str = "5",
                 flash_timeout: float = 120.0):
        from tools.mqtt_client import Connection

        self.broker, self.prefix, self.protocol, self.flash_timeout = broker, prefix, protocol, flash_timeout
        self.topic = f"{prefix}/{ROLLOUT}/{name}"
        self.conn = Connection(broker, "tools-rollout", protocol=protocol)
        self.gate = Gate(prefix, (AVAILABILITY, EVENTS, STATS))
        self.seen: dict[str, str] = {}
        self.follow(devices)

    def follow(self, devices: list[str]) -> None:
        self.conn.subscribe(*(device_topic(f"{self.prefix}/{d}", k) for d in devices for k in (AVAILABILITY, EVENTS, STATS)))
        self.drain(1.0)  # the retained availability

    def drain(self, seconds: float, into: dict[str, Observation] | None = None) -> None:
        end = time.monotonic() + seconds
        while (message := self.conn.get(max(0.0, end - time.monotonic()))) is not None or time.monotonic() < end:
            if message is None:
                continue
            got = self.gate.admit(*message)
            if got is None:
                continue
            if got.kind == AVAILABILITY:
                self.seen[got.device] = got.payload
            window = None if into is None else into.get(got.device)
            if window is None:
                continue
            if got.kind == EVENTS:
                window.events.append((got.payload["label"], float(got.payload["confidence"]),
                                      got.payload["model"]["version"]))
            elif got.kind == STATS:
                window.stats.append((float(got.payload["fps"]), got.payload.get("model_version")))

    def availability(self, devices: list[str]) -> dict[str, str | None]:
        self.drain(0.2)
        return {d: self.seen.get(d) for d in devices}

    def observe(self, devices: list[str], seconds: float) -> dict[str, Observation]:
        self.drain(0.0)  # what queued up before (during a flash) does not count
        windows = {d: Observation(seconds) for d in devices}
        self.drain(seconds, windows)
        for device, window in windows.items():
            window.availability = self.seen.get(device)
        return windows

    def flash(self, folder: Path, devices: list[str], downgrade_key: Path | None) -> dict[str, tuple[str, str]]:
        from tools.flash import flash_mqtt

        results = flash_mqtt(folder, [Target.parse(d) for d in devices], self.broker, self.prefix,
                             self.flash_timeout, protocol=self.protocol, downgrade_key=downgrade_key)
        return {r.path: (r.status, r.detail) for r in results}

    def publish(self, message: dict) -> None:
        info = self.conn.publish(self.topic, message, retain=True)
        if info.rc == 0:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.conn.close()


def resolve(broker: MqttConfig | str, prefix: str, targets: list[Target], protocol: str = "5") -> dict[str, str]:
    """Device paths for ``--device`` ids and globs, with their retained availability (as ``tools flash`` finds them)."""
    from tools.flash import resolve_devices
    from tools.mqtt_client import Connection

    conn = Connection(broker, "tools-rollout-plan", protocol=protocol)
    try:
        devices = resolve_devices(conn, prefix, targets)
        named = [d for d, seen in devices.items() if seen == "?"]
        if named:  # named devices: what their retained availability says
            conn.subscribe(*(device_topic(f"{prefix}/{d}", AVAILABILITY) for d in named))
            gate, end = Gate(prefix, (AVAILABILITY,)), time.monotonic() + 1.0
            while (message := conn.get(end - time.monotonic())) is not None:
                got = gate.admit(*message)
                if got is not None and got.device in devices:
                    devices[got.device] = got.payload
    finally:
        conn.close()
    if len(devices) > MAX_DEVICES:
        raise UserError(f"{len(devices)} devices match: a rollout takes at most {MAX_DEVICES}")
    return devices


def start(state_path: Path | None, name: str, bundle: Path, previous: Path | None, devices: list[str],
          sizes: list[WaveSize]) -> dict:
    """The state to run: the one in ``state_path`` for this bundle (resume), else a new plan."""
    identity = bundle_identity(bundle)
    state = load_state(state_path) if state_path is not None else None
    if state is not None:
        if state["bundle"]["manifest_sha256"] != identity["manifest_sha256"] or state["name"] != name:
            raise UserError(f"{state_path} holds rollout {state['name']!r} of bundle {state['bundle']['name']} "
                            f"{state['bundle']['version']}, not this one: give another --state")
        return state
    return new_state(name, identity, bundle_identity(previous) if previous is not None else None, plan(devices, sizes))


def default_name(bundle: Path) -> str:
    identity = bundle_identity(bundle)
    text = "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{identity['name']}-{identity['version']}")
    return check_name(text.lstrip("._-")[:64] or "rollout")
