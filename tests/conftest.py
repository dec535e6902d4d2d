"""Shared fixtures: the real datasets, generated ones, a tiny trained run and bundles.

Device and tools tests run the small committed bundles in ``tests/data`` (made by
``tests/data/make_test_bundles.py``) and need no TensorFlow; tests that train or export carry the
``trainer`` marker (every test under ``tests/trainer`` gets it), so ``pytest -m "not trainer"``
runs in an environment with only ``.[edge,tools,dev]`` installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from synthetic import TINY_RUN_OVERRIDES, write_ck_layout

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "tests" / "data"
SHARED_DATA = Path(os.environ.get("TRAINER_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("tensorflow") is None:  # a device/tools-only venv: the trainer's tests cannot even import
    collect_ignore_glob = ["trainer/*"]
# Hypothesis (tests/edge/test_fuzz.py): modest in CI; `--hypothesis-profile=long` for a longer hunt.
for _name, _examples in (("ci", 40), ("long", 2000)):
    settings.register_profile(_name, max_examples=_examples, deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("ci")
pytest_plugins = ["fixtures.mqtt", "fixtures.bundles", "fixtures.postgres"]


def pytest_configure(config):
    config.addinivalue_line("markers", "trainer: needs the trainer's TensorFlow (pip install -e .[train])")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "trainer" in Path(item.path).relative_to(ROOT / "tests").parts[:1]:
            item.add_marker(pytest.mark.trainer)
        if "tiny_run" in item.fixturenames:
            # pytest-xdist (`-n auto --dist loadgroup`, pyproject.toml): the tests of the session's tiny run (and of
            # its export) share one worker, so it is trained and exported once; every other test goes to any worker.
            item.add_marker(pytest.mark.xdist_group("tiny-run"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (research use only, never committed); tests using them skip where absent."""
    if not (SHARED_DATA / "fer2013.npz").exists():
        pytest.skip(f"real datasets not found in {SHARED_DATA} (set TRAINER_DATA to the folder with the .npz archives)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_ck(tmp_path_factory) -> Path:
    """A CK+48 folder layout (<class>/S###_###_########.png) of generated images: 12 subjects."""
    return write_ck_layout(tmp_path_factory.mktemp("ck") / "CK+48")


@pytest.fixture(scope="session")
def tiny_run(synthetic_ck, tmp_path_factory) -> Path:
    """A run directory from `trainer fit` on the generated CK+ layout with a tiny model."""
    from trainer.fit.loop import fit
    from trainer.run.config import load_config

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck)}])
    fit(cfg, out, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def exported_bundle(tiny_run, tmp_path_factory) -> Path:
    """The one export of the tiny run (QAT INT8), through the real command line; its float32 twin beside it.

    With the ONNX converters installed (``.[onnx-export]``) the same export also writes ``model.onnx``, so
    the suite fine-tunes and converts the tiny run once, whatever the tests then look at."""
    from trainer.cli import main

    out = tmp_path_factory.mktemp("models") / "tiny-ck"
    onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "tf2onnx"))
    assert main(["export", str(tiny_run), "--out", str(out), "--qat-epochs", "1", "--representative", "64",
                 "--float-out", str(out.with_name("tiny-ck-float")), *(["--onnx"] if onnx else [])]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The committed tiny INT8 bundle (``tests/data/tiny-ck``, unsigned); its float32 twin beside it."""
    return TEST_DATA / "tiny-ck"
