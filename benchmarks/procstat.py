"""CPU time and memory of another process, read from ``/proc`` (Linux only)."""

from __future__ import annotations

import os
import time
from typing import Callable

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time (s) used so far by every thread of ``pid``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        text = handle.read()
    # The command name is in parentheses and may contain spaces; fields start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    utime_ticks, stime_ticks = int(fields[11]), int(fields[12])
    return (utime_ticks + stime_ticks) / CLOCK_TICKS_PER_SECOND


def memory_mb(pid: int) -> dict[str, float]:
    """``{"rss_mb": VmRSS, "hwm_mb": VmHWM}`` of ``pid`` in MiB (current and peak resident size)."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values["rss_mb" if key == "VmRSS" else "hwm_mb"] = int(rest.split()[0]) / 1024.0
    if len(values) != 2:
        raise RuntimeError(f"/proc/{pid}/status has no VmRSS/VmHWM (a kernel thread, or the process ended)")
    return values


class CpuMeter:
    """CPU share of one core used by a process between ``start()`` and ``stop()``, in percent."""

    def __init__(self, pid: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Meter ``pid`` against the wall clock ``monotonic``."""
        self.pid = pid
        self._monotonic = monotonic
        self._start: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        """Take the first reading."""
        self._start = (self._monotonic(), cpu_seconds(self.pid))

    def stop(self) -> float:
        """CPU seconds per wall second since ``start()``, times 100."""
        wall_s = self._monotonic() - self._start[0]
        return 100.0 * (cpu_seconds(self.pid) - self._start[1]) / wall_s
