"""Shared fixtures: the real datasets, generated ones, a tiny trained run and bundles.

Device and tools tests run the small committed bundles in ``tests/data`` (made by
``tests/data/make_test_bundles.py``) and need no TensorFlow; tests that train or export carry the
``trainer`` marker (every test under ``tests/trainer`` gets it), so ``pytest -m "not trainer"``
runs in an environment with only ``.[edge,tools,dev]`` installed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "trainer" in Path(item.path).relative_to(ROOT / "tests").parts[:1]:
            item.add_marker(pytest.mark.trainer)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``build(folder)`` once per test session, however many pytest-xdist workers ask (pyproject.toml runs one per
    core): the first to ask builds under a file lock, the others wait for it and share the folder.

    Why not ``--dist loadgroup`` with one group on one worker: with pytest 9.2 xdist's groups silently stop grouping
    (pytest-dev/pytest-xdist#1386), and each worker trained and exported the tiny run again; a lock is also what
    xdist's own documentation gives for a session fixture that must run once."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.exists():  # a build that failed left no mark: the next worker to ask tries again
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets (research use only, never committed); tests using them skip where absent."""
    if not (SHARED_DATA / "fer2013.npz").exists():
        pytest.skip(f"real datasets not found in {SHARED_DATA} (set TRAINER_DATA to the folder with the .npz archives)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_ck(tmp_path_factory) -> Path:
    """A CK+48 folder layout (<class>/S###_###_########.png) of generated images: 12 subjects."""
    return built_once(tmp_path_factory, "ck", lambda folder: write_ck_layout(folder / "CK+48")) / "CK+48"


@pytest.fixture(scope="session")
def tiny_run(synthetic_ck, tmp_path_factory) -> Path:
    """A run directory from `trainer fit` on the generated CK+ layout with a tiny model, trained once per session."""
    from trainer.fit.loop import fit
    from trainer.run.config import load_config

    cfg = load_config("ckplus", overrides=[{**TINY_RUN_OVERRIDES, "data": str(synthetic_ck)}])
    return built_once(tmp_path_factory, "runs", lambda out: fit(cfg, out / "tiny", log=lambda *a: None)) / "tiny"


@pytest.fixture(scope="session")
def exported_bundle(tiny_run, tmp_path_factory) -> Path:
    """The one export of the tiny run (QAT INT8), through the real command line; its float32 twin beside it.

    With the ONNX converters installed (``.[onnx-export]``) the same export also writes ``model.onnx``, so
    the suite fine-tunes and converts the tiny run once, whatever the tests then look at."""
    from trainer.cli import main

    onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "tf2onnx"))

    def export(models: Path) -> None:
        assert main(["export", str(tiny_run), "--out", str(models / "tiny-ck"), "--qat-epochs", "1",
                     "--representative", "64", "--float-out", str(models / "tiny-ck-float"),
                     *(["--onnx"] if onnx else [])]) == 0

    return built_once(tmp_path_factory, "models", export) / "tiny-ck"


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """The committed tiny INT8 bundle (``tests/data/tiny-ck``, unsigned); its float32 twin beside it."""
    return TEST_DATA / "tiny-ck"
