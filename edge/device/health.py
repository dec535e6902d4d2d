"""What a device reports about itself in ``stats``: resident memory and CPU temperature."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def rss_mb(peak: bool = False) -> float:
    """Resident memory of this process in MB (the peak since start with ``peak``)."""
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_temp_c() -> float | None:
    """The first readable thermal zone (Raspberry Pi, Jetson), or None."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None
