"""Bad command-line input of every kind the hardening review tried: one line on stderr, status 2, no traceback, no hang."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from fixtures.mqtt import ROOT

CASES = [
    ("edge", ["run", "--config", "{tmp}/nan.yaml"], "finite number"),
    ("edge", ["run", "--config", "{tmp}/inf.yaml"], "must be int"),
    ("edge", ["run", "--config", "{tiny}/model.tflite"], "not a text file"),
    ("edge", ["run", "--config", "{tmp}/binary.yaml"], "not a text file"),
    ("edge", ["run", "--config", "{tmp}/spooldir.yaml"], "is a folder"),
    ("edge", ["run", "--config", "{tmp}/modeldir.yaml"], "is not a folder"),
    ("edge", ["run", "--config", "{tmp}/tlsca.yaml"], "tls_ca"),
    ("edge", ["run", "--broker", "mqtt://[::1", "--source", "{tmp}"], "is not mqtt"),
    ("edge", ["bench", "--json", "{tmp}/missing/report.json"], "does not exist"),
    ("edge", ["bench", "--json", "/sys/report.json"], "cannot write /sys/report.json"),
    ("edge", ["bench", "--json", "{tmp}/fifo"], "cannot write"),
    ("edge", ["bench", "--frames", "nan"], "whole number"),
    ("tools", ["flash", "{tiny}", "--device", "d", "--broker", "mqtt://[::1"], "is not mqtt"),
    ("tools", ["subscribe", "--broker", "mqtt://[::1"], "is not mqtt"),
    ("tools", ["keygen", "--out", "{tmp}/afile"], "is a file"),
    ("tools", ["keygen", "--out", "{tmp}", "--name", "../x"], "not a name"),
    ("tools", ["subscribe", "--broker", "mqtt://127.0.0.1:1", "--share", "#"], "not a name"),
    ("tools", ["subscribe", "--broker", "mqtt://127.0.0.1:1", "--share", "a/b"], "not a name"),
    ("tools", ["subscribe", "--broker", "mqtt://127.0.0.1:1", "--device", ""], "not allowed"),
    ("tools", ["flash", "{tiny}", "--device", "d", "--broker", "mqtt://127.0.0.1:1", "--timeout", "nan"], "finite"),
    ("tools", ["plot", "{tmp}/bad.csv", "--out", "{tmp}/plots"], "is not a number"),
    ("tools", ["plot", "{tmp}/bad.jsonl", "--out", "{tmp}/plots"], "is not JSON"),
    ("tools", ["plot", "{tmp}/nodevice.csv", "--out", "{tmp}/plots"], "has no device"),
    ("tools", ["dashboard", "--port", "70000"], "TCP port"),
]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "nan.yaml").write_text("source:\n  fps: .nan\n")
    (tmp_path / "inf.yaml").write_text("source:\n  width: .inf\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "spooldir.yaml").write_text(f"spool:\n  path: {tmp_path}\nsource:\n  uri: {tmp_path}\n")
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")  # no reader: opening it to write must not hang
    (tmp_path / "modeldir.yaml").write_text(f"model:\n  dir: {tmp_path / 'afile'}\nsource:\n  uri: {tmp_path}\n")
    (tmp_path / "tlsca.yaml").write_text(f"mqtt:\n  broker: mqtts://h\n  tls_ca: {tmp_path / 'missing.pem'}\n")
    (tmp_path / "bad.csv").write_text("ts,device,label\nx,d,happy\n")
    (tmp_path / "bad.jsonl").write_text('{"ts": 1, "device": "d", "label": "happy"}\nnot json\n')
    (tmp_path / "nodevice.csv").write_text("ts,label\n1,happy\n")
    return tmp_path


@pytest.mark.parametrize("prog, argv, says", CASES, ids=[" ".join(c[1])[:60] for c in CASES])
def test_bad_input_is_one_line_and_status_2(files, tiny_bundle, prog, argv, says):
    argv = [a.format(tmp=files, tiny=tiny_bundle) for a in argv]
    module = {"edge": "edge.cli", "tools": "tools.cli"}[prog]
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if "error" in line] == [done.stderr.splitlines()[-1]], done.stderr


@pytest.mark.parametrize("command", ["tools", "edge", "trainer"])
def test_help_reads_as_plain_text(command):
    """Descriptions come from docstrings; a terminal must not show their reStructuredText markup."""
    done = subprocess.run([str(Path(sysconfig.get_path("scripts")) / command), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "``" not in done.stdout and ":mod:" not in done.stdout, done.stdout
