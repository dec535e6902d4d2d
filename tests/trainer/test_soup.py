"""``trainer average``: the soup of runs fine-tuned from one start is the mean of their weights, scored and exported
like any run; runs that are not one network from one start are refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from trainer.cli import main
from trainer.evaluate.predict import load_trained
from trainer.fit.loop import fit
from trainer.run.folder import RunDir


@pytest.fixture(scope="module")
def ingredients(tiny_run, tmp_path_factory):
    """Two one-epoch fine-tunes of the tiny run with different seeds (so different weights), and the config."""
    parent = RunDir(tiny_run).load_config()
    out = tmp_path_factory.mktemp("soup")
    runs = []
    for seed in (1, 2):
        cfg = replace(parent, init=str(tiny_run), epochs=1, seed=seed, schedule=replace(parent.schedule, lr=0.01))
        fit(cfg, out / f"ft{seed}", log=lambda *a: None)
        runs.append(out / f"ft{seed}")
    return runs, parent


def test_the_soup_is_the_mean_of_the_runs_weights_and_exports_saying_so(ingredients, tmp_path, capsys):
    runs, cfg = ingredients
    soup = tmp_path / "soup"
    assert main(["average", *map(str, runs), "--out", str(soup)]) == 0
    assert "averaged 2 runs" in capsys.readouterr().out
    a, b, mean = (load_trained(cfg, RunDir(r).fold("random").best).get_weights() for r in (*runs, soup))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))  # two different ingredients
    for x, y, m in zip(a, b, mean):  # every weight, batch-norm statistics included
        assert np.allclose(m, (x.astype(np.float64) + y) / 2, atol=1e-6)
    summary = json.loads(RunDir(soup).summary.read_text())
    assert 0 <= summary["accuracy"] <= 1 and summary["tta"] == "none"
    assert json.loads(RunDir(soup).averaged.read_text())["runs"] == [str(r) for r in runs]
    bundle = tmp_path / "bundle"
    assert main(["export", str(soup), "--out", str(bundle), "--representative", "16", "--int8", "ptq"]) == 0
    assert "fine-tuning skipped" in capsys.readouterr().out  # no minutes spent on a model that would not ship
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["metrics"]["parity"]["shipped"] == "ptq_int8" and "qat_int8" not in manifest["metrics"]["parity"]
    assert manifest["training"]["averaged_from"] == [str(r) for r in runs]


def test_runs_that_are_not_one_network_from_one_start_are_refused_in_one_line(ingredients, tiny_run, tmp_path, capsys):
    runs, cfg = ingredients
    wider = tmp_path / "wider"
    wider_cfg = replace(cfg, init=str(tiny_run), model=replace(cfg.model, width=12))
    RunDir(wider).write_config(wider_cfg)
    other_start = tmp_path / "other-start"
    RunDir(other_start).write_config(replace(cfg, init=str(runs[0])))
    untrained = tmp_path / "untrained"
    RunDir(untrained).write_config(replace(cfg, init=str(tiny_run)))
    for args, message in (([runs[0]], "at least two runs"),
                          ([runs[0], runs[0]], "given twice"),
                          ([tiny_run, runs[0]], "was not fine-tuned"),
                          ([runs[0], wider], "differs from"),
                          ([runs[0], other_start], "in init"),
                          ([runs[0], tmp_path / "nothing"], "does not exist"),  # checked before TensorFlow loads
                          ([runs[0], untrained], "best.weights.h5 is missing")):
        assert main(["average", *map(str, args), "--out", str(tmp_path / "soup")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and message in err.strip().splitlines()[-1], (args, err)
    assert not (tmp_path / "soup").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["average", *map(str, runs), "--out", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_damaged_soup_record_is_refused_before_the_export_fine_tunes(ingredients, tmp_path, capsys):
    runs, _ = ingredients
    soup = tmp_path / "soup"
    assert main(["average", *map(str, runs), "--out", str(soup)]) == 0
    RunDir(soup).averaged.write_text('{"runs": 3}')
    assert main(["export", str(soup), "--out", str(tmp_path / "b")]) == 2
    assert "averaged.json is damaged" in capsys.readouterr().err.strip().splitlines()[-1]
