"""Home Assistant MQTT discovery: one device with several entities, built from the topics the device already publishes.

One retained message at ``<discovery_prefix>/device/<object_id>/config`` (Home Assistant's
device-based discovery, 2024.11 and later) describes the device, its ``origin`` (this software) and
its availability once, and lists the entities as components: the overall emotion (an ``enum``
sensor whose options are the classes and ``none``, with the overall summary as attributes),
its confidence, the faces in view, and, as diagnostics, fps, CPU temperature and model version.

No topic exists for Home Assistant's sake: the entities read the retained ``state`` (published on
change, so the recorder stores changes rather than a stream) and the periodic ``stats``, through
value templates. ``state_topic`` and the availability topic are shared at the device level; the
stats-based entities override the state topic.
"""

from __future__ import annotations

from edge import CLASS_NAMES, __version__
from edge.protocol.client import MqttConfig
from edge.protocol.payloads import encode
from edge.protocol.topics import AVAILABILITY, DRIFT, OFFLINE, ONLINE, STATE, STATS, device_topic

NO_FACE = "none"
"""``state.overall.label`` with no face in view."""


def object_id_of(device_id: str) -> str:
    """A device id as a discovery topic level and id stem (those allow ``[A-Za-z0-9_-]``)."""
    return device_id.replace(".", "_")


def discovery(cfg: MqttConfig, classes: tuple[str, ...] = CLASS_NAMES) -> tuple[str, bytes]:
    """(topic, payload) of the retained discovery message for the device ``cfg`` describes."""
    object_id = object_id_of(cfg.device_id)
    stats = device_topic(cfg.base, STATS)
    diagnostic = {"entity_category": "diagnostic"}
    entities = {
        "emotion": {"name": "Emotion", "device_class": "enum", "options": [*classes, NO_FACE],
                    "value_template": "{{ value_json.overall.label }}", "icon": "mdi:emoticon-outline",
                    "json_attributes_topic": device_topic(cfg.base, STATE),
                    "json_attributes_template": "{{ value_json.overall | tojson }}"},
        "confidence": {"name": "Emotion confidence", "unit_of_measurement": "%", "state_class": "measurement",
                       "suggested_display_precision": 0, "icon": "mdi:percent",
                       "value_template": "{{ (value_json.overall.confidence * 100) | round(1) }}"},
        "faces": {"name": "Faces in view", "state_class": "measurement", "icon": "mdi:account-multiple",
                  "value_template": "{{ value_json.overall.faces }}"},
        "fps": {"name": "Frames per second", "unit_of_measurement": "fps", "state_class": "measurement",
                "state_topic": stats, "value_template": "{{ value_json.fps }}", "icon": "mdi:speedometer",
                **diagnostic},
        "cpu_temperature": {"name": "CPU temperature", "device_class": "temperature", "unit_of_measurement": "°C",
                            "state_class": "measurement", "state_topic": stats,
                            "value_template": "{{ value_json.cpu_temp_c }}", **diagnostic},
        "model_version": {"name": "Model version", "value_template": "{{ value_json.model.version }}",
                          "icon": "mdi:brain", **diagnostic},
    }
    config = {
        "device": {"identifiers": [f"fer_edge_{object_id}"], "name": f"FER {cfg.device_id}", "model": "fer-edge",
                   "manufacturer": "fer-edge", "sw_version": __version__},
        "origin": {"name": "fer-edge", "sw_version": __version__},
        "availability_topic": device_topic(cfg.base, AVAILABILITY), "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "state_topic": device_topic(cfg.base, STATE), "qos": 1,
        "components": {f"{object_id}_{key}": {"platform": "sensor", "unique_id": f"fer_edge_{object_id}_{key}",
                                               **entity} for key, entity in entities.items()},
    }
    return f"{cfg.discovery_prefix}/device/{object_id}/config", encode(config)


def drift_discovery(base: str, discovery_prefix: str = "homeassistant") -> tuple[str, bytes]:
    """(topic, payload) of the retained discovery message of a device's drift alert: a ``binary_sensor`` of
    ``device_class: problem`` on the retained ``<base>/drift`` that ``tools drift`` (operator side) publishes, on
    when its ``drifting`` is true. ``base`` is ``<prefix>/[<group>/]<device>``; the sensor joins the device's own
    entry (the same identifiers as :func:`discovery`) and shares its availability."""
    oid = object_id_of(base.rsplit("/", 1)[-1])
    config = {"name": "Input drift", "unique_id": f"fer_edge_{oid}_drift", "object_id": f"{oid}_drift",
              "device_class": "problem", "entity_category": "diagnostic", "icon": "mdi:chart-bell-curve",
              "state_topic": device_topic(base, DRIFT), "qos": 1,
              "value_template": "{{ 'ON' if value_json.drifting else 'OFF' }}",
              "json_attributes_topic": device_topic(base, DRIFT),
              "json_attributes_template": "{{ {'score': value_json.score} | combine(value_json.features) | tojson }}",
              "availability_topic": device_topic(base, AVAILABILITY), "payload_available": ONLINE,
              "payload_not_available": OFFLINE,
              "device": {"identifiers": [f"fer_edge_{oid}"]},
              "origin": {"name": "fer-edge", "sw_version": __version__}}
    return f"{discovery_prefix}/binary_sensor/{oid}_drift/config", encode(config)
