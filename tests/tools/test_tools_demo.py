"""`tools demo`: broker, a real device process and the subscriber, on both kinds of local broker."""

from __future__ import annotations

import io
import re

import pytest

import tools.broker
from edge import CLASS_NAMES
from tools.demo import DEVICE_ID, demo


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_runs_end_to_end_and_stops_cleanly(broker, tiny_bundle, monkeypatch):
    if broker == "embedded":
        monkeypatch.setattr(tools.broker, "mosquitto_binary", lambda: None)
    elif tools.broker.mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    out = io.StringIO()
    # The README's command (shipped bundle) on mosquitto; the tiny bundle keeps the second run short.
    assert demo(None if broker == "mosquitto" else tiny_bundle, duration=20, out=out) == 0
    text = out.getvalue()
    assert ("amqtt" in text) == (broker == "embedded")
    row = re.search(rf"^{DEVICE_ID}\s+online\s+\d+\s+(\w+)\s+([\d.]+)\s+[\d.]+\s+\S+\s+(\d+)", text, re.M)
    assert row, text
    assert row.group(1) == "happy" if broker == "mosquitto" else row.group(1) in CLASS_NAMES  # the astronaut smiles
    assert int(row.group(3)) > 0
    assert "stopped cleanly" in text


def test_demo_reports_a_device_that_cannot_start(tmp_path):
    from edge.errors import UserError

    with pytest.raises(UserError, match="device exited with code"):
        demo(tmp_path / "no-such-bundle", duration=60, out=io.StringIO())
