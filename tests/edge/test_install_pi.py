"""``deploy/install-pi.sh`` into a temporary root: what can be checked off a Raspberry Pi.

The script runs for real with ``--root``: it makes the venv (with the system's site-packages, as it
does on a Pi to see apt's picamera2), installs the wheel into it and lays down the config, the state
directory and the systemd unit. The Python it set up then runs ``edge check`` and reads the config.
What it skips under ``--root`` (apt, the user, ownership, systemctl) is what only a Pi can confirm.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.packaging import ROOT, build_wheel

from edge import DEFAULT_BUNDLE_NAME

SCRIPT = ROOT / "deploy" / "install-pi.sh"
VENV = "opt/fer-edge/venv"
UNIT = "etc/systemd/system/fer-edge.service"


def install(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("root")
    return root, install(root, "--wheel", str(wheel))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path, wheel):
    done = install(tmp_path / "root", "--wheel", str(wheel), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "root").exists()
    for step in ("apt-get install -y --no-install-recommends python3-picamera2 python3-venv", "useradd --system",
                 "-m venv --system-site-packages", f"{wheel}[edge]", "write_device_config", "systemctl daemon-reload"):
        assert step in done.stdout, step
    assert done.stdout.rstrip().endswith("Dry run: nothing was changed.")


def test_lays_down_venv_config_state_and_unit(installed):
    root, done = installed
    assert done.returncode == 0, done.stdout + done.stderr
    assert "include-system-site-packages = true" in (root / VENV / "pyvenv.cfg").read_text()
    assert (root / UNIT).read_text() == (ROOT / "deploy" / "edge.service").read_text()
    assert mode(root / "etc/fer-edge/device.yaml") == 0o640 and mode(root / "etc/fer-edge/secrets.env") == 0o600
    assert mode(root / "var/lib/fer-edge") == 0o750
    assert "1. Edit /etc/fer-edge/device.yaml" in done.stdout


def test_the_venv_runs_edge_check_on_its_own_bundle_and_reads_the_config(installed, tmp_path):
    root, _ = installed
    check = subprocess.run([str(root / VENV / "bin" / "edge"), "check"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    site = next((root / VENV / "lib").glob("python3*/site-packages"))
    assert check.stdout.startswith(f"{site / 'edge' / 'release' / DEFAULT_BUNDLE_NAME}: ok")
    script = ("import sys; from edge.device.config import load_config; c = load_config(sys.argv[1]); "
              "print(c.mqtt.device_id, c.spool.path, c.model.dir)")
    config = subprocess.run([str(root / VENV / "bin" / "python"), "-c", script, str(root / "etc/fer-edge/device.yaml")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert config.stdout.split() == [socket.gethostname().split(".")[0], "/var/lib/fer-edge/spool.db",
                                     "/var/lib/fer-edge/models"], config.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_verifies_against_the_installed_venv(installed, tmp_path):
    root, _ = installed
    unit = tmp_path / "fer-edge.service"  # ExecStart pointed at the venv under the root, which verify checks
    unit.write_text((root / UNIT).read_text().replace("/opt/fer-edge/venv", str(root / VENV)))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_running_again_keeps_the_operators_config(installed, wheel):
    root, _ = installed
    config = root / "etc/fer-edge/device.yaml"
    config.write_text(config.read_text().replace("mqtt://localhost:1883", "mqtt://broker.lan:1883"))
    again = install(root, "--wheel", str(wheel))
    assert again.returncode == 0, again.stderr
    assert "keeping the existing device.yaml" in again.stdout and "mqtt://broker.lan:1883" in config.read_text()


def test_32_bit_arm_is_refused_before_anything_is_done(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text("#!/bin/sh\necho armv7l\n")
    (fake / "uname").chmod(0o755)
    done = install(tmp_path / "root", env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 2 and not (tmp_path / "root").exists()
    assert done.stderr.startswith("install-pi.sh: error: 32-bit ARM (armv7l) is not supported") and \
        done.stderr.count("\n") == 1
