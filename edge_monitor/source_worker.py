"""The thread that reads one source and feeds every machine listening to it.

A worker that loses its source marks its machines ``degraded``, closes the source and
reopens it with exponential backoff; the machines recover without a restart. Its
``last_progress`` is what the daemon's watchdog looks at: a worker stuck anywhere
(a blocking open, a pipeline that never returns) stops the watchdog's pets.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from edge_monitor.machine import Machine
from edge_monitor.sources.base import Source, SourceError
from edge_monitor.sources.pump import SourcePump
from edge_monitor.sources.wavfile import WavFileSource

_LOGGER = logging.getLogger("edge_monitor.daemon")  # the daemon's log name, which log readers and benchmarks match


class SourceWorker(threading.Thread):
    """Reads one source and feeds every machine that listens to it; retries a lost source with backoff."""

    def __init__(self, source: Source, machines: list[Machine], stop: threading.Event,
                 retry_max_seconds: float = 30.0, stop_at_eof: bool = True) -> None:
        super().__init__(name=f"source-{machines[0].id}", daemon=True)
        self.source = source
        self.machines = machines
        self.stop_event = stop
        self.retry_max_seconds = retry_max_seconds
        self.stop_at_eof = stop_at_eof
        self.last_progress = time.monotonic()
        self.finished = False
        self.error: Optional[BaseException] = None
        self.reopens = 0

    def run(self) -> None:
        try:
            self._run()
        except SourceError as exc:
            self.error = exc
            _LOGGER.error("%s", exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which exits 1
            self.error = exc
            _LOGGER.exception("source worker for %s stopped", ", ".join(m.id for m in self.machines))
        finally:
            self.finished = True

    def _run(self) -> None:
        delay = 1.0
        lost = False
        while not self.stop_event.is_set():
            self.last_progress = time.monotonic()
            try:
                self.source.open()
            except SourceError as exc:
                if self.stop_at_eof and isinstance(self.source, WavFileSource):
                    raise  # a missing or unreadable file will not come back
                if not lost:
                    lost = True
                    for m in self.machines:
                        m.source_lost(True, str(exc))
                    _LOGGER.error("source unavailable: %s (retrying)", exc)
                self._sleep(delay)
                delay = min(delay * 2, self.retry_max_seconds)
                continue
            delay = 1.0
            pump = SourcePump(self.source, timeout_s=0.5, keep_going=lambda: not self.stop_event.is_set(),
                              on_read=self._progress)
            try:
                lost = self._feed(pump, lost)
            except SourceError as exc:
                if not lost:  # a source that opens but stays silent fails again every few seconds
                    _LOGGER.error("source lost: %s (retrying)", exc)
                lost = True
                for m in self.machines:
                    m.source_lost(True, str(exc))
            finally:
                self.source.close()
            if pump.at_end:
                _LOGGER.info("end of input file")
                if self.stop_at_eof:
                    return
                self._sleep(delay)  # a looping source should never end; never spin on one that does
                delay = min(delay * 2, self.retry_max_seconds)

    def _progress(self) -> None:
        self.last_progress = time.monotonic()

    def _feed(self, pump: SourcePump, lost: bool) -> bool:
        """Feed blocks to the machines; a lost source is back at its first block, not when it opens."""
        for block in pump:
            if lost:
                lost = False
                self.reopens += 1
                for m in self.machines:
                    m.source_lost(False, "source reopened")
                _LOGGER.info("source back after %d attempt(s)", self.reopens)
            for m in self.machines:
                m.process(block, self.source)
        return lost

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.last_progress = time.monotonic()
            self.stop_event.wait(min(0.5, end - time.monotonic()))
