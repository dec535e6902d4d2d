"""``edge run``: capture -> analyse -> publish, three threads joined by small queues (Frigate-style).

The capture thread keeps only the newest frame; the analysis thread runs detection, preprocessing
and inference; the publish thread tracks, smooths, writes events to the spool and draws the
optional preview. The main thread owns everything slow or rare: commands from MQTT (reload,
publish rate, stats, model updates), the stats timer and shutdown. SIGTERM and SIGINT stop the
capture, let the queued frames finish, deliver what is spooled, announce ``offline`` and exit.
"""

from __future__ import annotations

import logging
import os
import queue
import resource
import signal
import threading
import time
from pathlib import Path

import cv2

from edge import __version__
from edge.model.bundle import Bundle, load_bundle
from edge.model.classifier import EmotionClassifier
from edge.device.config import Config
from edge.model.detect import make_detector
from edge.errors import UserError
from edge.device.link import MqttLink
from edge.device.updates import Updater
from edge.device.pipeline import STAGES, Analysis, Analyzer, Publisher
from edge.device.sources import Grabber, make_source
from edge.device.spool import Spool
from edge.device.tracking import Tracker

log = logging.getLogger("edge.device.runtime")


def rss_mb(peak: bool = False) -> float:
    """Resident memory of this process in MB (the peak since start with ``peak``)."""
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_temp_c() -> float | None:
    """The first readable thermal zone (Raspberry Pi, Jetson), or None."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def log_update(answer: dict) -> None:
    """A model update's outcome in the device's log too (the operator sees it on the ``ota`` topic)."""
    if answer["status"] == "installed":
        log.info("model update %s installed: %s version %s", answer["transfer"], answer["model_id"], answer["version"])
    elif answer["status"] == "refused":
        log.warning("model update %s refused: %s", answer["transfer"], answer["reason"])


def make_detector_for(cfg: Config):
    options = {"min_size": cfg.detector.min_size}
    if cfg.detector.name == "blazeface":
        options.update(min_score=cfg.detector.min_score, threads=cfg.model.threads)
    return make_detector(cfg.detector.name, **options)


class Runtime:
    def __init__(self, cfg: Config):
        self.cfg, self.started = cfg, time.monotonic()
        self.commands: queue.Queue[dict] = queue.Queue()
        self.updater = Updater(cfg.model.dir, cfg.model.trusted_keys, self._install) if cfg.model.trusted_keys else None
        for answer in self.updater.reload() if self.updater else []:
            log_update(answer)
        self.bundle = self._load_bundle()
        classifier = EmotionClassifier(self.bundle, cfg.model.threads, cfg.model.tta_flip)
        self.analyzer = Analyzer(make_detector_for(cfg), classifier, cfg.detector.max_faces)
        self.grabber = Grabber(make_source(cfg.source), cfg.source)
        self.preview = Preview(cfg) if cfg.preview.window or cfg.preview.video else None
        self.spool = Spool(cfg.spool.path, cfg.spool.max_events)
        self.link = MqttLink(cfg.mqtt, self.spool, self.commands.put)
        self.publisher = Publisher(Tracker(cfg.tracking), self.link, cfg.publish, cfg.mqtt.device_id)
        self.analysed: queue.Queue[Analysis | None] = queue.Queue(maxsize=4)
        self.stop_event = threading.Event()
        self.frames = 0
        self._window = {"frames": 0, "since": time.monotonic(), **dict.fromkeys(STAGES, 0.0)}
        self._lock = threading.Lock()

    def _load_bundle(self) -> Bundle:
        path = self.updater.bundle_path(self.cfg.model.path) if self.updater else self.cfg.model.path
        bundle = load_bundle(path)
        log.info("model %s version %s from %s (%s input %s)", bundle.model_id, bundle.version, path,
                 bundle.manifest["input"]["dtype"], "x".join(map(str, bundle.manifest["input"]["shape"][1:3])))
        return bundle

    def _install(self, bundle: Bundle) -> None:
        """Swap in a new model between two frames (OTA install or reload)."""
        self.analyzer.classifier = EmotionClassifier(bundle, self.cfg.model.threads, self.cfg.model.tta_flip)
        self.bundle = bundle
        log.info("now running model %s version %s", bundle.model_id, bundle.version)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.grabber.start()
        self.link.start()
        workers = [threading.Thread(target=self._analyse, name="analyse"),
                   threading.Thread(target=self._publish, name="publish")]
        for worker in workers:
            worker.start()
        log.info("running: %s, detector %s, %d thread(s), device %s", self.grabber.source.name,
                 self.cfg.detector.name, self.cfg.model.threads, self.cfg.mqtt.base)
        next_stats = time.monotonic() + self.cfg.publish.stats_interval_s
        while not self.stop_event.is_set() and workers[1].is_alive():
            try:
                self._command(self.commands.get(timeout=0.2))
            except queue.Empty:
                pass
            if time.monotonic() >= next_stats:
                self._stats()
                next_stats = time.monotonic() + self.cfg.publish.stats_interval_s
        log.info("stopping")
        self.stop_event.set()
        self.grabber.stop()
        for worker in workers:
            worker.join(10)
        if self.preview:
            self.preview.close()
        self._stats()
        self.link.stop()
        self.spool.close()
        log.info("stopped after %d frames; %d events, last event seq %d", self.frames, self.publisher.seq,
                 self.publisher.seq - 1)
        return 0

    def _analyse(self) -> None:
        while not self.stop_event.is_set() and not self.grabber.ended:
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

    def _command(self, command: dict) -> None:
        """Carry out one validated command; a failure is answered on ``reply`` and the device runs on."""
        name, reply = command["cmd"], {"cmd": command["cmd"], "ok": True}
        if "id" in command:
            reply["id"] = command["id"]
        try:
            if name.startswith("ota_"):
                if self.updater is None:
                    raise UserError("model updates are off on this device: set model.trusted_keys")
                answer = self.updater.command(command)
                if answer is not None:
                    log_update(answer)
                    self.link.publish("ota", answer)
                return
            if name == "reload":
                for answer in self.updater.reload() if self.updater else []:
                    log_update(answer)
                    self.link.publish("ota", answer)
                self._install(self._load_bundle())
                reply["model"] = {"id": self.bundle.model_id, "version": self.bundle.version}
            elif name == "set_rate":
                self.publisher.rate_hz = reply["rate_hz"] = float(command["rate_hz"])
                log.info("publish rate set to %g Hz per track", self.publisher.rate_hz)
            elif name == "stats":
                self._stats()
        except UserError as exc:
            log.warning("command %s failed: %s", name, exc)
            reply.update(ok=False, error=str(exc))
        self.link.publish("reply", reply)

    def _stats(self) -> None:
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
            "model_id": self.bundle.model_id, "model_version": self.bundle.version}
        log.info("%.1f fps, %.2f ms/frame, %d dropped, source %s, %d spooled, %.0f MB", stats["fps"],
                 stats["stage_ms"]["total"], stats["dropped_frames"], stats["source"], stats["spool"]["pending"],
                 stats["rss_mb"])
        self.link.publish("stats", stats)


class Preview:
    """Boxes and labels drawn on the frames, to a window and/or a video file; never sent anywhere."""

    def __init__(self, cfg: Config):
        self.window, self.path, self.fps = cfg.preview.window, cfg.preview.video, cfg.source.fps or 10.0
        self.writer: cv2.VideoWriter | None = None
        if self.window:
            try:
                cv2.namedWindow("edge")
            except cv2.error:
                raise UserError("preview.window needs OpenCV with GUI support (opencv-python, not -headless) "
                                "and a display; use preview.video instead") from None

    def show(self, analysis: Analysis, tracks) -> None:
        image = analysis.frame.image.copy()
        classes = analysis.bundle.classes
        for track in tracks:
            if track.missed:
                continue
            x, y, w, h = track.box
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 2)
            label = f"#{track.id} {classes[int(track.scores.argmax())]} {track.scores.max():.2f}"
            cv2.putText(image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        if self.path:
            if self.writer is None:
                self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                              (image.shape[1], image.shape[0]))
            self.writer.write(image)
        if self.window:
            cv2.imshow("edge", image)
            cv2.waitKey(1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.window:
            cv2.destroyAllWindows()


def run(cfg: Config) -> int:
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("fer-edge %s starting", __version__)
    return Runtime(cfg).run()
