"""trainer fit / evaluate end to end on generated data: checkpoints, resume, reports."""

import json

import pytest
import tf_keras as keras

from trainer.config import load_config
from trainer.evaluate import evaluate
from trainer.reports import read_history
from trainer.train import fit


def test_fit_writes_checkpoint_history_reports_and_plots(tiny_run):
    fold = tiny_run / "random"
    for name in ("best.weights.h5", "history.csv", "report.json", "curves.png", "confusion.png"):
        assert (fold / name).is_file(), name
    history = read_history(fold / "history.csv")
    assert len(history["epoch"]) == 5 and {"loss", "val_accuracy", "lr", "seconds"} <= set(history)
    report = json.loads((tiny_run / "summary.json").read_text())
    assert {"accuracy", "per_class", "confusion", "n"} <= set(report)
    assert report["accuracy"] > 0.5  # the generated classes are easy; chance is 1/6


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
        "model": {"width": 8}, "augment": {"rotation": 0.0, "zoom": 0.0}}])
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
