"""A private PulseAudio server with a null sink, for real-audio tests without a sound card.

Follows DESIGN.md's recipe: a root PulseAudio with ``XDG_RUNTIME_DIR`` and ``HOME``
in private temporary folders, a ``module-null-sink`` called ``vsink`` whose
monitor is the default source, and a ``pacat </dev/zero`` player that keeps the
sink (and so its monitor) clocked. PortAudio reaches it through ALSA's pulse
plugin: the private ``HOME`` gets an ``.asoundrc`` that makes the ``default``
PCM the pulse plugin, so this does not depend on the system's ALSA hooks.

The server itself lives in ``benchmarks/pulse_rig.py`` (no pytest there, so the
benchmarks can use it); this module adds the fixtures.

Use the ``pulse_server`` fixture (16 kHz mono) or ``pulse_factory`` for other
rates and channel counts, and import them explicitly in the test module::

    from tests.helpers.pulse import pulse_server, pulse_factory  # noqa: F401

Packages: ``pulseaudio pulseaudio-utils libasound2-plugins libportaudio2``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Callable

import pytest

from benchmarks.pulse_rig import (  # noqa: F401 - re-exported for the tests
    ALSA_CHANNEL_MAPS,
    SINK_NAME,
    PulseServer,
    pulse_available,
    rescan_portaudio,
    write_wav,
)

_ENV_KEYS = ("XDG_RUNTIME_DIR", "HOME", "PULSE_SERVER")


class _EnvGuard:
    """Sets the server's variables in this process's environment and restores them afterwards."""

    def __init__(self, server: PulseServer):
        self._saved = {key: os.environ.get(key) for key in _ENV_KEYS}
        os.environ.update(server.env)

    def restore(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def pulse_factory(tmp_path_factory) -> Iterator[Callable[..., PulseServer]]:
    """Factory fixture: ``pulse_factory(rate_hz=48000, channels=2)`` starts a private server.

    The test process's ``XDG_RUNTIME_DIR``, ``HOME`` and ``PULSE_SERVER`` point at the
    newest server (so ALSA's pulse plugin inside PortAudio finds it) and PortAudio is
    re-initialised so it sees the server's devices. Everything is undone afterwards.
    """
    if not pulse_available():
        pytest.skip("PulseAudio (pulseaudio, pulseaudio-utils) is not installed")
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        pytest.skip(f"PortAudio is not installed: {exc}")
    servers: list[PulseServer] = []
    guards: list[_EnvGuard] = []

    def make(rate_hz: int = 16000, channels: int = 1) -> PulseServer:
        server = PulseServer(tmp_path_factory.mktemp("pulse"), rate_hz=rate_hz, channels=channels)
        server.start()
        servers.append(server)
        guards.append(_EnvGuard(server))
        rescan_portaudio()
        return server

    yield make
    for server in reversed(servers):
        server.stop()
    for guard in reversed(guards):
        guard.restore()
    if servers:
        rescan_portaudio()


@pytest.fixture
def pulse_server(pulse_factory) -> PulseServer:
    """A private PulseAudio with a 16 kHz mono null sink ``vsink`` and ``vsink.monitor`` as default source."""
    return pulse_factory()
