"""A local MQTT broker for the demo and the tests: mosquitto where it is installed, else amqtt in this process.

mosquitto is what a fleet should run (MQTT 5, persistence, passwords). The embedded amqtt broker only
exists so that ``tools demo`` works on a machine without it; it speaks MQTT 3.1.1 only, so whoever
connects to it must say so (``protocol`` below; the device config's ``mqtt.protocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from edge.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


class Mosquitto:
    """mosquitto on a free local port, persistent (a subscriber's QoS 1 session survives a restart on the same port)."""

    protocol = "5"

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        """With ``users`` (name -> password) anonymous clients are refused."""
        self.binary = mosquitto_binary()
        if self.binary is None:
            raise UserError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}",
                 "persistence true", f"persistence_location {folder}/", "autosave_interval 1"]
        if users:
            passwords = folder / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines.append(f"password_file {passwords}")
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto drops root to a 'mosquitto' user that cannot write to our folder
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None:
                raise UserError(f"mosquitto exited with code {self.proc.returncode} (config {self.conf})")
            if time.monotonic() > end:
                raise UserError(f"mosquitto did not listen on port {self.port} within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread (MQTT 3.1.1, in memory)."""

    protocol = "3.1.1"

    def __init__(self):
        try:
            import amqtt.broker  # noqa: F401
        except ImportError:
            raise UserError("no MQTT broker: install mosquitto (apt-get install mosquitto) or amqtt "
                            "(pip install -e \".[tools]\")") from None
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="amqtt", daemon=True)

    async def _serve(self) -> None:
        from amqtt.broker import Broker

        logging.getLogger("amqtt").setLevel(logging.WARNING)  # it logs every connection at INFO
        try:
            broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}}})
            await broker.start()
        except BaseException as exc:  # reported by start() in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        await broker.shutdown()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise UserError(f"the embedded MQTT broker did not start on port {self.port}: {self._error or 'timeout'}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def local_broker(folder: Path) -> Mosquitto | EmbeddedBroker:
    """A started broker: mosquitto where installed, else the embedded one."""
    broker = Mosquitto(folder) if mosquitto_binary() else EmbeddedBroker()
    broker.start()
    return broker
