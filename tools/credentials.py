"""Broker credentials for the shipped mosquitto configuration (``deploy/mosquitto/``): one user per device,
operator and viewer, and the ACL that gives each only its own topics.

Why roles live in the user name: mosquitto's ACL ``pattern`` lines substitute ``%u`` and apply to every
user, so a device's user name is its device id and the patterns give it its own ``cmd`` to read and its own
topics to write, nothing else. People get user names that no device id can have (``NAME@operator``,
``NAME@viewer``: ``@`` is not allowed in a device id), so the patterns never name a real device's topics
for them, and their rights come from ``user`` blocks this module writes: operators read and write the
whole prefix (they command devices), viewers only read it.

The password file uses mosquitto's own PBKDF2-SHA512 format (``$7$``, what ``mosquitto_passwd`` writes),
so no extra tool is needed; passwords are random (``secrets.token_urlsafe``) and printed once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from edge.errors import UserError
from edge.protocol.topics import AVAILABILITY, CMD, DRIFT, EVENTS, OTA, REPLY, STATE, STATS, check_name, check_prefix

ROLES = ("device", "operator", "viewer")
PASSWD_FILE, ACL_FILE = "passwd", "acl"
ITERATIONS = 101
"""mosquitto_passwd's default for ``$7$`` hashes (mosquitto 2.0)."""
DEVICE_WRITES = (AVAILABILITY, EVENTS, STATE, STATS, REPLY, OTA)
VIEWER_READS = (AVAILABILITY, EVENTS, STATE, STATS, OTA, DRIFT)
"""What a viewer sees: every device's stream and the operators' drift alerts (and rollouts), not command replies."""


def user_name(role: str, name: str) -> str:
    """The broker user name of ``name`` in ``role``: a device's own id, else ``name@role``."""
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    check_name(name, f"{role} name")
    return name if role == "device" else f"{name}@{role}"


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512, as mosquitto 2.0 stores and checks passwords."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl(prefix: str, users: list[str]) -> str:
    """The whole ACL file: device patterns, then a block per operator and viewer among ``users``."""
    lines = ["# Written by `tools broker-user`; edits are overwritten. Devices: their own topics only.",
             f"pattern read {prefix}/%u/{CMD}",
             *(f"pattern write {prefix}/%u/{kind}" for kind in DEVICE_WRITES),
             "pattern write homeassistant/device/%u/config", ""]
    for user in sorted(users):
        role = user.rpartition("@")[2] if "@" in user else "device"
        if role == "operator":
            # operators also publish Home Assistant discovery for what they compute (tools drift's binary sensors)
            lines += [f"user {user}", f"topic readwrite {prefix}/#", "topic readwrite homeassistant/#", ""]
        elif role == "viewer":
            lines += [f"user {user}", *(f"topic read {prefix}/+/{kind}" for kind in VIEWER_READS),
                      f"topic read {prefix}/rollout/#", "topic read homeassistant/#", ""]
    return "\n".join(lines)


def read_users(passwd: Path) -> dict[str, str]:
    """user -> stored hash of a mosquitto password file (missing file: no users)."""
    if not passwd.exists():
        return {}
    users = {}
    for number, line in enumerate(passwd.read_text().splitlines(), 1):
        if line.strip():
            user, sep, stored = line.partition(":")
            if not sep or not stored:
                raise UserError(f"{passwd}:{number} is not a 'user:hash' line")
            users[user] = stored
    return users


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner reads (mosquitto reads it as root, then drops)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def add_user(folder: Path, role: str, name: str, prefix: str = "fer") -> tuple[str, str]:
    """Create or replace a user in ``folder``'s password file, rewrite the ACL; return (user name, new password)."""
    check_prefix(prefix)
    user = user_name(role, name)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--dir {folder} is a file: it should be the folder of the broker's passwd and acl files")
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    users = read_users(folder / PASSWD_FILE)
    users[user] = mosquitto_hash(password)
    write_private(folder / PASSWD_FILE, "".join(f"{u}:{h}\n" for u, h in sorted(users.items())))
    write_private(folder / ACL_FILE, acl(prefix, list(users)))
    return user, password


def install_lines(role: str, user: str, password: str, folder: Path) -> str:
    """What to do with a new user, printed once: the password is not stored anywhere else in clear."""
    reload = f"Reload the broker so it reads {folder}: systemctl reload mosquitto (or kill -HUP its pid)."
    if role == "device":
        return "\n".join([
            f"Broker user {user} written to {folder / PASSWD_FILE} and {folder / ACL_FILE}. {reload}",
            "On the device (deploy/install-pi.sh --mqtt-user sets the first two):",
            f"  /etc/fer-edge/device.yaml:  mqtt: {{username: {user}, device_id: {user}}}",
            f"  /etc/fer-edge/secrets.env:  MQTT_PASSWORD={password}",
            "  and mqtt.broker: mqtts://HOST:8883 with mqtt.tls_ca unless the broker is on the device itself"])
    return "\n".join([
        f"Broker user {user} written to {folder / PASSWD_FILE} and {folder / ACL_FILE}. {reload}",
        "For the operator's tools:",
        f"  export MQTT_PASSWORD='{password}'",
        f"  tools subscribe --broker mqtts://{quote(user)}@HOST:8883 ...  (mqtt://{quote(user)}@localhost on the broker)"])
