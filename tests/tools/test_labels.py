"""Device labels (``--device label:NAME`` with ``--labels FILE``): expanded into the ids and globs the file lists,
every mistake in the file or on the command line one line."""

from __future__ import annotations

import pytest
import yaml

from edge.errors import UserError
from tools.cli import main
from tools.labels import device_targets, load_labels


def labels_file(tmp_path, labels) -> str:
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump({"labels": labels}))
    return path


def test_labels_expand_to_their_devices_and_mix_with_ids_and_globs(tmp_path):
    path = labels_file(tmp_path, {"canary": ["pi-07"], "lobby": ["lobby-1", "lobby-2", "kitchen/*"]})
    assert [t.text for t in device_targets(["label:lobby", "pi-01", "lobby-2", "label:canary"], path)] == \
        ["lobby-1", "lobby-2", "kitchen/*", "pi-01", "pi-07"]  # in order, each device once
    assert [t.text for t in device_targets(["pi-*"])] == ["pi-*"]  # no labels file needed without labels
    assert set(load_labels(path)) == {"canary", "lobby"}


@pytest.mark.parametrize("labels, message", [
    ({"lobby": []}, "label lobby must list device ids or globs"),
    ({"lobby": "pi-01"}, "label lobby must list device ids or globs"),
    ({"lob by": ["pi-01"]}, "label 'lob by' is not allowed"),
    ({"lobby": ["label:canary"]}, "labels do not nest"),
    ({"lobby": ["../etc"]}, "may not contain '/'"),
    ({"lobby": ["pi-+"]}, "is not allowed"),
    ({"lobby": ["kitchen/../*"]}, "is not allowed"),
])
def test_a_bad_labels_file_is_refused_in_one_line(tmp_path, labels, message):
    with pytest.raises(UserError, match=message):
        load_labels(labels_file(tmp_path, labels))


def test_label_mistakes_on_the_command_line_are_one_line(tmp_path, capsys):
    path = labels_file(tmp_path, {"canary": ["pi-07"]})
    bundle = tmp_path / "bundle"
    cases = ((["--device", "label:canary"], "needs --labels FILE"),
             (["--device", "label:lobby", "--labels", str(path)], "no label 'lobby' in"),
             (["--device", "label:canary", "--labels", str(tmp_path / "missing.yaml")], "cannot read config"))
    (tmp_path / "other.yaml").write_text("devices: [pi-01]\n")
    cases += ((["--device", "label:canary", "--labels", str(tmp_path / "other.yaml")], "must hold one key, labels"),)
    for args, message in cases:
        assert main(["trust", "revoke", "0123456789abcdef", "--key", str(bundle), "--broker", "mqtt://127.0.0.1:1",
                     *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
