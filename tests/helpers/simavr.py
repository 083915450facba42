"""The real Arduino firmware running in simavr, for tests.

- ``build_firmware()`` runs ``make -C firmware all`` (sketch .hex/.elf with
  arduino-mk, host tests, the simavr harness) once per test session.
- ``simulated_arduino(samples)`` starts the harness fed with ``samples`` as the
  microphone signal and yields a ``SimulatedArduino``: its ``pty_path`` is the
  serial port to open (e.g. with ``SerialSource``), ``pin_history("D8")`` is
  the alarm LED's history, ``reset()`` resets the MCU.

The simulation's clock is the AVR cycle counter (16 MHz), not wall time: the
harness holds the simulation while the serial reader is behind, so tests never
depend on how fast simavr runs on this machine.

Example::

    with simulated_arduino(pcm_int16) as board:
        src = SerialSource(board.pty_path)
        ...
        board.wait_for_pin("D8", 1, timeout_s=30)
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = REPO / "firmware"
BUILD_DIR = FIRMWARE_DIR / "build"
ELF = BUILD_DIR / "uno" / "edge_monitor_mic.elf"
HEX = BUILD_DIR / "uno" / "edge_monitor_mic.hex"
HARNESS = BUILD_DIR / "host" / "em_sim"
F_CPU_HZ = 16_000_000
ALARM_LED_PIN = "D8"
ALARM_RELAY_PIN = "D7"
STATUS_LED_PIN = "D13"

_build_lock = threading.Lock()
_build_result: Optional[str] = None


def tools_missing() -> list[str]:
    """Build tools that are not installed (empty when the firmware can be built and simulated)."""
    missing = [tool for tool in ("make", "gcc", "avr-gcc") if shutil.which(tool) is None]
    if not Path("/usr/share/arduino/Arduino.mk").exists():
        missing.append("arduino-mk")
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev")
    return missing


def build_firmware() -> None:
    """Build the sketch, the host tests and the harness (once per session); raise with make's output on failure."""
    global _build_result
    with _build_lock:
        if _build_result is None:
            proc = subprocess.run(["make", "-C", str(FIRMWARE_DIR), "all"], capture_output=True, text=True,
                                  timeout=600)
            _build_result = "ok" if proc.returncode == 0 else proc.stdout[-4000:] + proc.stderr[-4000:]
        if _build_result != "ok":
            raise RuntimeError(f"firmware build failed:\n{_build_result}")


@pytest.fixture(scope="session")
def firmware_build() -> Path:
    """Session fixture: the firmware is built (skips if the toolchain is missing); returns the build dir."""
    missing = tools_missing()
    if missing:
        pytest.skip(f"firmware toolchain missing: {', '.join(missing)}")
    build_firmware()
    return BUILD_DIR


@dataclasses.dataclass(frozen=True)
class PinChange:
    """One change of a watched pin: simulated cycle and the ADC conversion count at that moment."""

    pin: str
    value: int
    cycle: int
    adc_index: int

    @property
    def sim_seconds(self) -> float:
        """Simulated time of the change (s)."""
        return self.cycle / F_CPU_HZ


class SimulatedArduino:
    """A running harness: serial port path, event log, reset."""

    def __init__(self, process: subprocess.Popen, pty_path: str, events_path: Path, log_path: Path) -> None:
        self.process = process
        self.pty_path = pty_path
        self.events_path = events_path
        self.log_path = log_path

    def events(self) -> list[list[str]]:
        """All event lines so far, split into words."""
        return [line.split() for line in self.events_path.read_text().splitlines() if line.strip()]

    def pin_history(self, pin: str = ALARM_LED_PIN) -> list[PinChange]:
        """Changes of ``pin`` ("D7", "D8" or "D13") in order, starting with its reset level."""
        return [PinChange(e[1], int(e[2]), int(e[3]), int(e[4])) for e in self.events()
                if e[0] == "pin" and e[1] == pin]

    def pin_level(self, pin: str = ALARM_LED_PIN) -> Optional[int]:
        """Current level of ``pin`` (None before the firmware has configured it)."""
        history = self.pin_history(pin)
        return history[-1].value if history else None

    def adc_log(self) -> list[tuple[int, int]]:
        """``(conversion index, cycle)`` samples of the ADC trigger clock."""
        return [(int(e[1]), int(e[2])) for e in self.events() if e[0] == "adc"]

    def speed(self) -> Optional[tuple[float, float]]:
        """Latest ``(simulated seconds, wall seconds)`` since start."""
        pairs = [(float(e[1]), float(e[2])) for e in self.events() if e[0] == "speed"]
        return pairs[-1] if pairs else None

    def resets(self) -> int:
        """How many MCU resets were done with ``reset()``."""
        return sum(1 for e in self.events() if e[0] == "reset")

    def reset(self) -> None:
        """Reset the MCU (as the reset button or a DTR pulse would)."""
        self.process.send_signal(signal.SIGUSR1)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``predicate`` until true; AssertionError naming ``what`` on timeout or harness exit."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.process.poll() is not None:
                raise AssertionError(f"simavr harness exited ({self.process.returncode}) while waiting for {what}:\n"
                                     f"{self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.02)

    def wait_for_pin(self, pin: str, value: int, timeout_s: float = 30.0) -> PinChange:
        """Wait until ``pin`` is at ``value``; return the change that put it there."""
        self.wait_for(lambda: self.pin_level(pin) == value, timeout_s, f"pin {pin} = {value}")
        return self.pin_history(pin)[-1]


def _write_wave(samples: np.ndarray, path: Path) -> str:
    """Write samples for the harness; returns its --format ("int16" PCM or "u10" codes)."""
    x = np.asarray(samples)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dtype == np.int16:
        x.astype("<i2").tofile(path)
        return "int16"
    if x.dtype == np.uint16:
        if x.size and int(x.max()) > 1023:
            raise ValueError("uint16 samples are 10-bit ADC codes and must be <= 1023")
        x.astype("<u2").tofile(path)
        return "u10"
    raise ValueError(f"samples must be int16 PCM or uint16 ADC codes, not {x.dtype}")


@contextmanager
def simulated_arduino(samples: np.ndarray, *, loop: bool = True, log_every: int = 16000,
                      workdir: Optional[Path] = None) -> Iterator[SimulatedArduino]:
    """Run the firmware in simavr with ``samples`` (int16 PCM or uint16 10-bit codes) on A0.

    With ``loop`` the waveform repeats; otherwise A0 sits at mid-scale after
    its end. Builds the firmware first if needed. Yields a ``SimulatedArduino``.
    """
    build_firmware()
    tmp = Path(tempfile.mkdtemp(prefix="em-sim-", dir=workdir))
    wave = tmp / "wave.raw"
    fmt = _write_wave(samples, wave)
    events = tmp / "events.txt"
    log = tmp / "harness.log"
    link = tmp / "ttyEM0"
    args = [str(HARNESS), "--firmware", str(ELF), "--wave", str(wave), "--format", fmt, "--events", str(events),
            "--pty-link", str(link), "--log-every", str(log_every)]
    if loop:
        args.append("--loop")
    with open(log, "w") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT)
    board = SimulatedArduino(proc, str(link), events, log)
    try:
        board.wait_for(lambda: events.exists() and any(e[0] == "pty" for e in board.events()), 10.0,
                       "the harness to create its pty")
        yield board
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def find_offset(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Index where ``needle`` first occurs in ``haystack`` (-1 if absent); both 1-D integer arrays."""
    n = len(needle)
    if n == 0 or n > len(haystack):
        return -1
    candidates = np.flatnonzero(haystack[: len(haystack) - n + 1] == needle[0])
    for i in candidates:
        if np.array_equal(haystack[i:i + n], needle):
            return int(i)
    return -1


def env_seconds(name: str, default: float) -> float:
    """A duration from the environment (lets a slow CI machine stretch timeouts)."""
    return float(os.environ.get(name, default))
