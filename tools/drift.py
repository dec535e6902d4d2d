"""Drift watch (``tools drift``): is what each device's model sees still what it saw at first?

Computed on the operator side from the ``events`` the devices publish: never a frame.
Per device, five features, each a histogram over fixed bins:

- ``label``: the class mix (each event's label; a label outside the model's classes counts in one "other" bin);
- ``confidence``: the largest class score of each face, 10 bins over [0, 1];
- ``face_size``: the side of the face box, ``sqrt(width * height)`` in pixels, on a logarithmic scale (bins a
  factor 2^(1/3) wide from 16 to 1024 px). Events carry the box but not the frame's size, so this is not relative
  to the frame; a camera's resolution does not change under it, so its drift is the same signal;
- ``brightness``: each face's mean grey level before the preprocessing's gamma equalization (the event's
  ``brightness``), 10 bins over [0, 1]: a lamp switched off or a window's sun moves it while the model's answers may
  not move yet. Events from devices that do not send it are left out of this feature only;
- ``faces``: faces per second, the distinct track ids seen in each second of this process's clock (0, 1, 2, 3,
  4, 5 or more). The one feature that still moves when a camera sees no face at all (no events arrive then);
  seconds before the device's first event and while it is offline are not counted.

**Baseline and window.** A device's baseline is its first ``baseline_events`` events (and the seconds they took,
for ``faces``); then it is frozen until an operator resets it (restart ``tools drift``, or send it SIGHUP: every
baseline starts again). The current window slides over the last ``window_events`` events and the last
``window_s`` seconds. A device is scored once its baseline is frozen and its window is full.

**Score.** The population stability index per feature, ``PSI = sum((w - b) * ln(w / b))`` over the bins' shares
``b`` (baseline) and ``w`` (window), each share at least :data:`EPSILON` so an empty bin costs a large but finite
term; the device's score is the largest feature's PSI. The usual reading (credit scoring, where PSI comes from):
below 0.1 no change, 0.1 to 0.25 a moderate shift worth a look, above 0.25 a significant one, so
:data:`THRESHOLD` is 0.25: an alert means a shift of the size that practice calls significant. A small sample
adds its own PSI (about ``(bins - 1) * (1/n + 1/m)`` for n and m independent samples), so the defaults keep
``baseline_events`` and ``window_events`` large enough (2000 and 500) for that noise to stay under 0.1 for the
class mix; with small windows raise ``--threshold``. An alert clears when the score falls below
``CLEAR * threshold`` (hysteresis: a score hovering at the threshold does not flap).

**Alert.** A retained ``<prefix>/<device>/drift`` message (``edge/protocol/schemas/drift.json``) when a device
starts or stops drifting, refreshed every ``every_s`` seconds while scored; and once per device a retained Home
Assistant discovery config for a ``binary_sensor`` (``device_class: problem``) reading it.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edge import CLASS_NAMES
from edge.errors import UserError, printable
from edge.protocol.homeassistant import drift_discovery
from edge.protocol.payloads import check, encode
from edge.protocol.topics import AVAILABILITY, DRIFT, EVENTS, OFFLINE, Target
from tools.inbound import MAX_DEVICES, Gate, RecentDevices

log = logging.getLogger("tools.drift")

EPSILON = 1e-4
"""The smallest share a bin counts with in :func:`psi` (an empty bin would make the logarithm infinite)."""
THRESHOLD = 0.25
"""Default alert threshold: PSI above 0.25 is the conventional "significant shift" (0.1 to 0.25: moderate)."""
CLEAR = 0.8
"""An alert clears once the score is below this fraction of the threshold."""
MAX_PSI = 1000.0
"""Scores are capped here (the schema's bound; with :data:`EPSILON` a PSI cannot reach it anyway)."""
BASELINE_EVENTS, WINDOW_EVENTS, WINDOW_S, EVERY_S = 2000, 500, 60.0, 10.0
CONFIDENCE_BINS = np.linspace(0.0, 1.0, 11)
SIZE_BINS = 16.0 * 2.0 ** (np.arange(19) / 3.0)  # 16 .. 1024 px, a factor 2^(1/3) apart
MAX_FACES = 5
BRIGHTNESS_BINS = np.linspace(0.0, 1.0, 11)
FEATURES = ("label", "confidence", "face_size", "brightness", "faces")
EVENT_FEATURES = FEATURES[:-1]
"""The features each event adds to (``faces`` counts seconds)."""


def psi(baseline: Sequence[float], window: Sequence[float], eps: float = EPSILON) -> float:
    """Population stability index of two histograms over the same bins (counts or shares): ``sum((w - b) *
    ln(w / b))`` of their shares, each at least ``eps``. 0 for equal distributions, symmetric, and larger the
    further apart; 0.0 where either side is empty (nothing to compare)."""
    b, w = np.asarray(baseline, float), np.asarray(window, float)
    if b.shape != w.shape:
        raise ValueError(f"histograms of {b.size} and {w.size} bins")
    if b.sum() <= 0 or w.sum() <= 0:
        return 0.0
    b, w = np.maximum(b / b.sum(), eps), np.maximum(w / w.sum(), eps)
    return float(min(np.sum((w - b) * np.log(w / b)), MAX_PSI))


def event_bins(event: dict, classes: Sequence[str] = CLASS_NAMES) -> tuple[int, int, int, int | None]:
    """The (label, confidence, face size, brightness) bin of one checked event (brightness None where it has none)."""
    label = classes.index(event["label"]) if event["label"] in classes else len(classes)
    top = max(event["scores"].values(), default=event["confidence"])
    confidence = int(np.clip(np.searchsorted(CONFIDENCE_BINS, top, side="right") - 1, 0, len(CONFIDENCE_BINS) - 2))
    _, _, width, height = event["box"]
    size = int(np.searchsorted(SIZE_BINS, math.sqrt(width * height), side="right"))  # 0 .. len(SIZE_BINS)
    level = event.get("brightness")
    brightness = None if level is None else \
        int(np.clip(np.searchsorted(BRIGHTNESS_BINS, level, side="right") - 1, 0, len(BRIGHTNESS_BINS) - 2))
    return label, confidence, size, brightness


SIZES = {"label": len(CLASS_NAMES) + 1, "confidence": len(CONFIDENCE_BINS) - 1, "face_size": len(SIZE_BINS) + 1,
         "brightness": len(BRIGHTNESS_BINS) - 1, "faces": MAX_FACES + 1}


@dataclass
class Histograms:
    """Counts per bin of each feature."""

    counts: dict[str, np.ndarray] = field(default_factory=lambda: {f: np.zeros(n) for f, n in SIZES.items()})

    def add(self, feature: str, index: int | None, n: int = 1) -> None:
        if index is not None:  # an event without the feature (brightness from an older device)
            self.counts[feature][index] += n

    def total(self, feature: str) -> float:
        return float(self.counts[feature].sum())


@dataclass
class Score:
    drifting: bool
    score: float
    features: dict[str, float]


class DeviceDrift:
    """One device's frozen baseline and sliding window; fed events (``add``) and clock seconds (``tick``)."""

    def __init__(self, baseline_events: int = BASELINE_EVENTS, window_events: int = WINDOW_EVENTS,
                 window_s: float = WINDOW_S, threshold: float = THRESHOLD):
        if min(baseline_events, window_events) < 1 or window_s < 1 or threshold <= 0:
            raise UserError("--baseline-events, --window-events and --window-s must be at least 1, --threshold above 0")
        self.baseline_events, self.window_events, self.threshold = baseline_events, window_events, threshold
        self.baseline = Histograms()
        self.events: deque[tuple[int, int, int]] = deque(maxlen=window_events)
        self.seconds: deque[int] = deque(maxlen=int(window_s))
        self.tracks: set[int] = set()
        self.frozen = self.started = False
        self.online = True
        self.drifting = False

    @property
    def baseline_count(self) -> int:
        return int(self.baseline.total("label"))

    def add(self, event: dict) -> None:
        bins = event_bins(event)
        self.started = True
        self.tracks.add(event["track_id"])
        if not self.frozen:
            for feature, index in zip(EVENT_FEATURES, bins):
                self.baseline.add(feature, index)
            if self.baseline_count >= self.baseline_events:
                self.frozen = True
        else:
            self.events.append(bins)

    def tick(self) -> None:
        """One second passed: its distinct tracks are a ``faces`` sample (not while the device is offline)."""
        faces, self.tracks = min(len(self.tracks), MAX_FACES), set()
        if not self.online or not self.started:  # seconds count from the first event (not the model's loading)
            return
        if not self.frozen:
            self.baseline.add("faces", faces)
        else:
            self.seconds.append(faces)

    def window(self) -> Histograms:
        current = Histograms()
        for bins in self.events:
            for feature, index in zip(EVENT_FEATURES, bins):
                current.add(feature, index)
        for faces in self.seconds:
            current.add("faces", faces)
        return current

    def score(self) -> Score | None:
        """The score and the alert state after it, or None while the baseline fills or the window is not full."""
        full_events = len(self.events) == self.window_events
        full_seconds = len(self.seconds) == self.seconds.maxlen
        if not self.frozen or not (full_events or full_seconds):
            return None
        current = self.window()
        features = {f: round(psi(self.baseline.counts[f], current.counts[f]), 4) for f in FEATURES
                    if (full_events if f != "faces" else full_seconds) and self.baseline.total(f)}
        if not features:
            return None
        score = max(features.values())
        if score > self.threshold:
            self.drifting = True
        elif score < CLEAR * self.threshold:
            self.drifting = False
        return Score(self.drifting, score, features)

    def reset(self) -> None:
        self.__init__(self.baseline_events, self.window_events, self.seconds.maxlen, self.threshold)


class DriftWatch:
    """Every device's :class:`DeviceDrift`, fed from the broker's messages; ``tick`` returns what to publish."""

    def __init__(self, prefix: str = "fer", baseline_events: int = BASELINE_EVENTS,
                 window_events: int = WINDOW_EVENTS, window_s: float = WINDOW_S, threshold: float = THRESHOLD,
                 every_s: float = EVERY_S, max_devices: int = MAX_DEVICES, target: Target | None = None,
                 discovery_prefix: str = "homeassistant"):
        self.prefix, self.every_s, self.discovery_prefix = prefix, every_s, discovery_prefix
        self.make = lambda _: DeviceDrift(baseline_events, window_events, window_s, threshold)
        DeviceDrift(baseline_events, window_events, window_s, threshold)  # the flags' errors now, not per device
        self.gate = Gate(prefix, (EVENTS, AVAILABILITY), target)
        self.devices = RecentDevices(max_devices)
        self.published: dict[str, tuple[bool, float]] = {}  # device: (drifting, when) of its last alert message
        self.announced: set[str] = set()

    def handle(self, topic: str, body: bytes) -> None:
        message = self.gate.admit(topic, body)
        if message is None:
            return
        device, _ = self.devices.touch(message.device, self.make)
        if message.kind == AVAILABILITY:
            device.online = message.payload != OFFLINE
        else:
            device.online = True
            device.add(message.payload)

    def tick(self, now: float) -> list[tuple[str, bytes]]:
        """One second passed: the (topic, payload) messages to publish, all retained."""
        out = []
        for path, device in list(self.devices.items()):
            device.tick()
            score = device.score()
            if score is None:
                continue
            base = f"{self.prefix}/{path}"
            if path not in self.announced:
                self.announced.add(path)
                out.append(drift_discovery(base, self.discovery_prefix))
            last = self.published.get(path)
            if last is None or last[0] != score.drifting or now - last[1] >= self.every_s:
                if score.drifting and (last is None or not last[0]):
                    log.warning("%s is drifting: PSI %.2f (%s)", printable(path), score.score,
                                ", ".join(f"{f} {v:.2f}" for f, v in score.features.items()))
                elif last is not None and last[0] and not score.drifting:
                    log.warning("%s is back within its baseline: PSI %.2f", printable(path), score.score)
                self.published[path] = (score.drifting, now)
                out.append((f"{base}/{DRIFT}", encode(check(DRIFT, {
                    "device": path, "ts": round(now, 3), "drifting": score.drifting, "score": score.score,
                    "features": score.features, "baseline_events": device.baseline_count,
                    "window_events": len(device.events)}))))
        return out

    def reset(self) -> None:
        """Every device's baseline starts again (its alert stands until it is scored again)."""
        for device in self.devices.values():
            device.reset()


def watch(broker, prefix: str = "fer", baseline_events: int = BASELINE_EVENTS, window_events: int = WINDOW_EVENTS,
          window_s: float = WINDOW_S, threshold: float = THRESHOLD, every_s: float = EVERY_S,
          duration: float | None = None, protocol: str = "5", target: Target | None = None,
          max_devices: int = MAX_DEVICES, discovery_prefix: str = "homeassistant",
          running: Callable[[], bool] = lambda: True) -> DriftWatch:
    """``tools drift``: subscribe to the devices' events and availability, publish drift alerts, until ``duration``
    seconds pass, Ctrl-C, SIGTERM or ``running()`` turns false."""
    from tools.mqtt_client import Connection

    target = target or Target.parse("*")
    drift = DriftWatch(prefix, baseline_events, window_events, window_s, threshold, every_s, max_devices, target,
                       discovery_prefix)
    conn = Connection(broker, "tools-drift", protocol=protocol)
    conn.subscribe(target.topic_filter(prefix, EVENTS), target.topic_filter(prefix, AVAILABILITY))
    stop, again = threading.Event(), threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = {}
    if main:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: again.set())
    print(f"tools drift: watching {prefix}/{target.text} (baseline {baseline_events} events, window {window_events} "
          f"events / {window_s:g} s, alert above PSI {threshold:g}; SIGHUP resets the baselines)", file=sys.stderr)
    end = time.monotonic() + duration if duration else float("inf")
    next_tick = time.monotonic() + 1
    try:
        while time.monotonic() < end and running() and not stop.is_set():
            message = conn.get(min(next_tick, end) - time.monotonic())
            if message is not None:
                drift.handle(*message)
            if again.is_set():
                again.clear()
                drift.reset()
                log.warning("baselines reset: every device's baseline starts again")
            if time.monotonic() >= next_tick:
                next_tick += 1
                for topic, payload in drift.tick(time.time()):
                    conn.client.publish(topic, payload, qos=1, retain=True)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()
    return drift


def summary(drift: DriftWatch) -> str:
    counts = Counter(drifting for drifting, _ in drift.published.values())
    return f"{len(drift.devices)} devices, {counts[True]} drifting, {counts[False]} within their baseline"
