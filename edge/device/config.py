"""The device's configuration: one dataclass tree, read from YAML or TOML, checked before anything starts.

A device runs unattended, so every mistake is caught at start-up with one line naming the key:
unknown keys are refused (a typo must not silently fall back to a default), values are type- and
range-checked, and every field has a default so an empty file is a valid configuration.
Secrets never live in the file: the broker password is read from the environment variable named
by ``mqtt.password_env``. Command-line flags override the file (:func:`load_config`'s ``overrides``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import UserError
from edge.model.classifier import BACKENDS
from edge.model.detect import DETECTORS
from edge.model.onnx_backend import PROVIDERS
from edge.model.trust import SHIPPED_KEYS
from edge.protocol.client import MqttConfig
from edge.release import DEFAULT, VARIANTS, shipped_variants, variant_path
from edge.validate import build, choice, fraction, positive, read_file

SHIPPED_BUNDLE = variant_path(DEFAULT)
"""The default release model: what a device runs until it is given another (or configured to run another shipped
variant). Package data (the repository's ``models/`` folder, ``edge/release`` in a wheel), so an installed device
finds it from any folder; found through the package's own ``__file__``, never through a name another distribution
could also ship."""
STATE_DIR = "devices"
"""Where a device keeps its state by default, one folder per device id (relative to the working folder)."""
AUTO = "auto"
"""``model.variant``: choose among the shipped variants by measurement at start (:mod:`edge.device.variants`)."""
RELEASE_KEYS = SHIPPED_KEYS
"""The public half of the project's release key, which signed the shipped bundle."""




@dataclass
class SourceConfig:
    uri: str = "0"
    """Camera index, ``picamera``, a video file, a folder of images, an rtsp:// / http(s):// URL, or ``gst:PIPELINE``
    (a GStreamer pipeline ending in appsink, where OpenCV was built with GStreamer: a Jetson's CSI camera)."""
    width: int = 640
    height: int = 480
    fps: float = 0.0
    """Frames per second to read files and folders at (0: the file's own rate, 10 for folders); cameras run free."""
    loop: bool = False
    """Start a video file or folder again at its end (demos, soak tests); otherwise the runtime stops there."""
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0
    """A source that fails is reopened after ``reopen_min_s``, doubling up to this."""

    def check(self) -> None:
        positive(self, "width", "height", "reopen_min_s", "reopen_max_s")
        if self.fps < 0:
            raise UserError(f"config source.fps must be >= 0, got {self.fps!r}")


@dataclass
class DetectorConfig:
    name: str = "auto"
    """``auto`` (the short-range model on the whole frame while faces are near, on tiles too while the camera sees
    small faces across a room), or one fixed: ``blazeface`` (one invoke, near faces), ``blazeface-tiles`` (a room),
    ``blazeface-int8`` (the same model in INT8: faster on integer hardware such as a Pi, a little less recall),
    ``blazeface-full`` (MediaPipe's full-range model) or ``haar`` (OpenCV only); see :mod:`edge.model.detect`."""
    min_score: float = 0.5
    """BlazeFace's score threshold (Haar has none)."""
    min_size: int = 40
    """Smallest face side in pixels; smaller faces carry too little expression to classify."""
    max_faces: int = 5
    every_n: int = 1
    """Run the detector on every n-th frame only and follow the faces in between (a detection at once when one is
    lost); new faces are then found up to n - 1 frames late. ``edge bench --every-n`` measures what it saves."""

    def check(self) -> None:
        choice(self, "name", tuple(DETECTORS))
        fraction(self, "min_score")
        positive(self, "max_faces", "every_n")
        if self.min_size < 0:
            raise UserError("config detector.min_size must be >= 0")


@dataclass
class ModelConfig:
    variant: str = DEFAULT
    """Which shipped bundle is the release bundle: ``fast``, ``default`` or ``accurate`` (where shipped), or ``auto``:
    timed at start on this device, the most accurate one whose frame fits ``target_fps`` with ``expected_faces``
    (``edge bench --choose`` shows the same measurement; ``stats`` says which runs and why)."""
    target_fps: float = 10.0
    """``auto``'s budget: the frame rate the detector and the emotion model must keep up with."""
    expected_faces: int = 1
    """``auto``'s budget: faces in a frame (the emotion model runs once per face)."""
    bundle: str = ""
    """A release bundle of your own instead of a shipped variant: what the device runs before any update is installed,
    and whenever an installed one fails its re-verification at start; empty means the shipped ``variant``. The one
    rule: with updates on (``trusted_keys`` not empty) an installed update (``<dir>/current``) whose signature verifies
    runs first, then this bundle (or the variant); ``stats`` (``model_source``, ``model_variant``) and the start-up log
    say which runs."""
    dir: str = ""
    """Installed updates (``current``, ``incoming/``, the trust statements received); empty means
    ``devices/<mqtt.device_id>/models``, so two devices started in one folder never share one."""
    threads: int = 1
    tta_flip: bool = False
    """Average each face with its mirror image: steadier scores for twice the inference time."""
    trusted_keys: list[str] = field(default_factory=lambda: [str(RELEASE_KEYS)])
    """Public-key files or folders (default: the project's release key); bundles signed by one of them can be
    flashed over MQTT or dropped in ``<dir>/incoming``. A list replaces the default; ``[]`` turns updates off."""
    backend: str = "litert"
    """``litert`` runs the bundle's model.tflite on the CPU; ``onnxruntime`` its model.onnx (a Jetson's GPU)."""
    providers: list[str] = field(default_factory=list)
    """onnxruntime only: ``tensorrt``, ``cuda``, ``cpu`` in the order to try; empty: every one this onnxruntime
    offers, in that order. A listed provider that is not installed is an error at start."""

    def check(self) -> None:
        positive(self, "threads", "target_fps", "expected_faces")
        choice(self, "variant", (*VARIANTS, AUTO))
        if self.variant != AUTO and self.variant not in shipped_variants():
            raise UserError(f"config model.variant: {self.variant!r} is not a shipped variant; this install ships "
                            f"{', '.join(shipped_variants())} (or auto: the most accurate one that fits the frame budget)")
        if self.bundle and self.variant != DEFAULT:
            raise UserError(f"config sets both model.bundle and model.variant ({self.variant!r}): a variant is a shipped "
                            "bundle; set one of them")
        choice(self, "backend", BACKENDS)
        for name in self.providers:
            if name not in PROVIDERS:
                raise UserError(f"config model.providers: unknown provider {name!r}; known: {', '.join(PROVIDERS)}")
        if len(set(self.providers)) != len(self.providers):
            raise UserError(f"config model.providers lists a provider twice: {self.providers}")
        if self.providers and self.backend != "onnxruntime":
            raise UserError("config model.providers applies to model.backend: onnxruntime only; "
                            f"backend is {self.backend!r}")

    @property
    def release(self) -> Path:
        """The bundle to run while no update is current, or when the current one fails re-verification at start:
        ``bundle``, else the shipped ``variant`` (``auto`` is resolved by measurement before: :mod:`edge.device.variants`)."""
        if self.variant == AUTO:
            raise RuntimeError("model.variant auto must be resolved (edge.device.variants.resolve) before use")
        return Path(self.bundle) if self.bundle else variant_path(self.variant)


@dataclass
class TrackingConfig:
    iou: float = 0.3
    """Minimum overlap of a face with a track's last box to continue that track."""
    max_missed: int = 5
    """Frames a track survives without a matching face (blinks, missed detections)."""
    smoothing: float = 0.3
    """EMA weight of the newest scores: lower is steadier, higher reacts faster."""

    def check(self) -> None:
        fraction(self, "iou", "smoothing")
        if self.max_missed < 0:
            raise UserError("config tracking.max_missed must be >= 0")


@dataclass
class PublishConfig:
    rate_hz: float = 1.0
    """Events per second per track while its emotion stays the same; a change is published at once."""
    stats_interval_s: float = 30.0

    def check(self) -> None:
        positive(self, "rate_hz", "stats_interval_s")


@dataclass
class SpoolConfig:
    path: str = ""
    """The outage queue's SQLite file; empty means ``devices/<mqtt.device_id>/spool.db``, so a device never sends
    another's queued events."""
    max_events: int = 100_000
    """Bound of the outage queue; at the bound the oldest event is dropped and counted (about 1 KB each)."""

    def check(self) -> None:
        positive(self, "max_events")


@dataclass
class PreviewConfig:
    """Annotated frames (boxes, labels) for debugging; they stay on the device."""

    window: bool = False
    video: str = ""

    def check(self) -> None:
        pass


@dataclass
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    log_level: str = "info"

    def check(self) -> None:
        choice(self, "log_level", ("debug", "info", "warning", "error"))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.check()
        state = Path(STATE_DIR) / self.mqtt.device_id  # the device id is checked above: one safe path level
        self.model.dir = self.model.dir or str(state / "models")
        self.spool.path = self.spool.path or str(state / "spool.db")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """The checked configuration from a YAML/TOML file (or none) with ``overrides`` (``{"mqtt": {...}}``) on top."""
    data = read_file(Path(path)) if path else {}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise UserError(f"config key {section} must be a mapping")
        data[section].update(values)
    config = build(Config, data)
    config.check()
    return config
