"""The trainer command line: help, and one-line errors without tracebacks.

The refusals run ``trainer.cli.main`` in this process (each subprocess would import TensorFlow again, ~5 s);
an exception escaping ``main`` fails the test just as a traceback would. The real entry point, ``python -m
trainer.cli``, is run as a process for help and for argparse's own refusals.
"""

import subprocess
import sys

import pytest

from trainer.cli import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, env=env)


def test_help_explains_each_command(capsys):
    for command in ("fit", "evaluate", "export", "faces"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0 and "usage: trainer" in capsys.readouterr().out
    result = run("fit", "--help")
    assert result.returncode == 0 and "usage: trainer fit" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["fit", "--dataset", "ckplus", "--data", "/no/such/path", "--out", "{tmp}/r"], "does not exist"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--preset", "turbo", "--out", "{tmp}/r"], "unknown preset"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--set", "model.colour=1", "--out", "{tmp}/r"], "model.colour"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--out", "{tmp}/r"], "no ckplus images"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--init", "{tmp}/no-run", "--out", "{tmp}/r"], "--init"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--teacher", "{tmp}/no-teacher", "--out", "{tmp}/r"], "does not exist"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--teacher", "{tmp}", "--out", "{tmp}/r"], "error: teacher /"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--set", "tta_flip=true", "--out", "{tmp}/r"], "--tta flip"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--set", "ema=1.5", "--out", "{tmp}/r"], "ema must be"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--set", "model.crop=41", "--out", "{tmp}/r"], "crop must be"),
    (["fit", "--dataset", "ckplus", "--data", "{tmp}", "--set", "distill.alpha=2", "--out", "{tmp}/r"], "distill.alpha"),
    (["faces", "--dataset", "ckplus", "--data", "/no/such/path", "--out", "{tmp}/f.npz"], "does not exist"),
    (["evaluate", "{tmp}/missing-run"], "does not exist"),
    (["evaluate", "{tmp}"], "neither a run directory"),
    (["export", "{tmp}", "--out", "{tmp}/b"], "neither a run directory"),
    (["export", "{tmp}", "--out", "{tmp}/b", "--name", "Release Model"], "must be 1-64 lowercase"),
])
def test_bad_input_is_one_line(tmp_path, capfd, args, message):
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trainer: error:") and message in last, err


def test_bad_flag_exits_non_zero():
    result = run("fit", "--dataset", "mnist", "--out", "x")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_a_missing_path_is_refused_before_tensorflow_loads(tmp_path):
    """The check runs before the import: in a process that must not load TensorFlow at all."""
    code = ("import sys; from trainer.cli import main; code = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was loaded'; sys.exit(code)")
    for args in (["fit", "--dataset", "ckplus", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
                 ["evaluate", str(tmp_path / "no-run")], ["average", str(tmp_path), str(tmp_path / "x"), "--out", "o"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_a_failed_fit_can_be_retried_by_the_same_command_and_says_nothing_of_cuda(tmp_path):
    """Data that exists but holds no images fails after TensorFlow loads; the folder it leaves does not block the
    retry, and a machine without a GPU prints no CUDA error on the way."""
    args = ["fit", "--dataset", "ckplus", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    for _ in range(2):
        done = run(*args)
        assert done.returncode == 2 and "no ckplus images" in done.stderr, done.stderr
        assert "cuInit" not in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "run" / "config.yaml").is_file()
