"""The device's configuration: one dataclass tree, read from YAML or TOML, checked before anything starts.

A device runs unattended, so every mistake is caught at start-up with one line naming the key:
unknown keys are refused (a typo must not silently fall back to a default), values are type- and
range-checked, and every field has a default so an empty file is a valid configuration.
Secrets never live in the file: the broker password is read from the environment variable named
by ``mqtt.password_env``. Command-line flags override the file (:func:`load_config`'s ``overrides``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from edge import DEFAULT_BUNDLE_NAME
from edge.errors import UserError

SHIPPED_BUNDLE = Path(__file__).resolve().parents[1] / "models" / DEFAULT_BUNDLE_NAME
"""The release model in the project's ``models/`` folder: what a device runs until it is given another."""
RELEASE_KEYS = Path(__file__).resolve().parent / "assets" / "keys"
"""The public half of the project's release key, which signed the shipped bundle."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Device ids and topic levels: MQTT wildcards or empty levels would reach other devices' topics."""


@dataclass
class SourceConfig:
    uri: str = "0"
    """Camera index, ``picamera``, a video file, a folder of images, or an rtsp:// / http(s):// URL."""
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
        _positive(self, "width", "height", "reopen_min_s", "reopen_max_s")
        if self.fps < 0:
            raise UserError(f"config source.fps must be >= 0, got {self.fps!r}")


@dataclass
class DetectorConfig:
    name: str = "blazeface"
    """``blazeface`` (LiteRT, fast) or ``haar`` (OpenCV only)."""
    min_score: float = 0.5
    min_size: int = 40
    """Smallest face side in pixels; smaller faces carry too little expression to classify."""
    max_faces: int = 5

    def check(self) -> None:
        _choice(self, "name", ("blazeface", "haar"))
        _fraction(self, "min_score")
        _positive(self, "max_faces")
        if self.min_size < 0:
            raise UserError("config detector.min_size must be >= 0")


@dataclass
class ModelConfig:
    bundle: str = ""
    """The bundle folder; empty means ``<dir>/current`` (the one OTA updates replace) or, before any
    update, the shipped release bundle."""
    dir: str = "models"
    threads: int = 1
    tta_flip: bool = False
    """Average each face with its mirror image: steadier scores for twice the inference time."""
    trusted_keys: list[str] = field(default_factory=lambda: [str(RELEASE_KEYS)])
    """Public-key files or folders (default: the project's release key); bundles signed by one of them can be
    flashed over MQTT or dropped in ``<dir>/incoming``. A list replaces the default; ``[]`` turns updates off."""

    def check(self) -> None:
        _positive(self, "threads")

    @property
    def path(self) -> Path:
        if self.bundle:
            return Path(self.bundle)
        current = Path(self.dir) / "current"
        return current if current.exists() else SHIPPED_BUNDLE


@dataclass
class TrackingConfig:
    iou: float = 0.3
    """Minimum overlap of a face with a track's last box to continue that track."""
    max_missed: int = 5
    """Frames a track survives without a matching face (blinks, missed detections)."""
    smoothing: float = 0.3
    """EMA weight of the newest scores: lower is steadier, higher reacts faster."""

    def check(self) -> None:
        _fraction(self, "iou", "smoothing")
        if self.max_missed < 0:
            raise UserError("config tracking.max_missed must be >= 0")


@dataclass
class PublishConfig:
    rate_hz: float = 1.0
    """Events per second per track while its emotion stays the same; a change is published at once."""
    stats_interval_s: float = 30.0

    def check(self) -> None:
        _positive(self, "rate_hz", "stats_interval_s")


@dataclass
class MqttConfig:
    broker: str = "mqtt://localhost:1883"
    """``mqtt[s]://[user@]host[:port]``; mqtts uses TLS (port 8883 by default)."""
    device_id: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "edge")
    prefix: str = "fer"
    protocol: str = "5"
    """``5`` or ``3.1.1``."""
    username: str = ""
    password_env: str = "MQTT_PASSWORD"
    """Name of the environment variable holding the password (never the password itself)."""
    tls_ca: str = ""
    """CA file for mqtts:// (empty: the system's CAs)."""
    tls_cert: str = ""
    tls_key: str = ""
    keepalive_s: int = 15
    reconnect_max_s: float = 30.0
    homeassistant: bool = False
    """Publish Home Assistant MQTT discovery so the device's overall emotion appears as a sensor."""
    discovery_prefix: str = "homeassistant"

    def check(self) -> None:
        _choice(self, "protocol", ("5", "3.1.1"))
        _positive(self, "keepalive_s", "reconnect_max_s")
        if not NAME.fullmatch(self.device_id):
            raise UserError(f"config mqtt.device_id {self.device_id!r}: use letters, digits, '.', '_', '-' (no '/', '+', '#')")
        if not all(NAME.fullmatch(level) for level in self.prefix.split("/")):
            raise UserError(f"config mqtt.prefix {self.prefix!r}: levels of letters, digits, '.', '_', '-' joined by '/'")
        self.endpoint()

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) of :attr:`broker`; a user name in the URL goes to :attr:`username`."""
        parts = urlsplit(self.broker if "://" in self.broker else f"mqtt://{self.broker}")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.password:
            raise UserError(f"config mqtt.broker {self.broker!r} is not mqtt[s]://[user@]host[:port] "
                            f"(passwords go in ${self.password_env})")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise UserError(f"config mqtt.broker {self.broker!r} has a bad port") from None
        if parts.username:
            self.username = unquote(parts.username)
        return parts.hostname, port, parts.scheme == "mqtts"

    @property
    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"


@dataclass
class SpoolConfig:
    path: str = "spool.db"
    max_events: int = 100_000
    """Bound of the outage queue; at the bound the oldest event is dropped and counted (about 1 KB each)."""

    def check(self) -> None:
        _positive(self, "max_events")


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
        _choice(self, "log_level", ("debug", "info", "warning", "error"))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.check()


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


def read_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise UserError(f"config {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                        f"{' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of sections")
    return data


def build(cls, data: dict, where: str = ""):
    """A dataclass from a nested mapping: unknown keys refused, each value checked against its type hint.

    The trainer's configuration is built by the same function, so both refuse mistakes the same way.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown config key {where}{unknown[0]}; known keys here: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint, key = hints[name], f"{where}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {key} must be a mapping")
            values[name] = build(hint, value, f"{key}.")
        else:
            values[name] = _coerce(hint, value, key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise UserError(f"bad config {where.rstrip('.') or 'value'}: {exc}") from None


def _coerce(hint, value, key: str):
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list):
            return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        raise UserError(f"config key {key} must be a list of {_type_name(item)} values, got {value!r}")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind is int and isinstance(value, (int, float)) and value == int(value):
            return int(value)
        if kind is str and isinstance(value, (str, int)):
            return str(value)  # camera indices and protocol versions are often written as numbers
    raise UserError(f"config key {key} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _positive(section, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            raise UserError(f"config {_key(section, name)} must be > 0, got {getattr(section, name)!r}")


def _fraction(section, *names: str) -> None:
    for name in names:
        if not 0 < getattr(section, name) <= 1:
            raise UserError(f"config {_key(section, name)} must be in (0, 1], got {getattr(section, name)!r}")


def _choice(section, name: str, choices: tuple[str, ...]) -> None:
    if getattr(section, name) not in choices:
        raise UserError(f"config {_key(section, name)} must be one of {', '.join(choices)}, got {getattr(section, name)!r}")


def _key(section, name: str) -> str:
    """``source.fps`` for a section's field, ``log_level`` for a top-level one."""
    where = type(section).__name__.removesuffix("Config").lower()
    return f"{where}.{name}" if where else name
