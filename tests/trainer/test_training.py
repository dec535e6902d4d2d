"""trainer fit / evaluate end to end on generated data: checkpoints, resume, reports."""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

from edge.errors import UserError
from trainer.evaluate.evaluate import evaluate
from trainer.evaluate.predict import load_trained
from trainer.evaluate.reports import read_history
from trainer.fit.loop import fit
from trainer.fit.warm_start import fit_config
from trainer.model.resnet import build_model
from trainer.model.widen import widen
from trainer.run.config import load_config
from trainer.run.folder import RunDir

ROOT = Path(__file__).resolve().parents[2]


def test_fit_writes_checkpoint_history_reports_and_plots(tiny_run):
    fold = tiny_run / "random"
    for name in ("best.weights.h5", "last.weights.h5", "history.csv", "report.json", "curves.png", "confusion.png"):
        assert (fold / name).is_file(), name
    history = read_history(fold / "history.csv")
    assert len(history["epoch"]) == 5 and {"loss", "val_accuracy", "lr", "seconds"} <= set(history)
    report = json.loads((tiny_run / "summary.json").read_text())
    assert {"accuracy", "per_class", "confusion", "n"} <= set(report)
    assert report["accuracy"] > 0.5  # the generated classes are easy; chance is 1/6
    assert report["tta"] == "none" and 0 <= report["flip_accuracy"] <= 1  # one pass, as the device; flip beside it


def test_evaluate_run_reports_json_and_png(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    report = evaluate(tiny_run, None, None, None, False, out, log=lambda *a: None)
    saved = json.loads(out.read_text())
    assert saved["n"] == report["n"] == sum(map(sum, saved["confusion"]))
    assert out.with_suffix(".png").is_file()


class Interrupt(keras.callbacks.CSVLogger):
    """CSVLogger that stops the run after the first epoch has been logged and backed up."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        raise KeyboardInterrupt


def test_resume_continues_after_an_interruption(synthetic_ck, tmp_path, monkeypatch):
    cfg = load_config("ckplus", overrides=[{
        "data": str(synthetic_ck), "protocol": "random", "epochs": 2, "batch_size": 32,
        "model": {"depth": 10, "width": 8}, "augment": {"rotation": 0.0, "zoom": 0.0}}])
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(keras.callbacks, "CSVLogger", Interrupt)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, out, log=lambda *a: None)
    assert read_history(out / "random" / "history.csv")["epoch"] == [0]
    with pytest.raises(Exception, match="--resume"):
        fit(cfg, out, log=lambda *a: None)
    fit(cfg, out, resume=True, log=lambda *a: None)
    assert read_history(out / "random" / "history.csv")["epoch"] == [0, 1]  # epoch 0 was not repeated
    assert (out / "random" / "report.json").is_file()


def _bench(name: str):
    """A script of bench/ as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_warm_start_begins_from_the_parent_checkpoint_and_the_benchmark_counts_both(tiny_run, tmp_path):
    parent_cfg = RunDir(tiny_run).load_config()
    cfg = replace(parent_cfg, init=str(tiny_run), epochs=1, schedule=replace(parent_cfg.schedule, lr=0.0))
    out, lines = tmp_path / "warm", []
    fit(cfg, out, log=lines.append)
    assert any(line.startswith("warm start from") for line in lines)
    parent = load_trained(cfg, RunDir(tiny_run).fold("random").best)
    child = load_trained(cfg, RunDir(out).fold("random").best)
    kernels = [(a, b) for a, b in zip(parent.weights, child.weights) if "kernel" in a.name]
    assert kernels and all(np.array_equal(a.numpy(), b.numpy()) for a, b in kernels)  # LR 0: still the parent's

    summary = _bench("time_to_accuracy").summarize(out)
    assert summary["warm_start"] == {"run": str(tiny_run), "epochs": 5}
    assert [r["epoch"] for r in summary["epochs"]] == [1, 2, 3, 4, 5, 6]
    minutes = [r["minutes"] for r in summary["epochs"]]
    assert minutes == sorted(minutes) and minutes[5] > minutes[4]


def test_the_benchmark_finds_the_run_behind_a_checkpoint_or_a_bundle_but_never_a_descendant(tiny_run, exported_bundle):
    """An old config's ``--teacher models/NAME`` may name a bundle exported later from a descendant: following it
    would loop through the lineage for ever."""
    behind = _bench("time_to_accuracy").behind
    checkpoint = RunDir(tiny_run).first_trained_fold().best
    assert behind(str(tiny_run)) == behind(str(checkpoint)) == tiny_run
    assert behind(str(exported_bundle)).resolve() == tiny_run.resolve()
    assert behind(str(exported_bundle), (tiny_run.resolve(),)) is None and behind(str(tiny_run.parent / "gone")) is None


def test_a_warm_start_inherits_its_parents_network_and_preprocessing_unless_set(tiny_run, exported_bundle, tmp_path):
    """Fine-tuning the shipped model must not need its architecture spelled out (its 40-px crop, its width)."""
    parent = RunDir(tiny_run).load_config()
    assert parent.model != load_config("ckplus").model  # the tiny run's network is not the default one
    for init in (tiny_run, exported_bundle):
        cfg = fit_config("ckplus", overrides=[{"init": str(init)}])
        assert cfg.model == parent.model and cfg.preprocess == parent.preprocess
        assert cfg.epochs == load_config("ckplus").epochs  # only the architecture is inherited
    crop = fit_config("ckplus", overrides=[{"init": str(tiny_run)}, {"model": {"dropout": 0.5}}])
    assert crop.model.dropout == 0.5 and crop.model.width == parent.model.width  # --set still wins
    bare = fit_config("ckplus", overrides=[{"init": str(RunDir(tiny_run).first_trained_fold().best)}])
    assert bare.model == load_config("ckplus").model  # a bare checkpoint records no architecture


def test_widening_keeps_what_the_network_computes(tiny_run):
    """Net2WiderNet: at twice the width the function is exact (without noise); at 1.5x CBAM's channel mean moves it."""
    cfg = RunDir(tiny_run).load_config()
    parent = load_trained(cfg, RunDir(tiny_run).fold("random").best)
    x = np.random.default_rng(0).uniform(0, 1, (16, 48, 48, 1)).astype(np.float32)
    expected = parent(x).numpy()
    for width, noise, close in ((16, 0.0, 1e-4), (12, 0.0, None), (16, 0.01, None)):
        child = build_model(replace(cfg.model, width=width))
        widen(parent, child, noise=noise)
        logits = child(x).numpy()
        if close:
            assert np.allclose(logits, expected, atol=close * np.abs(expected).max()), width
        else:
            assert not np.allclose(logits, expected, atol=1e-4 * np.abs(expected).max())
            assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.9, (width, noise)


def test_a_warm_start_into_a_wider_network_widens_the_parent(tiny_run, tmp_path):
    cfg = fit_config("ckplus", overrides=[{"init": str(tiny_run), "data": RunDir(tiny_run).load_config().data,
                                           "protocol": "random", "epochs": 1, "batch_size": 16},
                                          {"model": {"width": 12}}])
    lines = []
    fit(cfg, tmp_path / "wide", log=lines.append)
    assert any(line.endswith("widened from width 8 to 12") for line in lines), lines


@pytest.mark.parametrize("init, message", [("missing-run", "neither a .weights.h5 file, a run directory"),
                                           ("TINY", "same architecture")])
def test_warm_start_refuses_a_missing_or_mismatched_checkpoint(tiny_run, tmp_path, init, message):
    cfg = RunDir(tiny_run).load_config()
    cfg = replace(cfg, init=str(tiny_run if init == "TINY" else tmp_path / init), epochs=1,
                  model=replace(cfg.model, width=4))  # narrower: nothing to widen
    with pytest.raises(UserError, match=message):
        fit(cfg, tmp_path / "warm", log=lambda *a: None)


def test_throughput_bench_runs_a_variant_and_restores_float32():
    bench = _bench("train_throughput")
    row = bench.measure(bench.parse_row("precision=bfloat16, width=8, batch_size=16"), steps=1)
    assert row["precision"] == "bfloat16" and row["width"] == 8 and row["batch_size"] == 16 and row["img_per_s"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(SystemExit, match="key=value"):
        bench.parse_row("width")


def test_the_ensemble_bench_averages_probabilities_not_votes():
    bench = _bench("ensembles")
    labels = np.array([0, 1])
    a = {view: np.array([[0.9, 0.1], [0.6, 0.4]]) for view in bench.VIEWS}  # each right once, sure when right
    b = {view: np.array([[0.4, 0.6], [0.1, 0.9]]) for view in bench.VIEWS}
    rows = bench.ensembles({"a": a, "b": b}, labels)
    assert [(r["models"], r["none"]) for r in rows] == [(["a"], 0.5), (["b"], 0.5), (["a", "b"], 1.0)]


def test_the_ensemble_bench_scores_runs_and_bundles_and_souped_copies_score_as_one(tiny_run, exported_bundle,
                                                                                   tmp_path, monkeypatch, capsys):
    import shutil

    from trainer.evaluate.predict import open_scorer

    bench = _bench("ensembles")
    out = tmp_path / "ensembles.json"
    monkeypatch.setattr("sys.argv", ["ensembles.py", str(tiny_run), str(exported_bundle),
                                     "--json", str(out)])
    assert bench.main() == 0
    rows = json.loads(out.read_text())["rows"]
    assert [len(r["models"]) for r in rows] == [1, 1, 2]
    faces, labels, split = bench.images(tiny_run, None, None)
    assert split == "all"  # CK+ has no official splits
    single = np.mean(open_scorer(exported_bundle, tta="flip").predict(faces).argmax(1) == labels)
    assert rows[1]["flip"] == pytest.approx(single)  # a bundle scores as `trainer evaluate` scores it

    copy = shutil.copytree(tiny_run, tmp_path / "copy")
    soup = bench.soups([tiny_run, copy], faces, labels)
    assert soup[0]["none"] == soup[1]["none"] == soup[2]["none"]  # the average of equal weights is those weights
    assert soup[0]["none"] == pytest.approx(np.mean(open_scorer(tiny_run).predict(faces).argmax(1) == labels))

    monkeypatch.setattr("sys.argv", ["ensembles.py", str(tiny_run), str(exported_bundle), "--soup"])
    assert bench.main() == 2
    assert capsys.readouterr().err.strip().endswith("--soup averages float weights: pass run directories, not bundles")
    monkeypatch.setattr("sys.argv", ["ensembles.py", *(str(tmp_path / f"run{i}") for i in range(6)), "--soup"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "at most 5 models for a soup" in capsys.readouterr().err
