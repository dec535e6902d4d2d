"""Threads that cannot die silently: a worker's unexpected exception becomes one recorded line.

The runtime watches every thread's recorded failure and stops the whole process with status 1, so
systemd restarts it; without this a dead thread would leave a process that reads ``online`` and does
nothing (the hardening review's zombie device).
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("edge.device")


def run_guarded(work: Callable[[], None], name: str, on_failure: Callable[[str], None]) -> None:
    """Run ``work``; if it raises, hand ``on_failure`` one line saying why (the traceback goes to the debug log)."""
    try:
        work()
    except Exception as exc:  # noqa: BLE001 - any failure of a worker ends the process cleanly
        log.debug("%s failed", name, exc_info=True)
        on_failure(f"{name} failed: {type(exc).__name__}: {exc}")
