"""A private PulseAudio server with a clocked null sink: real audio capture without a sound card.

Follows DESIGN.md's recipe: a root PulseAudio with ``XDG_RUNTIME_DIR`` and ``HOME``
in private temporary folders, a ``module-null-sink`` called ``vsink`` whose
monitor is the default source, and a ``pacat </dev/zero`` player that keeps the
sink (and so its monitor) clocked. PortAudio reaches it through ALSA's pulse
plugin: the private ``HOME`` gets an ``.asoundrc`` that makes the ``default``
PCM the pulse plugin, so this does not depend on the system's ALSA hooks.

Used by the live benchmarks (``benchmarks/daemon_live.py``) and, through the
pytest fixtures in ``tests/helpers/pulse.py``, by the tests. It must not import
pytest.

Packages: ``pulseaudio pulseaudio-utils libasound2-plugins libportaudio2``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import wave
from pathlib import Path
from typing import Optional

import numpy as np

SINK_NAME = "vsink"
_START_TIMEOUT_SECONDS = 20.0

_ASOUNDRC = """\
# Written by benchmarks/pulse_rig.py: route ALSA's default PCM to PulseAudio.
pcm.!default {
    type pulse
    hint.description "Default ALSA device via the private PulseAudio"
}
ctl.!default {
    type pulse
}
"""

# ALSA's channel order, which the pulse plugin uses for a PortAudio stream. The null sink and paplay
# must use the same map, or PulseAudio remixes channels (its own default for 4 channels is
# front-left,front-center,front-right,rear-center).
ALSA_CHANNEL_MAPS = {
    1: "mono",
    2: "front-left,front-right",
    4: "front-left,front-right,rear-left,rear-right",
    6: "front-left,front-right,rear-left,rear-right,front-center,lfe",
    8: "front-left,front-right,rear-left,rear-right,front-center,lfe,side-left,side-right",
}


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test process dies, so no server is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def pulse_available() -> bool:
    """True when the PulseAudio binaries this helper needs are installed."""
    return all(shutil.which(tool) for tool in ("pulseaudio", "pactl", "pacat", "paplay"))


def rescan_portaudio() -> None:
    """Make PortAudio enumerate devices again (it only does so at Pa_Initialize).

    Call only when no stream is open in this process.
    """
    import sounddevice

    sounddevice._terminate()
    sounddevice._initialize()


def write_wav(path: Path, samples_int16: np.ndarray, sample_rate_hz: int) -> Path:
    """Write ``(frames,)`` or ``(frames, channels)`` int16 samples as a PCM WAV file."""
    data = np.asarray(samples_int16, dtype=np.int16)
    if data.ndim == 1:
        data = data[:, None]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(data.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(sample_rate_hz)
        wav.writeframes(np.ascontiguousarray(data).tobytes())
    return path


class PulseServer:
    """One private PulseAudio daemon with a clocked null sink ``vsink``."""

    def __init__(self, root_dir: Path, rate_hz: int = 16000, channels: int = 1,
                 clock_latency_ms: Optional[float] = None):
        """Prepare (but do not start) a server living under ``root_dir``.

        ``clock_latency_ms``: the latency the clock player asks of the sink. By default the
        null sink renders in blocks of about 2 s, so a new capture stream (through ALSA's
        pulse plugin) gets its first audio up to 2 s late; a real sound card starts within a
        period. A few tens of milliseconds makes the sink behave like one, at some CPU cost
        in the server. It takes effect after the sink's current block (about 2 s after start).
        """
        if channels not in ALSA_CHANNEL_MAPS:
            raise ValueError(f"channels must be one of {sorted(ALSA_CHANNEL_MAPS)}, got {channels}")
        self.channel_map = ALSA_CHANNEL_MAPS[channels]
        self.rate_hz = rate_hz
        self.channels = channels
        self.clock_latency_ms = clock_latency_ms
        self.root_dir = Path(root_dir)
        self.runtime_dir = self.root_dir / "run"
        self.home_dir = self.root_dir / "home"
        self.log_path = self.root_dir / "pulseaudio.log"
        self._daemon: Optional[subprocess.Popen] = None
        self._clock: Optional[subprocess.Popen] = None
        self._log_file = None
        self._zero_file = None
        for folder in (self.runtime_dir, self.home_dir):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        (self.home_dir / ".asoundrc").write_text(_ASOUNDRC)

    @property
    def env(self) -> dict:
        """Environment variables that point clients (and ALSA's pulse plugin) at this server."""
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "HOME": str(self.home_dir),
            "PULSE_SERVER": f"unix:{self.runtime_dir / 'pulse' / 'native'}",
        }

    def _child_env(self) -> dict:
        merged = dict(os.environ)
        merged.update(self.env)
        return merged

    def _pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self._child_env(), capture_output=True,
                              text=True, timeout=15, check=check)

    @property
    def server_pid(self) -> Optional[int]:
        """The PulseAudio daemon's process id while it runs (for CPU accounting), else None."""
        return self._daemon.pid if self.running else None

    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self._daemon is not None and self._daemon.poll() is None

    def start(self) -> None:
        """Start the daemon, make ``vsink.monitor`` the default source and clock the sink."""
        if self.running:
            return
        self._log_file = open(self.log_path, "ab")
        sink_args = (f"module-null-sink sink_name={SINK_NAME} rate={self.rate_hz} channels={self.channels} "
                     f"channel_map={self.channel_map}")
        self._daemon = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
             "-L", "module-native-protocol-unix", "-L", sink_args],
            env=self._child_env(), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            if self._daemon.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self._daemon.returncode}; see {self.log_path}")
            if self._pactl("info", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not answer within {_START_TIMEOUT_SECONDS} s; see {self.log_path}")
            time.sleep(0.05)
        self._pactl("set-default-source", f"{SINK_NAME}.monitor")
        self._pactl("set-default-sink", SINK_NAME)
        self._zero_file = open("/dev/zero", "rb")
        latency_args = [] if self.clock_latency_ms is None else [f"--latency-msec={self.clock_latency_ms:g}"]
        self._clock = subprocess.Popen(
            ["pacat", "-p", "-d", SINK_NAME, f"--rate={self.rate_hz}", f"--channels={self.channels}",
             f"--channel-map={self.channel_map}", "--format=s16le", *latency_args],
            env=self._child_env(), stdin=self._zero_file, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def kill(self) -> None:
        """Kill the daemon abruptly (SIGKILL), as when a USB microphone is pulled out."""
        self.resume()
        for proc in (self._clock, self._daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in (self._clock, self._daemon):
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self._clock = None
        self._daemon = None
        for handle in (self._log_file, self._zero_file):
            if handle is not None:
                handle.close()
        self._log_file = None
        self._zero_file = None
        # A killed daemon leaves its pid file and socket behind; the next start must not trip on them.
        shutil.rmtree(self.runtime_dir / "pulse", ignore_errors=True)

    def suspend(self) -> None:
        """Freeze the daemon (SIGSTOP): clients stay connected but no audio flows, like a hung device."""
        if self.running:
            self._daemon.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a suspended daemon (SIGCONT)."""
        if self.running:
            self._daemon.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the daemon and its clock player."""
        self.kill()

    def restart(self) -> None:
        """Kill and start the daemon again (same folders, same sink)."""
        self.kill()
        self.start()

    def _paplay_command(self, path: Path) -> list:
        # Only a WAV with the sink's channel count gets the sink's channel map (no remixing).
        with wave.open(str(path), "rb") as wav:
            file_channels = wav.getnchannels()
        command = ["paplay", f"--device={SINK_NAME}"]
        if file_channels == self.channels:
            command.append(f"--channel-map={self.channel_map}")
        return command + [str(path)]

    def play_wav(self, path: Path, timeout_s: float = 60.0) -> None:
        """Play a WAV file into the null sink and wait until it has been played."""
        subprocess.run(self._paplay_command(path), env=self._child_env(),
                       check=True, timeout=timeout_s, capture_output=True)

    def play_wav_async(self, path: Path) -> subprocess.Popen:
        """Start playing a WAV file into the null sink; returns the ``paplay`` process."""
        return subprocess.Popen(self._paplay_command(path), env=self._child_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


