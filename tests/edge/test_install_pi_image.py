"""``deploy/install-pi.sh`` where systemd is not PID 1 (a chroot, an image build) and apt is plain Debian's: a dry run
on the whole system (no --root) says what it would do. The real thing runs in .ci/arm64's chroot by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.packaging import ROOT

SCRIPT = ROOT / "deploy" / "install-pi.sh"

pytestmark = pytest.mark.skipif(Path("/run/systemd/system").is_dir(),
                                reason="systemd runs here: this is the chroot/image-build case")


def dry_run(tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    wheel = tmp_path / "fer_edge-0.1.0-py3-none-any.whl"  # a dry run only checks that it exists
    wheel.touch()
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--wheel", str(wheel)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_without_systemd_the_unit_is_enabled_not_started(tmp_path):
    done = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "systemd is not running here (a chroot or an image build): enabling fer-edge without starting it" in done.stdout
    assert "daemon-reload" not in done.stdout and "--now" not in done.stdout
    if shutil.which("systemctl"):
        assert "+ systemctl --root=/ enable fer-edge\n" in done.stdout
    else:
        assert "+ ln -sfn /etc/systemd/system/fer-edge.service " \
               "/etc/systemd/system/multi-user.target.wants/fer-edge.service\n" in done.stdout


def test_without_systemctl_the_wants_link_is_made_by_hand(tmp_path):
    """Only the tools the dry run calls, systemctl left out (a minimal image has none)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("bash", "sed", "id", "uname", "dirname", "apt-cache", "grep", "python3"):
        if shutil.which(name):
            (tools / name).symlink_to(shutil.which(name))
    done = dry_run(tmp_path, {**os.environ, "PATH": str(tools)})
    assert done.returncode == 0, done.stderr
    assert "+ install -d -m 0755 /etc/systemd/system/multi-user.target.wants\n" in done.stdout
    assert "+ ln -sfn /etc/systemd/system/fer-edge.service " \
           "/etc/systemd/system/multi-user.target.wants/fer-edge.service\n" in done.stdout
    assert done.stdout.rstrip().endswith("Dry run: nothing was changed.")


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="no apt here")
def test_picamera2_missing_from_the_archive_is_a_warning(tmp_path):
    policy = subprocess.run(["apt-cache", "policy", "python3-picamera2"], capture_output=True, text=True).stdout
    if "Candidate:" in policy and "Candidate: (none)" not in policy:
        pytest.skip("this apt archive has python3-picamera2 (Raspberry Pi OS)")
    done = dry_run(tmp_path)
    assert done.returncode == 0
    assert "install-pi.sh: warning: python3-picamera2 is not in this system's apt archive" in done.stderr
    assert "+ apt-get install -y --no-install-recommends python3-venv\n" in done.stdout
