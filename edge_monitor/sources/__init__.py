"""Audio sources: microphone, WAV file and Arduino serial link, behind one protocol."""

from edge_monitor.sources.base import Block, Source, SourceError

__all__ = ["Block", "Source", "SourceError"]
