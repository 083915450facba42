"""SYNTHETIC machine sounds for tests, demos and training experiments (numpy only).

Nothing in this module is a recording. It builds plausible, parametrised sounds
of five machine types (fan, pump, slider, valve, pipe), five kinds of fault
(imbalance, bearing, blockage, leak, chatter) and a factory background, all
deterministic from a seed. Use it where real recordings are not available (CI,
demos, unit tests) and say so wherever its output is shown: a detector that
works on these sounds has not been shown to work on real machines.

Model of a clip::

    clip = machine(instance parameters, clip randomness, anomaly controls) + background

* The *instance* (``instance=0, 1, ...``, like MIMII's ``id_00``, ``id_02``)
  fixes the unit's physical parameters: shaft rate, blade count, resonances,
  stroke period. Two instances of the same machine type sound related but
  different.
* The *seed* fixes everything random in one clip: speed wander, noise, phases,
  the background. The same ``(machine, instance, seed)`` gives the same normal
  sound with or without an anomaly, so a test can compare the two directly.
* An anomaly is applied through time-varying controls (presence and severity
  per sample), so :func:`generate_sequence` can fade faults in and out over
  ``FADE_SECONDS`` with continuous phase and no click at the joins.
* Levels are absolute, not normalised per clip: a normal machine sound has an
  RMS of about ``MACHINE_RMS`` (±1.5 dB from clip to clip), so level changes
  caused by a fault (a blockage reduces the flow) survive. The background is
  scaled to the requested SNR against the machine sound (fault included). If
  a mix would peak above ``PEAK_LIMIT`` the whole clip is scaled down, so the
  output never clips.

Cost: about 0.4 s and 180 MB for 50 s of audio at 16 kHz; memory grows with the
clip (about 1.7 GB for one 10-minute clip), so write long training sets as many
10 s clips, as :func:`write_dataset` does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

_LOGGER = logging.getLogger(__name__)

MACHINES = ("fan", "pump", "slider", "valve", "pipe")
"""SYNTHETIC machine types this module can generate."""

ANOMALIES = ("imbalance", "bearing", "blockage", "leak", "chatter")
"""SYNTHETIC fault types; any of them can be applied to any machine."""

NORMAL = "normal"
"""Segment label for the machine's normal sound."""

TYPICAL_ANOMALIES: dict[str, tuple[str, ...]] = {
    "fan": ("imbalance", "bearing", "blockage"),
    "pump": ("imbalance", "bearing", "blockage", "leak"),
    "slider": ("bearing", "imbalance", "chatter"),
    "valve": ("chatter", "leak", "blockage"),
    "pipe": ("leak", "blockage"),
}
"""The SYNTHETIC faults :func:`write_dataset` uses by default for each machine type."""

MACHINE_RMS = 0.07
"""Nominal RMS of a normal machine sound before the background is added (about -23 dBFS)."""

PEAK_LIMIT = 0.9
"""Output peaks stay strictly below this (the whole clip is scaled down when needed)."""

FADE_SECONDS = 0.2
"""Length of the raised-cosine fade between segments in :func:`generate_sequence`."""

_STREAM_MACHINE = 0
_STREAM_BACKGROUND = 1
_STREAM_ANOMALY = 100
_TWO_PI = 2.0 * math.pi
_EPS = 1e-12

Segment = Union[tuple[str, float], tuple[str, float, float]]


@dataclasses.dataclass(frozen=True)
class SyntheticParts:
    """The two parts of a SYNTHETIC clip, already scaled so that ``machine + background`` is the clip."""

    machine: np.ndarray
    """(n,) float64 machine sound, fault included."""
    background: np.ndarray
    """(n,) float64 factory background (zeros when ``snr_db`` is None)."""
    sample_rate_hz: int
    """Sample rate of both arrays (hertz)."""

    @property
    def mix(self) -> np.ndarray:
        """(n,) float32 clip, exactly what :func:`generate` returns."""
        return (self.machine + self.background).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Public API


def instance_parameters(machine: str, instance: int = 0) -> dict[str, Any]:
    """The physical parameters of SYNTHETIC unit ``instance`` of ``machine`` (same for all its clips).

    Keys common to every machine: ``shaft_hz`` (rotation rate that imbalance modulates),
    ``bearing_fault_hz`` (impulse rate of a bearing fault), ``bearing_resonance_hz``,
    ``leak_center_hz``, ``chatter_rate_hz``. The others are specific to the machine type.
    """
    _check_machine(machine)
    rng = np.random.default_rng([_machine_code(machine), int(instance), 0x5EED])

    def vary(nominal: float, spread: float) -> float:
        return float(nominal * (1.0 + spread * rng.uniform(-1.0, 1.0)))

    shaft_nominal_hz = {"fan": 22.0, "pump": 26.5, "slider": 30.0, "valve": 25.0, "pipe": 27.0}[machine]
    p: dict[str, Any] = {
        "shaft_hz": vary(shaft_nominal_hz, 0.12),
        "bearing_ratio": vary(3.4, 0.08),
        "bearing_resonance_hz": vary(3400.0, 0.15),
        "bearing_decay_s": vary(0.0009, 0.25),
        "leak_center_hz": vary(5800.0, 0.1),
        "chatter_rate_hz": vary(28.0, 0.25),
        "chatter_resonance_hz": vary(2300.0, 0.2),
        "blocked_cutoff_hz": vary(900.0, 0.2),
        "mains_hz": 50.0,
        "wander": {"fan": 0.003, "pump": 0.002, "slider": 0.004, "valve": 0.005, "pipe": 0.002}[machine],
    }
    p["bearing_fault_hz"] = p["shaft_hz"] * p["bearing_ratio"]
    if machine == "fan":
        p["blades"] = int(rng.integers(5, 10))
        p["harmonic_amps"] = tuple(float(rng.uniform(0.5, 1.0) / k ** 1.2) for k in range(1, 9))
        p["airflow_center_hz"] = vary(1100.0, 0.3)
    elif machine == "pump":
        p["vanes"] = int(rng.integers(5, 8))
        p["pulse_sharpness"] = vary(6.0, 0.3)
        p["flow_resonance_hz"] = vary(700.0, 0.25)
        p["hum_amps"] = tuple(float(rng.uniform(0.3, 1.0) / k) for k in range(1, 5))
    elif machine == "slider":
        p["stroke_period_s"] = vary(1.8, 0.3)
        p["travel_fraction"] = vary(0.38, 0.12)
        p["whine_hz"] = vary(450.0, 0.3)
        p["knock_hz"] = vary(900.0, 0.3)
        p["friction_center_hz"] = vary(2000.0, 0.3)
    elif machine == "valve":
        p["cycle_period_s"] = vary(1.1, 0.4)
        p["open_fraction"] = vary(0.4, 0.2)
        p["click_hz"] = vary(2500.0, 0.25)
        p["thump_hz"] = vary(220.0, 0.3)
        p["flow_center_hz"] = vary(1500.0, 0.3)
    else:  # pipe
        p["pipe_length_m"] = vary(2.8, 0.4)
        p["resonance_q"] = vary(20.0, 0.3)
        p["turbulence_center_hz"] = vary(1400.0, 0.3)
    return p


def generate(machine: str, seconds: float, sample_rate_hz: int = 16000, *, seed: int, instance: int = 0,
             anomaly: Optional[str] = None, severity: float = 0.5,
             snr_db: Optional[float] = 10.0) -> np.ndarray:
    """A SYNTHETIC clip of ``machine``: (n,) float32, peak below ``PEAK_LIMIT``.

    ``anomaly`` is None (normal) or one of ``ANOMALIES``, present for the whole clip
    at ``severity`` in [0, 1] (near 0: subtle; 1: obvious). ``snr_db`` is the
    machine-to-background power ratio in dB, or None for no background.
    """
    return generate_parts(machine, seconds, sample_rate_hz, seed=seed, instance=instance, anomaly=anomaly,
                          severity=severity, snr_db=snr_db).mix


def generate_parts(machine: str, seconds: float, sample_rate_hz: int = 16000, *, seed: int, instance: int = 0,
                   anomaly: Optional[str] = None, severity: float = 0.5,
                   snr_db: Optional[float] = 10.0) -> SyntheticParts:
    """Like :func:`generate` (SYNTHETIC) but returns the machine and background parts separately."""
    label = NORMAL if anomaly is None else anomaly
    return sequence_parts(machine, [(label, seconds, severity)], sample_rate_hz, seed=seed, instance=instance,
                          snr_db=snr_db)


def generate_sequence(machine: str, segments: Sequence[Segment] = ((NORMAL, 20.0), ("bearing", 10.0), (NORMAL, 20.0)),
                      sample_rate_hz: int = 16000, *, seed: int, instance: int = 0, severity: float = 0.5,
                      snr_db: Optional[float] = 10.0) -> np.ndarray:
    """A SYNTHETIC recording made of consecutive segments, for demos: (n,) float32.

    Each segment is ``(label, seconds)`` or ``(label, seconds, severity)``, where
    label is ``"normal"`` or one of ``ANOMALIES``. The machine keeps running with
    continuous phase; a fault fades in and out over ``FADE_SECONDS`` centred on
    the join.
    """
    return sequence_parts(machine, segments, sample_rate_hz, seed=seed, instance=instance, severity=severity,
                          snr_db=snr_db).mix


def sequence_parts(machine: str, segments: Sequence[Segment], sample_rate_hz: int = 16000, *, seed: int,
                   instance: int = 0, severity: float = 0.5, snr_db: Optional[float] = 10.0) -> SyntheticParts:
    """Like :func:`generate_sequence` (SYNTHETIC) but returns the machine and background parts separately."""
    _check_machine(machine)
    fs = int(sample_rate_hz)
    if fs < 4000:
        raise ValueError(f"sample_rate_hz={sample_rate_hz}: the synthetic generator needs at least 4000 Hz")
    parsed = _parse_segments(segments, severity)
    lengths = [int(round(sec * fs)) for _, sec, _ in parsed]
    n = int(sum(lengths))
    if n < 1:
        raise ValueError(f"segments {list(segments)!r} add up to no samples at {fs} Hz")
    boundaries = np.cumsum(lengths)[:-1]
    params = instance_parameters(machine, instance)
    rng = _rng(seed, machine, instance, _STREAM_MACHINE)
    level = 10.0 ** (rng.uniform(-1.5, 1.5) / 20.0)  # clip-to-clip level variation
    speed_offset = rng.uniform(-0.015, 0.015)  # operating point of this clip

    controls = _controls(parsed, boundaries, n, fs)
    speed = 1.0 + speed_offset + params["wander"] * _slow_noise(rng, n, fs, 0.15)
    if "blockage" in controls:
        block_p, block_s = controls["blockage"]
        speed = speed - block_p * (0.004 + 0.076 * block_s)  # a blocked machine labours and slows down
    scene = _Scene(n=n, fs=float(fs), params=params, rng=rng, speed=speed, blockage=controls.get("blockage"))
    sound = _SYNTHS[machine](scene)
    signal = _apply_anomalies(sound, scene, controls, seed, machine, instance)
    signal = signal - signal.mean()
    machine_part = signal * (MACHINE_RMS * level)

    if snr_db is None:
        background = np.zeros(n)
    else:
        background = _background(_rng(seed, machine, instance, _STREAM_BACKGROUND), n, float(fs),
                                 params["mains_hz"])
        machine_power = float(np.mean(machine_part ** 2))
        background *= math.sqrt(machine_power / (float(np.mean(background ** 2)) + _EPS)
                                / 10.0 ** (float(snr_db) / 10.0))
    peak = float(np.max(np.abs(machine_part + background)))
    limit = PEAK_LIMIT * 0.98
    if peak > limit:
        _LOGGER.debug("synthetic %s clip peaks at %.3f; scaled down to %.3f", machine, peak, limit)
        machine_part *= limit / peak
        background *= limit / peak
    return SyntheticParts(machine=machine_part, background=background, sample_rate_hz=fs)


def write_dataset(out_dir: Union[str, Path], machines: Iterable[str] = MACHINES, instances: Iterable[int] = (0,),
                  n_normal: int = 10, n_abnormal: int = 5, seconds: float = 10.0, seed: int = 0,
                  layout: str = "mimii", *, sample_rate_hz: int = 16000, snr_db: Optional[float] = 10.0,
                  anomalies: Optional[Sequence[str]] = None,
                  severity_range: tuple[float, float] = (0.3, 1.0)) -> list[Path]:
    """Write a SYNTHETIC dataset of mono 16-bit WAVs and return the written paths (sorted).

    ``layout="mimii"``: ``<out>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav``.
    ``layout="folders"``: ``<out>/<label>/<machine>_id_XX_NNNNNNNN.wav`` where label is
    ``normal`` or the fault type (for supervised classifiers).
    Abnormal clips cycle through ``anomalies`` (default: ``TYPICAL_ANOMALIES`` of the
    machine) with severities drawn from ``severity_range``. A ``SYNTHETIC.txt`` file
    at the root says what the data is.
    """
    from edge_monitor.wavio import write_wav

    if layout not in ("mimii", "folders"):
        raise ValueError(f"layout={layout!r}: expected 'mimii' or 'folders'")
    machines = tuple(machines)
    instances = tuple(int(i) for i in instances)
    for m in machines:
        _check_machine(m)
    if anomalies is not None:
        for a in anomalies:
            _check_anomaly(a)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lo, hi = severity_range
    for machine in machines:
        faults = tuple(anomalies) if anomalies else TYPICAL_ANOMALIES[machine]
        for instance in instances:
            clip_rng = np.random.default_rng([int(seed), _machine_code(machine), instance, 0xDA7A])
            for k in range(n_normal + n_abnormal):
                anomaly = None if k < n_normal else faults[(k - n_normal) % len(faults)]
                sev = float(clip_rng.uniform(lo, hi))
                clip_seed = int(seed) * 1_000_003 + k
                x = generate(machine, seconds, sample_rate_hz, seed=clip_seed, instance=instance, anomaly=anomaly,
                             severity=sev, snr_db=snr_db)
                if layout == "mimii":
                    folder = out / machine / f"id_{instance:02d}" / ("normal" if anomaly is None else "abnormal")
                    name = f"{k:08d}.wav"
                else:
                    folder = out / (anomaly or NORMAL)
                    name = f"{machine}_id_{instance:02d}_{k:08d}.wav"
                folder.mkdir(parents=True, exist_ok=True)
                write_wav(folder / name, x, sample_rate_hz)
                written.append(folder / name)
    (out / "SYNTHETIC.txt").write_text(
        "SYNTHETIC machine sounds generated by edge_monitor.training.synthetic.write_dataset\n"
        f"machines={list(machines)} instances={list(instances)} n_normal={n_normal} n_abnormal={n_abnormal} "
        f"seconds={seconds} seed={seed} layout={layout} sample_rate_hz={sample_rate_hz} snr_db={snr_db}\n"
        "These are not recordings of real machines.\n")
    _LOGGER.info("wrote %d synthetic clips to %s", len(written), out)
    return sorted(written)


# --------------------------------------------------------------------------------------------
# Validation and seeding


def _machine_code(machine: str) -> int:
    return MACHINES.index(machine) + 1


def _check_machine(machine: str) -> None:
    if machine not in MACHINES:
        raise ValueError(f"unknown synthetic machine {machine!r}; expected one of {', '.join(MACHINES)}")


def _check_anomaly(anomaly: str) -> None:
    if anomaly not in ANOMALIES:
        raise ValueError(f"unknown synthetic anomaly {anomaly!r}; expected one of {', '.join(ANOMALIES)}")


def _rng(seed: int, machine: str, instance: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, _machine_code(machine), int(instance), stream])


def _parse_segments(segments: Sequence[Segment], default_severity: float) -> list[tuple[str, float, float]]:
    parsed = []
    if len(segments) == 0:
        raise ValueError("segments is empty; expected at least one (label, seconds) pair")
    for i, seg in enumerate(segments):
        if len(seg) not in (2, 3):
            raise ValueError(f"segment {i} = {seg!r}: expected (label, seconds) or (label, seconds, severity)")
        label, seconds = seg[0], float(seg[1])
        sev = float(seg[2]) if len(seg) == 3 else float(default_severity)
        if label != NORMAL:
            _check_anomaly(label)
        if not seconds > 0.0:
            raise ValueError(f"segment {i} = {seg!r}: seconds must be > 0")
        if not 0.0 <= sev <= 1.0:
            raise ValueError(f"segment {i} = {seg!r}: severity must be in [0, 1]")
        parsed.append((label, seconds, sev))
    return parsed


def _controls(parsed: list[tuple[str, float, float]], boundaries: np.ndarray, n: int,
              fs: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per anomaly: (presence (n,) in [0, 1], severity (n,) in [0, 1]), faded at the joins."""
    fade_samples = max(2, int(round(FADE_SECONDS * fs)))
    out = {}
    for name in ANOMALIES:
        present = [1.0 if label == name else 0.0 for label, _, _ in parsed]
        if not any(present):
            continue
        sev_known = [s if label == name else None for label, _, s in parsed]
        sevs = _fill_nearest(sev_known)
        out[name] = (_faded_steps(present, boundaries, n, fade_samples),
                     _faded_steps(sevs, boundaries, n, fade_samples))
    return out


def _fill_nearest(values: list[Optional[float]]) -> list[float]:
    """Replace None by the previous known value (or the next one at the start)."""
    first = next(v for v in values if v is not None)
    out, last = [], first
    for v in values:
        last = last if v is None else v
        out.append(last)
    return out


def _faded_steps(values: list[float], boundaries: np.ndarray, n: int, fade_samples: int) -> np.ndarray:
    """Piecewise-constant (n,) curve with raised-cosine transitions centred on each boundary."""
    out = np.full(n, float(values[0]))
    half = fade_samples // 2
    for b, v0, v1 in zip(boundaries, values[:-1], values[1:]):
        if v1 == v0:
            continue
        lo, hi = max(0, int(b) - half), min(n, int(b) + half)
        i = np.arange(lo, hi) - (int(b) - half)
        out[lo:hi] += (v1 - v0) * (0.5 - 0.5 * np.cos(math.pi * (i + 0.5) / (2 * half)))
        out[hi:] += v1 - v0
    return out


# --------------------------------------------------------------------------------------------
# Signal helpers


def _db(db: np.ndarray | float) -> np.ndarray:
    return np.asarray(10.0 ** (np.asarray(db) / 20.0))


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale to unit RMS."""
    return x / (math.sqrt(float(np.mean(x * x))) + _EPS)


def _lowpass(f: np.ndarray, cutoff_hz: float, order: int = 2) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / cutoff_hz) ** (2 * order))


def _highpass(f: np.ndarray, cutoff_hz: float, order: int = 2) -> np.ndarray:
    r = (f / cutoff_hz) ** (2 * order)
    return np.sqrt(r / (1.0 + r))


def _peak(f: np.ndarray, center_hz: float, q: float) -> np.ndarray:
    ratio = np.maximum(f, 1e-3) / center_hz
    return 1.0 / np.sqrt(1.0 + (q * (ratio - 1.0 / ratio)) ** 2)


def _pink(f: np.ndarray, floor_hz: float = 20.0) -> np.ndarray:
    return 1.0 / np.sqrt(np.maximum(f, floor_hz) / floor_hz)


def _brown(f: np.ndarray, floor_hz: float = 10.0) -> np.ndarray:
    return floor_hz / np.maximum(f, floor_hz)


def _fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFT lengths with large prime factors are many times slower."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35 << max(0, (-(-n // p35) - 1).bit_length())
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


class _Spectrum:
    """White noise held in the frequency domain, to be shaped by several responses."""

    def __init__(self, rng: np.random.Generator, n: int, fs: float):
        self.n = n
        self.size = _fast_size(n)
        self.spec = np.fft.rfft(rng.standard_normal(self.size))
        self.f = np.fft.rfftfreq(self.size, 1.0 / fs)

    def shaped(self, response: np.ndarray) -> np.ndarray:
        """(n,) unit-RMS noise with magnitude response ``response`` (same length as ``self.f``)."""
        return _unit(np.fft.irfft(self.spec * response, self.size)[: self.n])


def _slow_noise(rng: np.random.Generator, n: int, fs: float, cutoff_hz: float) -> np.ndarray:
    """(n,) unit-RMS random wander below ``cutoff_hz``."""
    s = _Spectrum(rng, n, fs)
    return s.shaped(_lowpass(s.f, cutoff_hz, 4))


def _phase(rate_hz: np.ndarray | float, speed: np.ndarray, fs: float, start: float) -> np.ndarray:
    """Instantaneous phase (radians) of a rotation at ``rate_hz * speed``."""
    return start + _TWO_PI * np.cumsum(rate_hz * speed) / fs


def _harmonics(phase: np.ndarray, amps: Sequence[float], offsets: np.ndarray, top_hz: float,
               fs: float) -> np.ndarray:
    """Unit-RMS (nominal) sum of harmonics ``k * phase``; ``top_hz`` is the fundamental's highest rate."""
    out = np.zeros_like(phase)
    power = 0.0
    for k, a in enumerate(amps, start=1):
        if k * top_hz >= 0.45 * fs:
            break
        out += a * np.sin(k * phase + offsets[k - 1])
        power += a * a / 2.0
    return out / math.sqrt(power + _EPS)


def _crossings(cycles: np.ndarray, offset: float) -> np.ndarray:
    """Sample indices where ``cycles - offset`` crosses an integer."""
    return np.nonzero(np.diff(np.floor(cycles - offset)))[0] + 1


def _resonator(fs: float, freq_hz: float, decay_s: float) -> np.ndarray:
    """Impulse response of a struck resonance, peak about 1."""
    freq = min(freq_hz, 0.42 * fs)
    t = np.arange(int(decay_s * fs * 7) + 2) / fs
    return np.exp(-t / decay_s) * np.sin(_TWO_PI * freq * t)


def _sum_kernels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum two impulse responses of different lengths."""
    out = np.zeros(max(a.size, b.size))
    out[:a.size] += a
    out[:b.size] += b
    return out


def _train_rms(kernel: np.ndarray, rate_hz: float, fs: float) -> float:
    """Expected RMS of ``kernel`` repeated ``rate_hz`` times a second with unit amplitude."""
    return math.sqrt(rate_hz * float(np.sum(kernel * kernel)) / fs) + _EPS


def _impulses(n: int, positions: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(n,) sum of ``kernel`` placed at sample ``positions`` with ``amps`` (linear convolution)."""
    train = np.zeros(n)
    pos = np.asarray(positions, dtype=np.int64)
    keep = (pos >= 0) & (pos < n)
    np.add.at(train, pos[keep], np.asarray(amps, dtype=float)[keep])
    size = _fast_size(n + kernel.size)
    return np.fft.irfft(np.fft.rfft(train, size) * np.fft.rfft(kernel, size), size)[:n]


# --------------------------------------------------------------------------------------------
# Machines


@dataclasses.dataclass
class _Scene:
    """Everything a machine synthesiser needs for one clip."""

    n: int
    fs: float
    params: dict[str, Any]
    rng: np.random.Generator
    speed: np.ndarray  # (n,) relative running speed, 1 = nominal
    blockage: Optional[tuple[np.ndarray, np.ndarray]]  # (presence, severity) or None

    def flow(self, spectrum: _Spectrum, response: np.ndarray) -> np.ndarray:
        """Unit-RMS flow noise; a blockage tilts it towards low frequencies and reduces it."""
        normal = spectrum.shaped(response)
        if self.blockage is None:
            return normal
        presence, sev = self.blockage
        blocked = spectrum.shaped(response * _lowpass(spectrum.f, self.params["blocked_cutoff_hz"], 2))
        b = presence * (0.05 + 0.8 * sev)
        return ((1.0 - b) * normal + b * blocked) * (1.0 - presence * (0.03 + 0.52 * sev))

    def mix(self, parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
        """Like :func:`_mix`, with each part's level varied by up to ±1.5 dB from clip to clip."""
        jitter = _db(self.rng.uniform(-1.5, 1.5, len(parts)))
        out = np.zeros(self.n)
        for (amp, x), j in zip(parts, jitter):
            out += amp * j * x
        return out / math.sqrt(sum(a * a for a, _ in parts))


@dataclasses.dataclass
class _Sound:
    """A machine's normal sound (nominal unit RMS) and what faults attach to."""

    signal: np.ndarray
    shaft_phase: np.ndarray  # (n,) radians of the rotating shaft
    activity: np.ndarray  # (n,) 0..1, how much the moving parts are moving (sliders stop between strokes)


def _mix(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Sum unit-RMS parts with amplitudes, scaled so the nominal RMS is 1."""
    out = np.zeros_like(parts[0][1])
    for amp, x in parts:
        out += amp * x
    return out / math.sqrt(sum(a * a for a, _ in parts))


def _fan(sc: _Scene) -> _Sound:
    p, rng, n, fs = sc.params, sc.rng, sc.n, sc.fs
    shaft = _phase(p["shaft_hz"], sc.speed, fs, rng.uniform(0, _TWO_PI))
    top = p["shaft_hz"] * float(sc.speed.max())
    blade = p["blades"] * shaft
    tonal = _harmonics(blade, p["harmonic_amps"], rng.uniform(0, _TWO_PI, 8), p["blades"] * top, fs)
    spectrum = _Spectrum(rng, n, fs)
    air = sc.flow(spectrum, _pink(spectrum.f, 60.0) * (0.3 + _peak(spectrum.f, p["airflow_center_hz"], 0.7))
                  * _lowpass(spectrum.f, 6000.0, 2) * _highpass(spectrum.f, 40.0, 2))
    air = air * (1.0 + 0.15 * np.sin(blade + rng.uniform(0, _TWO_PI)))  # turbulence beats with the blades
    hum = _harmonics(_TWO_PI * 2 * p["mains_hz"] * np.arange(n) / fs, (1.0, 0.4), rng.uniform(0, _TWO_PI, 2),
                     2 * p["mains_hz"], fs)
    residual = math.sqrt(2.0) * np.sin(shaft + rng.uniform(0, _TWO_PI))  # every real rotor is a little unbalanced
    signal = sc.mix([(0.55, tonal), (0.8, air), (0.1, hum), (0.05, residual)])
    return _Sound(signal, shaft, np.ones(n))


def _pump(sc: _Scene) -> _Sound:
    p, rng, n, fs = sc.params, sc.rng, sc.n, sc.fs
    shaft = _phase(p["shaft_hz"], sc.speed, fs, rng.uniform(0, _TWO_PI))
    top = p["shaft_hz"] * float(sc.speed.max())
    vane = p["vanes"] * shaft
    rotor = _harmonics(vane, (1.0, 0.5, 0.3, 0.2), rng.uniform(0, _TWO_PI, 4), p["vanes"] * top, fs)
    hum_phase = _TWO_PI * 2 * p["mains_hz"] * np.arange(n) / fs
    hum = _harmonics(hum_phase, p["hum_amps"], rng.uniform(0, _TWO_PI, 4), 2 * p["mains_hz"], fs)
    pulse = (0.5 + 0.5 * np.cos(vane)) ** p["pulse_sharpness"]  # a pressure pulse per vane passage
    pulse_sound = _unit(pulse - pulse.mean())
    spectrum = _Spectrum(rng, n, fs)
    flow = sc.flow(spectrum, _pink(spectrum.f, 50.0) * _lowpass(spectrum.f, 3000.0, 2)
                   * (1.0 + 2.0 * _peak(spectrum.f, p["flow_resonance_hz"], 3.0)) * _highpass(spectrum.f, 30.0, 2))
    flow = flow * (0.6 + 0.8 * pulse / (pulse.mean() + _EPS) * 0.5)
    signal = sc.mix([(0.4, rotor), (0.35, hum), (0.25, pulse_sound), (0.7, flow)])
    return _Sound(signal, shaft, np.ones(n))


def _trapezoid(u: np.ndarray, ramp: float = 0.15) -> np.ndarray:
    """Velocity profile over a travel, u in [0, 1): accelerate, cruise, brake."""
    return np.clip(np.minimum(u, 1.0 - u) / ramp, 0.0, 1.0)


def _slider(sc: _Scene) -> _Sound:
    p, rng, n, fs = sc.params, sc.rng, sc.n, sc.fs
    cycles = np.cumsum(sc.speed / p["stroke_period_s"]) / fs + rng.uniform(0, 1)
    frac = np.mod(cycles, 1.0)
    tf = p["travel_fraction"]
    out_leg = frac < tf
    back_leg = (frac >= 0.5) & (frac < 0.5 + tf)
    u = np.where(out_leg, frac / tf, np.where(back_leg, (frac - 0.5) / tf, 0.0))
    velocity = np.where(out_leg | back_leg, _trapezoid(u), 0.0)
    shaft = _phase(p["shaft_hz"], sc.speed * velocity, fs, rng.uniform(0, _TWO_PI))
    whine_phase = _phase(p["whine_hz"], sc.speed * velocity, fs, rng.uniform(0, _TWO_PI))
    whine = velocity * _harmonics(whine_phase, (1.0, 0.4, 0.2), rng.uniform(0, _TWO_PI, 3),
                                  p["whine_hz"] * float(sc.speed.max()), fs)
    spectrum = _Spectrum(rng, n, fs)
    rub = sc.flow(spectrum, _highpass(spectrum.f, 700.0, 2) * _lowpass(spectrum.f, 4000.0, 3)
                  * (0.4 + _peak(spectrum.f, p["friction_center_hz"], 1.5)))
    wobble = 1.0 + 0.3 * _slow_noise(rng, n, fs, 8.0)
    rub = rub * (velocity ** 0.7 + 0.03) * np.clip(wobble, 0.2, None)
    stops = np.sort(np.concatenate([_crossings(cycles, tf), _crossings(cycles, 0.5 + tf)]))
    amps = 1.0 + 0.15 * rng.standard_normal(stops.size)
    kernel = _sum_kernels(_resonator(fs, p["knock_hz"], 0.015), 0.5 * _resonator(fs, 2.7 * p["knock_hz"], 0.004))
    knocks = _impulses(n, stops, amps, kernel) / _train_rms(kernel, 2.0 / p["stroke_period_s"], fs)
    signal = sc.mix([(0.35, whine), (0.8, rub), (0.3, knocks)])
    return _Sound(signal, shaft, np.clip(velocity * 3.0, 0.0, 1.0))


def _valve(sc: _Scene) -> _Sound:
    p, rng, n, fs = sc.params, sc.rng, sc.n, sc.fs
    period = p["cycle_period_s"]
    cycles = np.cumsum(sc.speed / period) / fs + rng.uniform(0, 1)
    frac = np.mod(cycles, 1.0)
    of = p["open_fraction"]
    opens, closes = _crossings(cycles, 0.0), _crossings(cycles, of)
    click = _sum_kernels(_resonator(fs, p["click_hz"], 0.0025), 0.6 * _resonator(fs, p["thump_hz"], 0.012))
    close_click = _sum_kernels(_resonator(fs, 0.9 * p["click_hz"], 0.003),
                               0.8 * _resonator(fs, p["thump_hz"], 0.012))
    clicks = (_impulses(n, opens, 1.0 + 0.1 * rng.standard_normal(opens.size), click)
              + _impulses(n, closes, 1.3 + 0.1 * rng.standard_normal(closes.size), close_click))
    since_open_s = frac * period
    since_close_s = (frac - of) * period
    envelope = np.where(frac < of, (1.0 - np.exp(-since_open_s / 0.02)) * (0.7 + 0.3 * np.exp(-since_open_s / 0.15)),
                        (1.0 - np.exp(-of * period / 0.02)) * 0.7 * np.exp(-np.maximum(since_close_s, 0) / 0.03))
    spectrum = _Spectrum(rng, n, fs)
    burst = sc.flow(spectrum, _highpass(spectrum.f, 400.0, 2) * _lowpass(spectrum.f, 4000.0, 2)
                    * (0.5 + _peak(spectrum.f, p["flow_center_hz"], 1.2))) * envelope
    energised = (frac < of).astype(float)
    hum = energised * _harmonics(_TWO_PI * 2 * p["mains_hz"] * np.arange(n) / fs, (1.0, 0.3),
                                 rng.uniform(0, _TWO_PI, 2), 2 * p["mains_hz"], fs)
    shaft = _phase(p["shaft_hz"], sc.speed, fs, rng.uniform(0, _TWO_PI))
    clicks = clicks / _train_rms(_sum_kernels(click, 1.3 * close_click) / math.sqrt(2.0), 2.0 / period, fs)
    signal = sc.mix([(0.3, clicks), (0.7, burst), (0.08, hum)])
    return _Sound(signal, shaft, np.ones(n))


def _pipe(sc: _Scene) -> _Sound:
    p, rng, n, fs = sc.params, sc.rng, sc.n, sc.fs
    spectrum = _Spectrum(rng, n, fs)
    f = spectrum.f
    first_mode_hz = 343.0 / (2.0 * p["pipe_length_m"])
    modes = np.zeros_like(f)
    k = 1
    while k * first_mode_hz < min(2500.0, 0.45 * fs):
        modes += _peak(f, k * first_mode_hz, p["resonance_q"]) / math.sqrt(k)
        k += 1
    flow = sc.flow(spectrum, _pink(f, 30.0) * (0.35 + modes) * _highpass(f, 20.0, 2) * _lowpass(f, 5000.0, 2))
    turb_spec = _Spectrum(rng, n, fs)
    turbulence = sc.flow(turb_spec, _peak(f, p["turbulence_center_hz"], 0.8) * _lowpass(f, 6000.0, 2))
    swell = 1.0 + 0.06 * _slow_noise(rng, n, fs, 0.3)
    shaft = _phase(p["shaft_hz"], sc.speed, fs, rng.uniform(0, _TWO_PI))
    upstream = _harmonics(shaft, (1.0, 0.6, 0.3), rng.uniform(0, _TWO_PI, 3), p["shaft_hz"] * 1.1, fs)
    signal = sc.mix([(0.9, flow * swell), (0.45, turbulence * swell), (0.08, upstream)])
    return _Sound(signal, shaft, np.ones(n))


_SYNTHS: dict[str, Callable[[_Scene], _Sound]] = {
    "fan": _fan, "pump": _pump, "slider": _slider, "valve": _valve, "pipe": _pipe}


# --------------------------------------------------------------------------------------------
# Faults


def _apply_anomalies(sound: _Sound, sc: _Scene, controls: dict[str, tuple[np.ndarray, np.ndarray]],
                     seed: int, machine: str, instance: int) -> np.ndarray:
    """Add the faults to a machine sound (blockage is already in the speed and flow)."""
    x = sound.signal
    for index, name in enumerate(ANOMALIES):
        if name not in controls or name == "blockage":
            continue
        presence, sev = controls[name]
        rng = _rng(seed, machine, instance, _STREAM_ANOMALY + index)
        if name == "imbalance":
            depth = presence * (0.03 + 0.42 * sev)  # shaft-rate amplitude modulation
            x = x * (1.0 + depth * np.sin(sound.shaft_phase + rng.uniform(0, _TWO_PI)))
            # the housing radiates the shaft's vibration: 0.5x, 1x and its harmonics, a low rumble
            wobble = 0.7 * np.sin(0.5 * sound.shaft_phase + rng.uniform(0, _TWO_PI))
            for k in range(1, 7):
                wobble = wobble + np.sin(k * sound.shaft_phase + rng.uniform(0, _TWO_PI)) / k
            x = x + presence * _db(-36.0 + 30.0 * sev) * _unit(wobble)
        elif name == "bearing":
            x = x + presence * _db(-30.0 + 30.0 * sev) * sound.activity * _bearing(sound, sc, rng)
        elif name == "leak":
            x = x + presence * _db(-30.0 + 30.0 * sev) * _leak(sc, rng)
        elif name == "chatter":
            x = x + presence * _db(-30.0 + 30.0 * sev) * _chatter(sc, rng)
    return x


def _bearing(sound: _Sound, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS train of decaying resonant impulses at the bearing fault rate, following the shaft speed."""
    p, fs = sc.params, sc.fs
    cycles = sound.shaft_phase * (p["bearing_ratio"] / _TWO_PI)
    hits = _crossings(cycles, rng.uniform(0, 1)).astype(float)
    hits = hits + rng.normal(0.0, 0.0003 * fs, hits.size)  # rollers slip a little
    at = np.clip(hits.astype(np.int64), 0, sc.n - 1)
    load = 1.0 + 0.5 * np.cos(sound.shaft_phase[at])  # the defect passes through the load zone once per turn
    amps = load * rng.lognormal(0.0, 0.25, hits.size)
    kernel = _resonator(fs, p["bearing_resonance_hz"], p["bearing_decay_s"])
    return _impulses(sc.n, np.round(hits), amps, kernel) / _train_rms(kernel, p["bearing_fault_hz"] * 1.2, fs)


def _leak(sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS high-frequency hiss with a slow flutter."""
    spectrum = _Spectrum(rng, sc.n, sc.fs)
    f = spectrum.f
    corner = min(4000.0, 0.28 * sc.fs)
    center = min(sc.params["leak_center_hz"], 0.38 * sc.fs)
    hiss = spectrum.shaped(_highpass(f, corner, 4) * (0.5 + _peak(f, center, 1.5)))
    return _unit(hiss * (1.0 + 0.15 * _slow_noise(rng, sc.n, sc.fs, 3.0)))


def _chatter(sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS bursts of rapid, irregular clicks."""
    p, n, fs = sc.params, sc.n, sc.fs
    rate = p["chatter_rate_hz"]
    gaps = rng.exponential(fs / rate, int(n / fs * rate * 1.5) + 8)
    hits = np.cumsum(gaps)
    hits = hits[hits < n]
    bursts = _slow_noise(rng, n, fs, 1.5) > -0.3  # chatter comes and goes
    hits = hits[bursts[hits.astype(np.int64)]]
    amps = rng.lognormal(0.0, 0.4, hits.size)
    kernel = _sum_kernels(_resonator(fs, p["chatter_resonance_hz"], 0.0015), 0.4 * _resonator(fs, 350.0, 0.006))
    return _impulses(n, np.round(hits), amps, kernel) / _train_rms(kernel, rate * 1.2, fs)


# --------------------------------------------------------------------------------------------
# Background


def _background(rng: np.random.Generator, n: int, fs: float, mains_hz: float) -> np.ndarray:
    """Unit-RMS SYNTHETIC factory background: pink and brown noise, hum, distant machines, clatter."""
    spectrum = _Spectrum(rng, n, fs)
    f = spectrum.f
    pink = spectrum.shaped(_pink(f, 20.0) * _highpass(f, 15.0, 2) * _lowpass(f, 8000.0, 1))
    brown = _Spectrum(rng, n, fs).shaped(_brown(f, 15.0) * _highpass(f, 12.0, 2))
    t = np.arange(n) / fs
    hum_amps = (1.0,) + tuple(rng.uniform(0.1, 0.7, 5))
    hum = _harmonics(_TWO_PI * mains_hz * t, hum_amps, rng.uniform(0, _TWO_PI, 6), mains_hz, fs)
    distant_hz = rng.uniform(15.0, 45.0)
    distant_phase = _phase(distant_hz, 1.0 + 0.004 * _slow_noise(rng, n, fs, 0.2), fs, rng.uniform(0, _TWO_PI))
    distant_amps = tuple(float(rng.uniform(0.3, 1.0) / k) for k in range(1, 13))
    distant = _harmonics(distant_phase, distant_amps, rng.uniform(0, _TWO_PI, 12), distant_hz * 1.02, fs)
    distant = distant * (1.0 + 0.2 * _slow_noise(rng, n, fs, 0.5))
    clatter = np.zeros(n)
    n_events = int(rng.poisson(0.2 * n / fs))
    for _ in range(n_events):
        start = int(rng.uniform(0, n))
        kernel = _sum_kernels(_resonator(fs, rng.uniform(700.0, 3500.0), rng.uniform(0.004, 0.025)),
                              0.5 * _resonator(fs, rng.uniform(200.0, 700.0), 0.01))
        for offset_s in np.cumsum(rng.uniform(0.02, 0.12, int(rng.integers(2, 7)))):
            at = start + int(offset_s * fs)
            if at >= n:
                break
            seg = kernel[: n - at]
            clatter[at:at + seg.size] += rng.lognormal(1.0, 0.5) * seg
    noise = _mix([(0.6, pink), (0.5, brown), (0.3, hum), (0.3, distant)])
    return _unit(noise + 1.5 * clatter)
