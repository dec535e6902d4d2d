"""Configuration: presets, files, overrides, the LR schedule."""

import pytest

from edge.errors import UserError
from trainer.run.config import ScheduleConfig, load_config, parse_assignment


def test_report_preset_is_table_1():
    cfg = load_config("fer2013", "report")
    assert (cfg.optimizer, cfg.epochs, cfg.batch_size) == ("adam", 200, 512)
    assert cfg.schedule.kind == "step" and cfg.schedule.values == [0.01, 0.001, 0.0001]
    jaffe = load_config("jaffe", "report")
    assert (jaffe.optimizer, jaffe.epochs, jaffe.batch_size, jaffe.schedule.values) == ("sgd", 80, 14, [0.05, 0.01, 0.005])


def test_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 7\nmodel:\n  width: 16\naugment:\n  mixup: 0.2\n")
    cfg = load_config("ckplus", file=path, overrides=[parse_assignment("model.width=24"), {"epochs": 9}])
    assert (cfg.epochs, cfg.model.width, cfg.augment.mixup) == (9, 24, 0.2)


@pytest.mark.parametrize("text, message", [
    ("colour: 3\n", "unknown config key 'colour'"),
    ("model:\n  widht: 3\n", "unknown config key 'model.widht'"),
    ("epochs: many\n", "epochs"),
    ("model:\n  depth: 19\n", "depth"),
    ("[1, 2\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config("ckplus", file=path)


def test_bad_preset_and_assignment():
    with pytest.raises(UserError, match="preset"):
        load_config("ckplus", "fast")
    with pytest.raises(UserError, match="key=value"):
        parse_assignment("epochs")


def test_step_schedule_by_epoch():
    schedule = ScheduleConfig(kind="step", values=[0.01, 0.001, 0.0001], milestones=[0.5, 0.75])
    assert [schedule.lr_at(e, 200) for e in (0, 99.9, 100, 149, 150, 199)] == [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = ScheduleConfig(kind="cosine", lr=0.1, warmup_epochs=2)
    values = [schedule.lr_at(e / 10, 20) for e in range(0, 200)]
    assert values[0] < 0.01 and max(values) == pytest.approx(0.1, rel=1e-3)
    peak = values.index(max(values))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))
    assert schedule.lr_at(20, 20) == pytest.approx(0.0, abs=1e-12)
