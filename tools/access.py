"""Who may use ``tools dashboard``: the names it answers to, and the login in front of it.

- **Host allow-list (DNS rebinding).** A page on an attacker's domain whose name is made to resolve to the
  dashboard's address sends its requests with ``Host: attacker.example``. The dashboard answers only a Host that
  is ``localhost``, an IP address, or a name given with ``--allow-host``; anything else gets 421. An IP address is
  safe to allow: a browser sends one only where the user typed it, no attacker-owned name is involved.
- **Origin.** A request that carries an ``Origin`` other than ``http://<its Host>`` is refused (403), so another
  site can neither log in in the operator's name nor read an answer.
- **Login.** Users and their scrypt hashes live in a file that ``tools dashboard-user`` writes (mode 600), never in
  a flag, which ``ps`` would show; a password is checked by recomputing its hash and comparing with
  :func:`hmac.compare_digest`, one check at a time (scrypt's memory and time per try bound a guessing flood). A
  login gives a random session token in an ``HttpOnly; SameSite=Strict`` cookie (no script reads it, no other site's
  request carries it); the server keeps only the token's SHA-256, for :data:`SESSION_S`, at most
  :data:`MAX_SESSIONS` of them. Plain HTTP: put TLS in front (a reverse proxy) where the network is not trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

from edge.errors import UserError
from edge.protocol.topics import NAME, check_name

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt's cost (16 MiB and about 50 ms a check): what OWASP's password-storage cheat sheet names as the minimum."""
SCRYPT_MAX = {"n": 2**18, "r": 16, "p": 4}
"""The most a hash in the file may ask for (a hand-edited line must not make every check take gigabytes)."""
SESSION_S = 12 * 3600
MAX_SESSIONS = 256
"""Sessions kept at once; a new login beyond it ends the oldest."""
LOCAL_NAMES = {"localhost"}


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64): what the users file stores instead of the password."""
    salt = salt or os.urandom(16)
    digest = _scrypt(password, salt, **SCRYPT)
    return "$".join(["scrypt", *(str(SCRYPT[k]) for k in "nrp"), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (compared in constant time)."""
    n, r, p, salt, digest = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, n=n, r=r, p=p, dklen=len(digest)), digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int = 32) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen,
                          maxmem=128 * r * (n + p + 2) + 2**20)  # what OpenSSL needs for these parameters


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(N, r, p, salt, hash) of a stored hash, or one UserError line."""
    parts = stored.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:  # binascii.Error is one
        raise UserError("not a scrypt$N$r$p$SALT$HASH line (write it with `tools dashboard-user`)") from None
    if not (1 < n <= SCRYPT_MAX["n"] and n & (n - 1) == 0 and 0 < r <= SCRYPT_MAX["r"] and 0 < p <= SCRYPT_MAX["p"]
            and len(salt) >= 8 and 16 <= len(digest) <= 64):
        raise UserError("scrypt parameters out of range (write the line again with `tools dashboard-user`)")
    return n, r, p, salt, digest


def read_users(path: Path) -> dict[str, str]:
    """user -> stored hash from a users file; one UserError line for a missing, unsafe or malformed file."""
    try:
        info = path.stat()
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --auth-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(f"--auth-file {path} is writable by others, who could add themselves: chmod 600 {path}")
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, _, stored = line.strip().partition(":")
        try:
            check_name(user, "user name")
            _parse_hash(stored)
        except UserError as exc:
            raise UserError(f"--auth-file {path} line {number}: {exc}") from None
        users[user] = stored
    if not users:
        raise UserError(f"--auth-file {path} names no user: add one with `tools dashboard-user NAME --auth-file {path}`")
    return users


def add_user(path: Path, user: str) -> str:
    """Add or replace ``user`` in the users file (created mode 600, replaced atomically); the new password, which is
    stored nowhere in clear and shown once."""
    check_name(user, "user name")
    users = read_users(path) if path.exists() else {}
    password = secrets.token_urlsafe(18)
    users[user] = hash_password(password)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{u}:{h}\n" for u, h in sorted(users.items())))
    os.replace(tmp, path)
    return password


class Login:
    """The users who may log in and the sessions they hold."""

    def __init__(self, users: dict[str, str]):
        self.users = users
        self._dummy = hash_password(secrets.token_urlsafe(12))  # an unknown user costs what a known one does
        self._checking = threading.Lock()
        self._sessions: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        """Whether the pair is right; one check at a time, whatever the number of requests."""
        with self._checking:
            ok = verify_password(password, self.users.get(user, self._dummy))
        return ok and user in self.users

    def start(self) -> str:
        """A new session's token (for the cookie); only its hash is kept."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[_digest(token)] = time.monotonic() + SESSION_S
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        key = _digest(token)
        with self._lock:
            expiry = self._sessions.get(key)
            if expiry is not None and expiry < time.monotonic():
                del self._sessions[key]
                expiry = None
        return expiry is not None

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_digest(token), None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def host_name(header: str | None) -> str | None:
    """The name or address of a ``Host`` header without its port (IPv6 brackets removed), lower case; None if it is
    not one."""
    if not header:
        return None
    host = header.strip().lower()
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        return inside if bracket and (not rest or rest[1:].isdigit() and rest[0] == ":") else None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name.rstrip(".") or None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(header: str | None, names: set[str]) -> bool:
    """Whether a request's ``Host`` names this dashboard: ``localhost``, an IP address, or one of ``names``."""
    name = host_name(header)
    return name is not None and (name in LOCAL_NAMES or name in names or is_ip(name))


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """Whether a request's ``Origin`` (when it has one) is this page itself, ``http://<Host>``."""
    return origin is None or (host is not None and origin.lower() == f"http://{host.strip().lower()}")


def check_allowed_host(text: str) -> str:
    """A ``--allow-host`` name: dot-separated levels of letters, digits and ``-`` (no port, no wildcard)."""
    name = text.lower().rstrip(".")
    if not name or len(name) > 253 or not all(NAME.fullmatch(level) and "_" not in level for level in name.split(".")):
        raise UserError(f"--allow-host {text!r} is not a host name (letters, digits, '-' and dots; no port)")
    return name


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` reaches this machine only (names other than localhost count as the network)."""
    return host.lower() in LOCAL_NAMES or is_ip(host) and ipaddress.ip_address(host).is_loopback
