"""Device configuration: defaults, YAML = TOML, overrides, secrets from the environment, one-line refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge import DEFAULT_BUNDLE_NAME
from edge.device.config import RELEASE_KEYS, SHIPPED_BUNDLE, Config, load_config
from edge.errors import UserError

YAML = "source:\n  uri: '2'\n  loop: true\nmqtt:\n  broker: mqtts://ops@broker.local\n  device_id: pi-07\n"
TOML = "[source]\nuri = 2\nloop = true\n[mqtt]\nbroker = 'mqtts://ops@broker.local'\ndevice_id = 'pi-07'\n"


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == load_config()
    assert load_config().mqtt.endpoint() == ("localhost", 1883, False)


def test_yaml_and_toml_agree_and_overrides_win(tmp_path, monkeypatch):
    (tmp_path / "d.yaml").write_text(YAML)
    (tmp_path / "d.toml").write_text(TOML)
    cfg = load_config(tmp_path / "d.yaml")
    assert cfg == load_config(tmp_path / "d.toml")
    assert cfg.source.uri == "2" and cfg.source.loop
    assert cfg.mqtt.endpoint() == ("broker.local", 8883, True) and cfg.mqtt.username == "ops"
    monkeypatch.setenv("MQTT_PASSWORD", "s3cret")
    assert cfg.mqtt.password == "s3cret"
    cfg = load_config(tmp_path / "d.yaml", {"mqtt": {"device_id": "pi-08"}, "model": {"bundle": "b"}})
    assert (cfg.mqtt.device_id, cfg.mqtt.base, str(cfg.model.release)) == ("pi-08", "fer/pi-08", "b")


def test_the_release_bundle_is_model_bundle_else_the_shipped_one(tmp_path):
    """The release bundle; an installed update runs before it only once verified (tests/edge/test_trust_device.py)."""
    model = Config().model
    assert model.release == SHIPPED_BUNDLE and SHIPPED_BUNDLE.name == DEFAULT_BUNDLE_NAME
    model.bundle = str(tmp_path)
    assert model.release == tmp_path
    assert [Path(k) for k in model.trusted_keys] == [RELEASE_KEYS] and list(RELEASE_KEYS.glob("*.pub"))


@pytest.mark.parametrize("text, message", [
    ("sourc:\n  uri: 0\n", "unknown config key 'sourc'"),
    ("mqtt:\n  brokr: x\n", "unknown config key 'mqtt.brokr'"),
    ("source: 3\n", "config key source must be a mapping"),
    ("source:\n  width: wide\n", "config key source.width must be int"),
    ("source:\n  loop: 1\n", "source.loop must be bool"),
    ("detector:\n  name: mtcnn\n",
     "detector.name must be one of blazeface, blazeface-tiles, blazeface-int8, blazeface-full, auto, haar"),
    ("detector:\n  min_score: 1.5\n", "detector.min_score must be in (0, 1]"),
    ("detector:\n  every_n: 0\n", "detector.every_n must be > 0"),
    ("detector:\n  every_n: 2.5\n", "detector.every_n must be int"),
    ("model:\n  threads: 0\n", "model.threads must be > 0"),
    ("model:\n  trusted_keys: keys.pub\n", "model.trusted_keys must be a list of str values"),
    ("publish:\n  rate_hz: -1\n", "publish.rate_hz must be > 0"),
    ("mqtt:\n  protocol: 4\n", "mqtt.protocol must be one of 5, 3.1.1"),
    ("mqtt:\n  device_id: a/b\n", "mqtt.device_id 'a/b'"),
    ("mqtt:\n  prefix: 'fer/#'\n", "mqtt.prefix"),
    ("mqtt:\n  broker: 'http://x'\n", "mqtt.broker 'http://x' is not mqtt"),
    ("mqtt:\n  broker: 'mqtt://u:pw@x'\n", "passwords go in $MQTT_PASSWORD"),
    ("mqtt:\n  broker: 'mqtt://x:port'\n", "bad port"),
    ("log_level: loud\n", "log_level must be one of"),
    ("[1, 2\n", "is not valid YAML"),
    ("- 1\n", "must be a mapping of sections"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[source\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(UserError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_edge_run_refuses_bad_config_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("tracking:\n  smoothing: 2\n")
    done = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(tmp_path / "bad.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "edge: error: config tracking.smoothing must be in (0, 1], got 2.0\n"


def test_edge_run_names_a_missing_source(tmp_path, tiny_bundle):
    done = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--bundle", str(tiny_bundle), "--source",
                           str(tmp_path / "nope.mp4"), "--broker", "mqtt://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith("edge: error: source ")


def test_example_device_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "deploy" / "device.yaml")
    assert cfg.mqtt.base == "fer/kitchen-pi" and cfg.detector.name == "auto"


def test_default_state_is_kept_per_device_id(tmp_path, monkeypatch):
    """Two devices started in one folder with default paths keep apart spools and model folders."""
    monkeypatch.chdir(tmp_path)
    one, two = (load_config(overrides={"mqtt": {"device_id": d}}) for d in ("pi-01", "pi-02"))
    assert (one.spool.path, one.model.dir) == ("devices/pi-01/spool.db", "devices/pi-01/models")
    assert two.spool.path != one.spool.path and two.model.dir != one.model.dir
    chosen = load_config(overrides={"mqtt": {"device_id": "pi-01"}, "spool": {"path": "q.db"}, "model": {"dir": "m"}})
    assert (chosen.spool.path, chosen.model.dir) == ("q.db", "m")
