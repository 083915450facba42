"""The one loop that reads a Source: used by the daemon's workers, ``replay``, ``record`` and ``identify``.

``SourcePump(source)`` iterates over the blocks of an opened source. A read that
times out yields nothing (the loop goes on); the end of a file ends the iteration
and sets ``at_end``; a ``SourceError`` propagates to the caller, which decides
whether to retry. ``keep_going`` is asked before every read (a stop flag, a
deadline) and ``on_read`` is called after every read, block or not: the daemon
uses it as its progress mark for the watchdog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable, Optional

from edge_monitor.sources.base import Block, Source


class SourcePump:
    """Blocks from one opened Source until its end, a stop, or a SourceError (see the module docstring)."""

    def __init__(self, source: Source, *, timeout_s: float = 1.0, keep_going: Optional[Callable[[], bool]] = None,
                 on_read: Optional[Callable[[], None]] = None) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self._keep_going = keep_going
        self._on_read = on_read
        self.at_end = False  # the source said EOF (a file that does not loop)
        self.blocks = 0

    def __iter__(self) -> Iterator[Block]:
        while self._keep_going is None or self._keep_going():
            try:
                block = self.source.read(self.timeout_s)
            except EOFError:
                self.at_end = True
                return
            if self._on_read is not None:
                self._on_read()
            if block is not None:
                self.blocks += 1
                yield block
