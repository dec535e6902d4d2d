"""The shipped model variants: every one signed, full INT8 and passing ``edge check``; chosen by measurement on the
machine (``edge bench --choose``, ``model.variant: auto``), each choice saying what it traded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from edge.release import DEFAULT, VARIANTS, shipped_variants, variant_path

from edge.device.config import RELEASE_KEYS, load_config
from edge.device.variants import Budget, Timing, accuracy, choose
from edge.errors import UserError
from edge.model.bundle import load_bundle
from edge.model.litert import non_int8_tensors
from edge.model.trust import load_trusted_keys, verify_bundle_files
from edge.protocol.payloads import SCHEMAS

SHIPPED = shipped_variants()


def edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("variant", SHIPPED)
def test_every_shipped_variant_is_signed_full_int8_and_passes_edge_check(variant):
    path = variant_path(variant)
    bundle = load_bundle(path)
    assert verify_bundle_files(path, load_trusted_keys([RELEASE_KEYS])) == "7756efc5677aafca"
    assert non_int8_tensors(bundle.model_bytes) == [] and bundle.manifest["input"]["shape"] == [1, 48, 48, 1]
    assert bundle.manifest["training"]["dataset"] == "fer2013" and 0.6 < accuracy(bundle) < 1
    done = edge("check", "--bundle", str(path))
    assert done.returncode == 0 and f"{path}: ok - model {path.name}@" in done.stdout, done.stderr


def test_the_ladder_trades_size_for_accuracy():
    """The default ships; fast is smaller and accurate is more accurate than the default, or they do not ship."""
    assert DEFAULT in SHIPPED
    default = load_bundle(variant_path(DEFAULT))
    if "fast" in SHIPPED:
        fast = load_bundle(variant_path("fast"))
        assert len(fast.model_bytes) < len(default.model_bytes) / 2
    if "accurate" in SHIPPED:
        assert accuracy(load_bundle(variant_path("accurate"))) > accuracy(default)


def test_stats_schema_names_exactly_the_variants():
    schema = json.loads((SCHEMAS / "stats.json").read_text())
    assert schema["properties"]["model_variant"]["enum"] == [*VARIANTS, None]


def timing(name: str, acc: float, frame_ms: float, budget: Budget) -> Timing:
    return Timing(name, f"{name}@0", acc, frame_ms, frame_ms, frame_ms <= budget.ms)


def test_the_most_accurate_variant_that_fits_wins_and_says_what_it_traded():
    def ladder(budget: Budget) -> list[Timing]:
        return [timing("fast", 0.68, 6, budget), timing("default", 0.695, 15, budget), timing("accurate", 0.70, 40, budget)]

    budget = Budget(fps=25, faces=2)  # 32 ms for the models
    choice = choose(ladder(budget), budget)
    assert choice.variant == "default"
    assert "69.50%" in choice.reason and "32 ms" in choice.reason and "accurate (70.00%) needs 40.0 ms" in choice.reason
    assert "<- chosen" in choice.table().splitlines()[2]
    assert choose(ladder(Budget(fps=5, faces=2)), Budget(fps=5, faces=2)).variant == "accurate"


def test_where_nothing_fits_the_fastest_runs_and_the_reason_says_what_to_change():
    budget = Budget(fps=500, faces=4)
    choice = choose([timing("default", 0.695, 15, budget), timing("fast", 0.68, 6, budget)], budget)
    assert choice.variant == "fast" and "no variant fits" in choice.reason and "model.target_fps" in choice.reason


def test_edge_bench_choose_times_every_shipped_variant_here(tmp_path):
    out = tmp_path / "choice.json"
    done = edge("bench", "--choose", "--faces", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [t["variant"] for t in report["timings"]] == SHIPPED
    assert all(t["face_ms"] > 0 and t["frame_ms"] > 2 * t["face_ms"] for t in report["timings"])
    assert report["variant"] in SHIPPED and f"chosen: {report['variant']}: " in done.stdout
    assert "measured on this device" in report["reason"] and "with 2 faces" in report["reason"]
    impossible = edge("bench", "--choose", "--target-fps", "100000")
    assert impossible.returncode == 0 and "no variant fits" in impossible.stdout


def test_edge_check_says_which_variant_a_configured_device_runs_and_why(tmp_path):
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({"model": {"variant": "auto", "target_fps": 5, "expected_faces": 3}}))
    done = edge("check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "the device's release bundle is variant " in done.stdout and "measured on this device" in done.stdout
    assert "<- chosen" in done.stdout


def test_variant_mistakes_are_one_line_at_start(tmp_path, monkeypatch):
    for model, message in (({"variant": "tiny"}, "model.variant must be one of fast, default, accurate, auto"),
                           ({"variant": "auto", "bundle": "models/x"}, "both model.bundle and model.variant"),
                           ({"variant": "auto", "target_fps": 0}, "model.target_fps must be")):
        config = tmp_path / "device.yaml"
        config.write_text(yaml.safe_dump({"model": model}))
        with pytest.raises(UserError, match=message):
            load_config(config)
    monkeypatch.setitem(VARIANTS, "huge", "no-such-bundle")
    config.write_text(yaml.safe_dump({"model": {"variant": "huge"}}))
    with pytest.raises(UserError, match="'huge' is not a shipped variant; this install ships "):
        load_config(config)
