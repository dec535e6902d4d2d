"""``trainer ensemble``: members' softmax outputs averaged inside one graph, exported full INT8 as a bundle a device
runs like any other; members that see different faces, and fewer than two, are refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edge.cli import main as edge_main
from edge.model.bundle import load_bundle
from edge.model.classifier import EmotionClassifier
from edge.model.litert import non_int8_tensors
from trainer.cli import main
from trainer.export.ensemble import members_model
from trainer.model.resnet import build_model
from trainer.run.folder import RunDir


@pytest.fixture(scope="module")
def other_member(tiny_run, tmp_path_factory):
    """A second network of the tiny run's kind with other weights (freshly initialised), as a run folder."""
    cfg = RunDir(tiny_run).load_config()
    run = RunDir(tmp_path_factory.mktemp("member") / "fresh")
    run.write_config(replace(cfg, seed=7))
    fold = run.fold(RunDir(tiny_run).first_trained_fold().name)
    fold.path.mkdir(parents=True)
    build_model(cfg.model).save_weights(str(fold.best))
    return run.path


def test_the_graph_averages_the_members_probabilities(exported_bundle, other_member):
    model, configs = members_model([exported_bundle, other_member])
    faces = np.random.default_rng(0).random((4, configs[0].model.input_size, configs[0].model.input_size, 1), np.float32)
    alone = [model.get_layer(f"member{i}").predict(faces, verbose=0) for i in range(2)]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different members
    assert np.allclose(model.predict(faces, verbose=0), (alone[0] + alone[1]) / 2, atol=1e-6)
    weighted, _ = members_model([exported_bundle, other_member], [3, 1])
    assert np.allclose(weighted.predict(faces, verbose=0), 0.75 * alone[0] + 0.25 * alone[1], atol=1e-6)


def test_the_ensemble_is_a_full_int8_bundle_that_passes_edge_check(exported_bundle, other_member, tmp_path, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", str(exported_bundle), str(other_member), "--out", str(out), "--representative", "16",
                 "--weights", "2,1"]) == 0
    printed = capsys.readouterr().out
    assert "member0_float" in printed and "member1_float" in printed and f"wrote bundle {out}" in printed
    bundle = load_bundle(out)
    assert non_int8_tensors(bundle.model_bytes) == []
    manifest = bundle.manifest
    assert manifest["training"]["ensemble_of"] == [str(exported_bundle), str(other_member)]
    assert manifest["training"]["ensemble_weights"] == [2.0, 1.0]
    parity = manifest["metrics"]["parity"]
    assert parity["shipped"] == "ptq_int8" and manifest["metrics"]["validation_accuracy"] == parity["ptq_int8"]["accuracy"]
    assert {"float_keras", "ptq_int8", "member0_float", "member1_float"} <= set(parity)
    side = bundle.spec.input_size
    faces = np.random.default_rng(1).integers(0, 256, (3, side, side), np.uint8)
    probs = EmotionClassifier(bundle).predict(faces)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1, atol=0.05)
    assert edge_main(["check", "--bundle", str(out)]) == 0
    assert "ok - model" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["golden"]  # the self-check's answers, recorded


def test_members_that_cannot_be_averaged_are_refused_in_one_line(exported_bundle, tiny_run, tmp_path, capsys):
    cfg = RunDir(tiny_run).load_config()
    other = RunDir(tmp_path / "other-faces")
    other.write_config(replace(cfg, preprocess=replace(cfg.preprocess, gamma_target=0.4)))
    for args, message in (([str(exported_bundle)], "at least two members"),
                          ([str(exported_bundle), str(other.path)], "prepares faces differently"),
                          ([str(exported_bundle), str(tmp_path / "missing")], "does not exist"),
                          ([str(exported_bundle), str(exported_bundle), "--weights", "1,2,3"], "one positive weight per")):
        assert main(["ensemble", *args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exited:  # argparse's own one line
        main(["ensemble", str(exported_bundle), str(exported_bundle), "--weights", "1,-1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "not a finite number > 0" in err and "Traceback" not in err
