"""A virtual serial cable (socat pty pair) and a fake Arduino on its far end, for tests.

- ``VirtualCable``: ``socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B``.
  ``unplug()`` kills socat (both ports vanish, readers get an I/O error);
  ``replug()`` starts it again on the same paths.
- ``FakeArduino``: opens end A and plays the firmware's part with the real
  protocol code: it writes encoded frames (or any bytes) and decodes the
  commands the gateway sends back, keeping an alarm state like the firmware.
  The real firmware is exercised in simavr (tests/helpers/simavr.py); this fake
  lets tests script exact byte streams (garbage, gaps, resets).
- ``RecordingPlayer``: the board for a whole recording, in real time. It runs
  the command-line player a maintenance engineer would use
  (``python -m edge_monitor.tools.serial_emulator --play FILE --port A
  --json``) as a child process and collects its events: when the stream
  started (the first sample's wall time) and every command the gateway sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest
import serial

from edge_monitor.sources import serial_protocol as sp


class VirtualCable:
    """Two linked ptys at stable paths ``a`` and ``b``."""

    def __init__(self, directory: Path) -> None:
        self.a = str(directory / "ttyA")
        self.b = str(directory / "ttyB")
        self.process: Optional[subprocess.Popen] = None

    def plug(self, timeout_s: float = 10.0) -> None:
        """Start socat and wait until both ports exist."""
        self.process = subprocess.Popen(
            ["socat", "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if self.process.poll() is not None:
                raise RuntimeError(f"socat exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("socat did not create its ptys")
            time.sleep(0.01)

    def unplug(self) -> None:
        """Kill socat: both ends disappear, like pulling the USB cable."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)
        self.process = None
        deadline = time.monotonic() + 5
        while (Path(self.a).exists() or Path(self.b).exists()) and time.monotonic() < deadline:
            time.sleep(0.01)

    def replug(self) -> None:
        """Start socat again on the same paths."""
        self.unplug()
        self.plug()


@contextmanager
def virtual_cable(directory: Path) -> Iterator[VirtualCable]:
    """A plugged-in ``VirtualCable`` in ``directory``; unplugged at exit."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    cable = VirtualCable(directory)
    cable.plug()
    try:
        yield cable
    finally:
        cable.unplug()


class FakeArduino:
    """The device end of a cable: writes protocol bytes, decodes commands, keeps firmware-like state."""

    def __init__(self, port: str, sample_rate_hz: int = 16000) -> None:
        self.serial = serial.Serial(port, 500000, timeout=0.05)
        self.sample_rate_hz = sample_rate_hz
        self.alarm_on = False
        self.commands: list[sp.DecodedCommand] = []
        self._decoder = sp.CommandDecoder()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_commands, daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Write raw bytes (frames, garbage) to the gateway."""
        with self._lock:
            self.serial.write(data)
            self.serial.flush()

    def frame(self, codes, seq: int, flags: int = sp.Flag.STREAMING) -> bytes:
        """An audio frame with this fake's alarm state in its flags."""
        if self.alarm_on:
            flags |= sp.Flag.ALARM
        return sp.encode_frame(codes, seq=seq, sample_rate_hz=self.sample_rate_hz, flags=flags)

    def commands_of(self, cmd: int) -> list[sp.DecodedCommand]:
        """Commands received with code ``cmd``."""
        with self._lock:
            return [c for c in self.commands if c.cmd == cmd]

    def close(self) -> None:
        """Stop reading and close the port."""
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self.serial.close()
        except Exception:  # noqa: BLE001 - the cable may be unplugged already
            pass

    def _read_commands(self) -> None:
        """Decode gateway commands; apply SET_ALARM and SET_RATE like the firmware."""
        while not self._stop.is_set():
            try:
                data = self.serial.read(256)
            except Exception:  # noqa: BLE001 - cable unplugged
                return
            for cmd in self._decoder.feed(data):
                with self._lock:
                    self.commands.append(cmd)
                if cmd.cmd == sp.Command.SET_ALARM and len(cmd.args) == 1:
                    self.alarm_on = bool(cmd.args[0])
                elif cmd.cmd == sp.Command.SET_RATE and len(cmd.args) == 2:
                    self.sample_rate_hz = int.from_bytes(cmd.args, "little")
                elif cmd.cmd == sp.Command.PING:
                    reply = bytes([sp.Command.PING, sp.Status.OK, 1, 1, 0, 0]) + b"fake"
                    self.write(sp.encode_reply(reply, sample_rate_hz=self.sample_rate_hz))


class RecordingPlayer:
    """``python -m edge_monitor.tools.serial_emulator --play WAV --port PORT --json`` as a child process."""

    def __init__(self, port: str, wav: Path, *, loop: bool = False) -> None:
        """Start the player on ``port``; it streams once the gateway has sent its first bytes."""
        repo_root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = str(repo_root) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "edge_monitor.tools.serial_emulator", "--play", str(wav), "--port", port,
               "--json"]
        self.proc = subprocess.Popen(cmd + (["--loop"] if loop else []), cwd=repo_root, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        """Parse the player's JSON lines as they come."""
        for line in self.proc.stdout:
            if line.startswith("{"):
                with self._lock:
                    self.events.append(json.loads(line))

    def _first(self, kind: str) -> Optional[dict]:
        with self._lock:
            return next((e for e in self.events if e["event"] == kind), None)

    def wait_for(self, kind: str, timeout_s: float) -> dict:
        """The first event of ``kind`` (``boot``, ``end``), waiting for it up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (event := self._first(kind)) is None:
            if self.proc.poll() is not None and not self._thread.is_alive():
                raise AssertionError(f"player exited ({self.proc.returncode}) before {kind!r}: "
                                     f"{self.proc.stderr.read()}")
            assert time.monotonic() < deadline, f"no {kind!r} event from the player within {timeout_s} s"
            time.sleep(0.05)
        return event

    def commands(self, name_prefix: str = "") -> list[dict]:
        """Command events received so far whose ``command`` text starts with ``name_prefix``."""
        with self._lock:
            return [e for e in self.events if e["event"] == "command" and e["command"].startswith(name_prefix)]

    def stop(self) -> None:
        """Terminate the player if it still runs."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._thread.join(timeout=5)
