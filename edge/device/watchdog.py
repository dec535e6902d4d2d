"""systemd's service notifications (``sd_notify``), written to its socket directly: no new dependency.

``deploy/edge.service`` is ``Type=notify`` with ``WatchdogSec=``: systemd counts the device as
started when it says ``READY=1`` (the model is loaded, the link and the workers run), and kills and
restarts it when ``WATCHDOG=1`` stops coming. The runtime feeds the watchdog only while frames are
analysed, so a camera or an analysis thread that hangs without failing ends in a restart instead of
a device that reads ``online`` and does nothing. Outside systemd (no ``$NOTIFY_SOCKET``) every call
does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("edge.device.watchdog")


class Notifier:
    """The protocol of ``sd_notify(3)``: newline-separated ``KEY=value`` datagrams to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address  # "@": Linux's abstract namespace
        usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
        enabled = bool(self.address) and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid()))
        self.interval = int(usec) / 2e6 if enabled else None
        """Seconds between two feeds: half the watchdog timeout, as ``sd_watchdog_enabled(3)`` advises."""
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None
        self._frames, self._fed = 0, float("-inf")

    def notify(self, state: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(state.encode(), self.address)
        except OSError as exc:  # systemd restarts a notify service it cannot hear from; say why
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)

    def frames(self, count: int) -> None:
        """Feed the watchdog if frames were analysed since the last feed (``count`` only grows), once per interval."""
        if self.interval is None or count == self._frames or time.monotonic() - self._fed < self.interval:
            return
        self._frames, self._fed = count, time.monotonic()
        self.notify("WATCHDOG=1")
