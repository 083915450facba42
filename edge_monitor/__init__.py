"""edge-monitor: acoustic anomaly monitoring for factory machines on a Raspberry Pi."""

__version__ = "0.1.0"
