"""The wheel carries everything a device reads at run time.

An editable install reads the source tree, so only a built wheel shows what ``pip install
fer-edge[edge]`` really puts on a device: the release bundle, the release key, the payload
schemas, the detector models and the demo's sample face, each found beside its module.
The wheel is built from a copy of the checkout's files (what a clean clone has, plus files not yet
committed) with the installed setuptools and no network; ``.ci/run`` installs it into a fresh venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from edge.release import VARIANTS
from fixtures.packaging import ROOT, build_wheel, checkout_files

from edge import DEFAULT_BUNDLE_NAME, __version__
from edge.protocol.flash import FLOAT_WEIGHTS_FILE

DATA_FOLDERS = {"edge/model/assets": "edge/model/assets", "edge/protocol/schemas": "edge/protocol/schemas",
                **{f"models/{name}": f"edge/release/{name}" for name in VARIANTS.values()}}
"""Source folder -> where its files must be in the wheel (every shipped variant's bundle)."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_bundle_keys_schemas_and_detector_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{target}/{path.relative_to(ROOT / source)}"
                for source, target in DATA_FOLDERS.items() for path in (ROOT / source).rglob("*")
                if path.is_file() and path.name != FLOAT_WEIGHTS_FILE}
    assert {f"edge/release/{DEFAULT_BUNDLE_NAME}/{f}" for f in ("manifest.json", "model.tflite", "signature.json")} \
        <= expected and "edge/model/assets/keys/release.pub" in expected
    assert any(name.endswith(".tflite") for name in expected if name.startswith("edge/model/assets/"))
    assert sorted(expected - names) == []
    assert not [name for name in names if name.endswith(FLOAT_WEIGHTS_FILE)]  # for fine-tuning from a clone, not devices
    assert wheel.name == f"fer_edge-{__version__}-py3-none-any.whl"


def test_wheel_has_every_module(wheel):
    """pyproject lists packages by name: a package left out imports from a clone but not from a wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {name for name in checkout_files()
               if name.endswith(".py") and name.split("/")[0] in ("edge", "tools", "trainer")}
    assert "edge/device/runtime.py" in modules and sorted(modules - names) == []
    assert "edge/release/__init__.py" in names


def test_edge_check_runs_from_the_unpacked_wheel(wheel, tmp_path):
    """The installed layout, not the source tree, answers: ``edge check`` from another folder finds the bundle in it."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable install's finder
    done = subprocess.run([sys.executable, "-m", "edge.cli", "check"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bundle = site / "edge" / "release" / DEFAULT_BUNDLE_NAME
    assert done.stdout.startswith(f"{bundle}: ok - model {DEFAULT_BUNDLE_NAME}@")
