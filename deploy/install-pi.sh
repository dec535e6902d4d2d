#!/usr/bin/env bash
# Install the fer-edge runtime as a systemd service on Raspberry Pi OS 64-bit (Bookworm or Trixie).
#
#   sudo deploy/install-pi.sh                      # from a clone of the repository
#   sudo deploy/install-pi.sh --wheel fer_edge-0.1.0-py3-none-any.whl
#   deploy/install-pi.sh --dry-run                 # print every step, change nothing
#   deploy/install-pi.sh --root /tmp/img --python "$(command -v python3)" --wheel W   # lay the files into a folder
#
# Steps, each safe to run again: apt's python3-picamera2 and python3-venv (picamera2 imports libcamera,
# which only apt has); the system user fer-edge in group video; a venv in /opt/fer-edge/venv made with
# --system-site-packages so that it sees apt's picamera2, with pip's fer-edge[edge] in it (numpy kept at
# the system numpy's major version, see deploy/constraints-numpy1.txt); /etc/fer-edge/device.yaml and
# secrets.env (kept if present); /var/lib/fer-edge; the systemd unit. It does not start the service:
# it prints what to edit first.
#
# In a chroot or an image build (systemd is not PID 1: no /run/systemd/system) the unit is enabled without being
# started (the service starts at the image's first boot), and a python3-picamera2 that the apt archive lacks (plain
# Debian, not Raspberry Pi OS) is a warning: a USB camera works without it.
#
# --root DIR puts the files under DIR (tests, image builds) and skips what acts on the running system
# (apt, the user, ownership, systemctl). A venv runs only from the path it was made at, so one made
# under --root is for checking the install, not for copying elsewhere.
set -euo pipefail

readonly SERVICE=fer-edge
readonly VENV=/opt/fer-edge/venv
readonly CONF_DIR=/etc/fer-edge
readonly STATE_DIR=/var/lib/fer-edge
readonly UNIT=/etc/systemd/system/fer-edge.service
readonly APT_PACKAGES=(python3-picamera2 python3-venv)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE
readonly REPO="${HERE%/*}"

dry_run=0
root=""
wheel=""
python=/usr/bin/python3  # the interpreter apt's python3-picamera2 is built for

die() {
  echo "install-pi.sh: error: $*" >&2
  exit 2
}

warn() {
  echo "install-pi.sh: warning: $*" >&2
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --root) [ $# -ge 2 ] || die "--root needs a folder"; root="${2%/}"; shift ;;
    --wheel) [ $# -ge 2 ] || die "--wheel needs a .whl file"; wheel="$2"; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

# Print a step, and run it unless this is a dry run.
step() {
  printf '+ %s\n' "$*"
  if [ "$dry_run" = 0 ]; then
    "$@"
  fi
}

# A step on the running system (packages, users, services): not done when installing into --root.
system_step() {
  if [ -n "$root" ]; then
    printf '  skipped (--root): %s\n' "$*"
  else
    step "$@"
  fi
}

# True when apt can install the package (the archive has a candidate for it).
apt_has() {
  apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

# deploy/device.yaml with its example mqtt.device_id commented out: each device is then named after its host.
write_device_config() {
  sed 's/^  device_id:/  # device_id:/' "$HERE/device.yaml" >"$1"
  chmod 0640 "$1"
}

machine="$(uname -m)"
case "$machine" in
  armv6l | armv7l)
    die "32-bit ARM ($machine) is not supported: PyPI has no $machine wheels of numpy, OpenCV or ai-edge-litert;" \
      "install Raspberry Pi OS 64-bit (or 64-bit Debian or Ubuntu)" ;;
esac
[ -z "$wheel" ] || [ -f "$wheel" ] || die "wheel $wheel not found"
[ -n "$wheel" ] || [ -f "$REPO/pyproject.toml" ] || die "no --wheel given and $REPO is not a fer-edge checkout"
if [ -z "$root" ] && [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo), or with --dry-run or --root DIR"
fi

# systemd as PID 1 is what a booted system has; a chroot or an image build has not.
booted=0
[ ! -d /run/systemd/system ] || booted=1

echo "== apt packages: ${APT_PACKAGES[*]}"
apt_packages=("${APT_PACKAGES[@]}")
if [ -z "$root" ] && ! apt_has python3-picamera2; then
  warn "python3-picamera2 is not in this system's apt archive (plain Debian, not Raspberry Pi OS): skipped;" \
    "source.uri 'picamera' needs it, a USB camera ('0') does not"
  apt_packages=(python3-venv)
fi
system_step apt-get install -y --no-install-recommends "${apt_packages[@]}"
command -v "$python" >/dev/null || [ "$dry_run" = 1 ] || die "no Python at $python (use --python)"

echo "== service user $SERVICE (groups: video)"
if id -u "$SERVICE" >/dev/null 2>&1; then
  echo "  exists"
else
  system_step useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin \
    "$SERVICE"
fi
system_step usermod --append --groups video "$SERVICE"

echo "== folders"
step install -d -m 0755 "$root${VENV%/*}"
step install -d -m 0750 "$root$CONF_DIR" "$root$STATE_DIR"
system_step chown "$SERVICE:$SERVICE" "$root$STATE_DIR"
system_step chgrp "$SERVICE" "$root$CONF_DIR"

echo "== venv $VENV (sees the system's packages: apt's picamera2)"
if [ -x "$root$VENV/bin/python" ]; then
  echo "  exists"
else
  step "$python" -m venv --system-site-packages "$root$VENV"
fi
constraints=()
numpy_major="$("$python" -c 'import numpy; print(numpy.__version__.split(".")[0])' 2>/dev/null || true)"
if [ "$numpy_major" = 1 ]; then
  echo "  the system's numpy is 1.x: pip's stays 1.x too ($HERE/constraints-numpy1.txt)"
  constraints=(--constraint "$HERE/constraints-numpy1.txt")
fi
package="${wheel:-$REPO}"
step "$root$VENV/bin/pip" install --disable-pip-version-check --quiet "${constraints[@]}" "${package}[edge]"
# Always this version of fer-edge itself, even when pip already has one of the same version number.
step "$root$VENV/bin/pip" install --disable-pip-version-check --quiet --no-deps --force-reinstall "$package"

echo "== configuration $CONF_DIR"
if [ -f "$root$CONF_DIR/device.yaml" ]; then
  echo "  keeping the existing device.yaml"
else
  step write_device_config "$root$CONF_DIR/device.yaml"
fi
if [ -f "$root$CONF_DIR/secrets.env" ]; then
  echo "  keeping the existing secrets.env"
else
  step install -m 0600 /dev/null "$root$CONF_DIR/secrets.env"
fi
system_step chgrp "$SERVICE" "$root$CONF_DIR/device.yaml"

echo "== systemd unit $UNIT"
step install -D -m 0644 "$HERE/edge.service" "$root$UNIT"
if [ -n "$root" ] || [ "$booted" = 1 ]; then
  system_step systemctl daemon-reload
else
  echo "  systemd is not running here (a chroot or an image build): enabling $SERVICE without starting it"
  if command -v systemctl >/dev/null; then
    step systemctl --root=/ enable "$SERVICE"  # --root: on the unit files alone, no running systemd asked
  else
    wanted_by="$(sed -n 's/^WantedBy=//p' "$HERE/edge.service")"
    step install -d -m 0755 "${UNIT%/*}/$wanted_by.wants"
    step ln -sfn "$UNIT" "${UNIT%/*}/$wanted_by.wants/${UNIT##*/}"
  fi
fi

if [ "$dry_run" = 1 ]; then
  printf '\nDry run: nothing was changed.\n'
  exit 0
fi
cat <<EOF

Installed. Before starting it:
  1. Edit $CONF_DIR/device.yaml: mqtt.broker (your broker), source.uri ("picamera" for a camera
     module on the ribbon cable, "0" for a USB webcam); mqtt.device_id defaults to this host's name.
  2. If the broker wants a password: put MQTT_PASSWORD=... into $CONF_DIR/secrets.env.
  3. Check:  sudo -u $SERVICE $VENV/bin/edge check
EOF
if [ -z "$root" ] && [ "$booted" = 0 ]; then
  echo "  4. It is enabled, not started (no systemd running here): it starts at the next boot."
else
  echo "  4. Start:  sudo systemctl enable --now $SERVICE && journalctl -u $SERVICE -f"
fi
