"""``edge run``: capture -> analyse -> publish, three threads joined by small queues (Frigate-style).

The capture thread keeps only the newest frame; the analysis thread runs detection, preprocessing
and inference; the publish thread tracks, smooths, writes events to the spool and draws the
optional preview. The main thread owns everything slow or rare: commands from MQTT (the table in
:mod:`edge.device.commands`), the stats timer and shutdown. The MQTT link starts before the source
opens, so a camera or stream that hangs never keeps a device from answering. SIGTERM and SIGINT
stop the capture, let the queued frames finish, deliver what is spooled, announce ``offline`` and
exit 0. A worker thread that dies stops the whole process with exit status 1 instead of leaving a
device that reads ``online`` but does nothing: systemd (``Restart=on-failure``) starts it again.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from pathlib import Path

from edge import __version__
from edge.device.commands import Commands, log_update
from edge.device.config import Config
from edge.device.guard import run_guarded
from edge.device.health import cpu_temp_c, rss_mb
from edge.device.link import MqttLink
from edge.device.pipeline import STAGES, Analysis, Analyzer, Publisher
from edge.device.preview import Preview
from edge.device.sources import Grabber, make_source
from edge.device.spool import Spool
from edge.device.tracking import Tracker
from edge.device.updates import Updater
from edge.device.variants import resolve
from edge.device.watchdog import Notifier
from edge.errors import printable
from edge.model.bundle import Bundle, load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.detect import make_detector
from edge.protocol.flash import CHUNK
from edge.protocol.topics import REPLY, STATS

log = logging.getLogger("edge.device.runtime")
COMMAND_QUEUE = 16
"""Commands waiting for the main thread (a flash chunk is up to 1 MiB): a flood from the broker waits here, or is
dropped, instead of growing the device's memory without bound."""
COMMAND_WAIT_S = 1.0
"""How long paho's network thread waits for room in the queue (the broker then holds back further messages) before
it drops a command; short, so keep-alives are never missed."""


def make_detector_for(cfg: Config):
    detector = cfg.detector
    return make_detector(detector.name, detector.min_score, detector.min_size, cfg.model.threads, detector.every_n)


SOURCES = {"update": "an installed update, verified", "bundle": "model.bundle: no verified update installed",
           "release": "the shipped release: no verified update installed, model.bundle empty"}
"""What ``stats``' ``model_source`` values mean: which step of the one rule (:attr:`ModelConfig.bundle`) chose."""


class Runtime:
    def __init__(self, cfg: Config):
        self.cfg, self.started = cfg, time.monotonic()
        self.commands: queue.Queue[dict] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._dropping = False
        self.variant = resolve(cfg)  # before anything reads model.release: auto is measured here
        log.info("release bundle: %s", self.variant.reason if not self.variant.variant
                 else f"variant {self.variant.variant}, {self.variant.reason}")
        self.updater = Updater(cfg.model.dir, cfg.model.trusted_keys, self.install, classifier=self.classifier_for,
                               release=cfg.model.release) if cfg.model.trusted_keys else None
        for answer in self.updater.reload() if self.updater else []:
            log_update(answer)
        self.bundle = self.load_bundle()
        self.analyzer = Analyzer(make_detector_for(cfg), self.classifier_for(self.bundle), cfg.detector.max_faces)
        self.grabber = Grabber(make_source(cfg.source), cfg.source)
        self.preview = Preview(cfg) if cfg.preview.window or cfg.preview.video else None
        self.spool = Spool(cfg.spool.path, cfg.spool.max_events)
        self.link = MqttLink(cfg.mqtt, self.spool, self.enqueue)
        self.publisher = Publisher(Tracker(cfg.tracking), self.link, cfg.publish, cfg.mqtt.device_id)
        self.analysed: queue.Queue[Analysis | None] = queue.Queue(maxsize=4)
        self.stop_event = threading.Event()
        self.failure: str | None = None
        self.command = Commands(self)
        self.frames = 0
        self._window = {"frames": 0, "since": time.monotonic(), **dict.fromkeys(STAGES, 0.0)}
        self._lock = threading.Lock()

    def load_bundle(self) -> Bundle:
        """The bundle the one rule picks (:attr:`ModelConfig.bundle`); :attr:`source` says which kind it is."""
        release = self.cfg.model.release
        path = self.updater.bundle_path(release) if self.updater else self._release_without_updates()
        self.source = "update" if path != release else "bundle" if self.cfg.model.bundle else "release"
        bundle = load_bundle(path)
        log.info("model %s version %s from %s (%s; %s input %s)", printable(bundle.model_id), printable(bundle.version),
                 path, SOURCES[self.source], bundle.manifest["input"]["dtype"],
                 "x".join(map(str, bundle.manifest["input"]["shape"][1:3])))
        return bundle

    def _release_without_updates(self) -> Path:
        """With updates off (no trusted keys) nothing can re-verify an installed update, so it is not run."""
        current = Path(self.cfg.model.dir) / "current"
        if not self.cfg.model.bundle and current.exists():
            log.error("installed bundle %s is not used: model.trusted_keys is empty, so nothing can verify it; running "
                      "the release bundle %s", printable(current.resolve().name), self.cfg.model.release)
        return self.cfg.model.release

    def enqueue(self, command: dict) -> None:
        """Hand a validated command to the main thread (called on paho's network thread). When the queue stays full
        the command is dropped: a chunk is then reported missing at commit, anything else is answered ``ok: false``;
        the log says so once per burst."""
        try:
            self.commands.put(command, timeout=COMMAND_WAIT_S)
            self._dropping = False
            return
        except queue.Full:
            pass
        if not self._dropping:
            log.warning("command queue full (%d waiting): dropping commands until it drains", self.commands.maxsize)
        self._dropping = True
        if command["cmd"] != CHUNK:
            self.link.publish(REPLY, {"cmd": command["cmd"], "ok": False, "error": "device busy: command dropped",
                                      **({"id": command["id"]} if "id" in command else {})})

    def classifier_for(self, bundle: Bundle) -> EmotionClassifier:
        """The one place model.* becomes a classifier, at start and after every update (which keeps the back-end)."""
        model = self.cfg.model
        return EmotionClassifier(bundle, model.threads, model.tta_flip, model.backend, model.providers)

    def install(self, bundle: Bundle) -> None:
        """Swap in a new model between two frames (OTA install or reload)."""
        self.analyzer.classifier = self.classifier_for(bundle)
        self.bundle, self.source = bundle, "update"
        log.info("now running model %s version %s", printable(bundle.model_id), printable(bundle.version))

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.link.start()
        self.grabber.start()
        workers = [threading.Thread(target=run_guarded, args=(self._analyse, "analysis thread", self._fail), name="analyse"),
                   threading.Thread(target=run_guarded, args=(self._publish, "publish thread", self._fail), name="publish")]
        for worker in workers:
            worker.start()
        log.info("running: %s, detector %s, %d thread(s), device %s", printable(self.grabber.source.name),
                 self.cfg.detector.name, self.cfg.model.threads, printable(self.cfg.mqtt.base))
        systemd = Notifier()
        systemd.notify("READY=1")
        next_stats = time.monotonic() + self.cfg.publish.stats_interval_s
        while not self.stop_event.is_set() and workers[1].is_alive():
            if self.link.failure or self.grabber.failure:
                self.failure = self.link.failure or self.grabber.failure
                log.error("%s", printable(self.failure))
                break
            try:
                self.command(self.commands.get(timeout=0.2))
            except queue.Empty:
                pass
            systemd.frames(self.frames)
            if time.monotonic() >= next_stats:
                self.publish_stats()
                next_stats = time.monotonic() + self.cfg.publish.stats_interval_s
        log.info("stopping")
        systemd.notify("STOPPING=1")
        self.stop_event.set()
        self.grabber.stop()
        self.analysed.put(None)  # the publish thread ends even if the analysis thread died
        for worker in workers:
            worker.join(10)
        if self.preview:
            self.preview.close()
        self.publish_stats()
        self.link.stop()
        self.spool.close()
        log.info("stopped after %d frames; %d events, last event seq %d", self.frames, self.publisher.seq,
                 self.publisher.seq - 1)
        if self.failure:
            log.error("exiting with status 1: %s", printable(self.failure))
            return 1
        return 0

    def _fail(self, reason: str) -> None:
        """A worker died: record why and stop the whole runtime (a zombie device is worse than a restart)."""
        self.failure = reason
        log.error("%s", printable(reason))
        self.stop_event.set()
        self.analysed.put(None)

    def _analyse(self) -> None:
        while not self.stop_event.is_set() and not self.grabber.ended and self.grabber.alive:
            frame = self.grabber.get(timeout=0.2)
            if frame is not None:
                self.analysed.put(self.analyzer(frame))
        self.analysed.put(None)

    def _publish(self) -> None:
        while (analysis := self.analysed.get()) is not None:
            ms = {**analysis.ms, **self.publisher(analysis)}
            if self.preview:
                self.preview.show(analysis, self.publisher.tracker.tracks)
            with self._lock:
                self.frames += 1
                self._window["frames"] += 1
                for stage, value in ms.items():
                    self._window[stage] += value
                self._window["total"] += sum(ms.values())

    def publish_stats(self) -> None:
        with self._lock:
            window, now = self._window, time.monotonic()
            self._window = {"frames": 0, "since": now, **dict.fromkeys(STAGES, 0.0)}
            frames = self.frames
        n = max(window["frames"], 1)
        stats = {
            "ts": round(time.time(), 3), "device": self.cfg.mqtt.device_id, "uptime_s": round(now - self.started, 1),
            "fps": round(window["frames"] / max(now - window["since"], 1e-6), 2), "frames": frames,
            "dropped_frames": self.grabber.dropped, "source": self.grabber.state, "source_reopens": self.grabber.reopens,
            "stage_ms": {stage: round(window[stage] / n, 3) for stage in STAGES}, "queue_depth": self.analysed.qsize(),
            "spool": {"pending": self.spool.pending, "dropped": self.spool.dropped}, "rss_mb": round(rss_mb(), 1),
            "cpu_temp_c": cpu_temp_c(), "publish_rate_hz": self.publisher.rate_hz,
            "model_id": self.bundle.model_id, "model_version": self.bundle.version, "model_source": self.source,
            "model_variant": self.variant.variant if self.source == "release" else None,
            "variant_reason": self.variant.reason if self.source == "release" else SOURCES[self.source]}
        log.info("%.1f fps, %.2f ms/frame, %d dropped, source %s, %d spooled, %.0f MB", stats["fps"],
                 stats["stage_ms"]["total"], stats["dropped_frames"], stats["source"], stats["spool"]["pending"],
                 stats["rss_mb"])
        self.link.publish(STATS, stats)


def run(cfg: Config) -> int:
    """The device until SIGTERM/SIGINT (0), or until a part of it fails (1); logging is the caller's to set up."""
    log.info("fer-edge %s starting", __version__)
    return Runtime(cfg).run()
