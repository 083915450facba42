"""Benchmark the real daemon (``python -m edge_monitor run``) on live 16 kHz audio.

For 1 machine (a mono device) and 8 machines (one 8-channel device, one channel
each, 8 configs in one process) it starts a private PulseAudio null sink fed
continuously with the bundled demo audio (SYNTHETIC fan sound with a fault
section, so alerts happen), a private mosquitto, and the daemon. It measures:

- ``cpu_percent``: CPU share of one core (utime + stime from ``/proc/<pid>/stat``)
  over a steady-state window after a warm-up;
- ``rss_mb`` / ``hwm_mb``: ``VmRSS`` at the end of the window and ``VmHWM`` (peak);
- ``start_to_first_score_s``: from launching the process to its first score
  (the daemon logs ``<machine>: first score`` once per machine), and
  ``start_to_all_scored_s`` until every machine has scored;
- a reference measured in the same window: a bare Python process that only opens
  the same input stream and discards the audio (the floor cost of capture), and
  the ratio daemon / reference.

Each scenario is repeated ``--repeats`` times (fresh daemon each time) and the
medians are compared with DESIGN.md's targets. It prints a table, or one JSON
object with ``--json``. ``--quick`` uses short windows (about a minute in all).

    python -m benchmarks.daemon_live            # 3 runs, 10 s warm-up, 60 s window
    python -m benchmarks.daemon_live --quick --json

Needs: pulseaudio, pulseaudio-utils, libasound2-plugins, libportaudio2, mosquitto.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from benchmarks.mqtt_rig import Mosquitto, mosquitto_available
from benchmarks.procstat import CpuMeter, memory_mb
from benchmarks.pulse_rig import PulseServer, pulse_available, write_wav

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "edge_monitor" / "demo"
DEMO_WAV = DEMO_DIR / "demo-fan.wav"
DEMO_MODEL = DEMO_DIR / "demo-fan.tflite"
SAMPLE_RATE_HZ = 16000
BLOCK_FRAMES = 512                   # the microphone source's default block: 32 ms at 16 kHz
CHANNEL_OFFSET_SECONDS = 5.0         # each channel of the feed is the demo shifted by this much more
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0
SINK_SETTLE_SECONDS = 3.0            # the null sink adopts the clock player's latency after its first block

# (key in the scenario medians, machines, operator, limit, text) from DESIGN.md "Live daemon at 16 kHz".
TARGETS = (
    ("cpu_percent", 1, "<=", 1.0, "1 machine: CPU <= 1 % of one core"),
    ("hwm_mb", 1, "<=", 80.0, "1 machine: peak RSS <= 80 MB"),
    ("start_to_first_score_s", 1, "<=", 1.0, "1 machine: start to first score <= 1 s"),
    ("cpu_percent", 8, "<=", 5.0, "8 machines: CPU together <= 5 % of one core"),
)

# The reference: open the same input stream, discard every block, wait for SIGTERM.
_REFERENCE_SCRIPT = """
import signal, sys, threading
import sounddevice as sd
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
def discard(indata, frames, time_info, status):
    pass
try:
    sd.query_devices("default", "input")
    device = "default"
except ValueError:
    device = None
with sd.InputStream(device=device, channels=int(sys.argv[1]), samplerate=int(sys.argv[2]), dtype="float32",
                    blocksize=int(sys.argv[3]), latency="high", callback=discard):
    print("capturing", flush=True)
    while not done.wait(1.0):
        pass
"""

_LOG_FIRST_SCORE = re.compile(r"edge_monitor\.daemon: (\S+): first score")
_LOG_READY = re.compile(r"edge_monitor\.daemon: monitoring ")
_LOG_CAPTURE = re.compile(r"capturing \d+ channel\(s\)")
_LOG_MQTT_CONNECTED = re.compile(r"MQTT: connected to")
_BROKER_CLIENT = re.compile(r"New client connected from \S+ as (\S+)")
_LOG_ALERT_START = re.compile(r": alert start")


# ------------------------------------------------------------------ audio feed

def build_feed_wav(path: Path, channels: int) -> Path:
    """The demo WAV (40 s) with ``channels`` channels, channel c shifted by c x 5 s so faults don't coincide."""
    with wave.open(str(DEMO_WAV), "rb") as wav:
        demo = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        rate_hz = wav.getframerate()
    shift = int(CHANNEL_OFFSET_SECONDS * rate_hz)
    out = np.stack([np.roll(demo, -c * shift) for c in range(channels)], axis=1)
    return write_wav(path, out, rate_hz)


class Feeder:
    """Plays a WAV into the null sink over and over (``paplay`` restarted as it ends) until ``stop()``."""

    def __init__(self, pulse: PulseServer, wav: Path) -> None:
        """Prepare; ``start()`` begins playing."""
        self._pulse = pulse
        self._wav = wav
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._player: Optional[subprocess.Popen] = None
        self.plays = 0

    def start(self) -> None:
        """Start the loop thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._player = self._pulse.play_wav_async(self._wav)
            self.plays += 1
            while self._player.poll() is None and not self._stop.wait(0.2):
                pass

    def stop(self) -> None:
        """Stop the loop and the current ``paplay``."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._player is not None and self._player.poll() is None:
            self._player.terminate()
            self._player.wait(timeout=10)


# ---------------------------------------------------------------- the daemon

def write_configs(directory: Path, machines: int, broker: Optional[Mosquitto]) -> list[Path]:
    """One production-like config per machine (machine ``bench<i>`` on channel i of the default device)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(machines):
        machine_id = f"bench{index}"
        data: dict[str, Any] = {
            "machine": {"id": machine_id, "site": "bench", "type": "fan"},
            "model": {"path": str(DEMO_MODEL)},
            "source": {"type": "microphone", "device": "default", "sample_rate": SAMPLE_RATE_HZ,
                       "channels": [index]},
            "detection": {"trigger_k": 3, "trigger_n": 5, "clear_windows": 4, "cooldown_seconds": 5,
                          "window_hop_seconds": 0.5},
            "clips": {"enabled": True, "dir": str(directory / "clips")},
            "state_dir": str(directory / "state"),
        }
        if broker is not None:
            data["mqtt"] = {"enabled": True, "host": broker.host, "port": broker.port}
        path = directory / f"{machine_id}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


class LogWatcher:
    """Reads a child's output lines on a thread and remembers when each arrived (monotonic seconds)."""

    def __init__(self, stream: Any) -> None:
        """Start reading ``stream`` (text mode) until it closes."""
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="log-watcher", daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def matches(self, pattern: re.Pattern) -> list[tuple[float, re.Match]]:
        """Every (arrival time, match) of ``pattern`` so far."""
        with self._lock:
            lines = list(self.lines)
        return [(t, m) for t, line in lines if (m := pattern.search(line))]

    def first(self, pattern: re.Pattern) -> Optional[float]:
        """Arrival time of the first line matching ``pattern``, or None."""
        found = self.matches(pattern)
        return found[0][0] if found else None

    def text(self) -> str:
        """Everything read so far."""
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the stream to close."""
        self._thread.join(timeout=timeout_s)


def _child_env(pulse: PulseServer) -> dict:
    env = dict(os.environ)
    env.update(pulse.env)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM and wait; SIGKILL if it does not stop. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def _wait_for(predicate: Any, timeout_s: float, what: str, proc: subprocess.Popen, log: LogWatcher) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} while waiting for {what}:\n"
                               f"{log.text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}:\n{log.text()[-3000:]}")
        time.sleep(0.01)


def broker_clients(broker: Optional[Mosquitto], since: int) -> set[str]:
    """Client ids the broker accepted after offset ``since`` of its log (the broker is the authority on
    who connected; the daemon's own "connected" lines are counted beside it)."""
    if broker is None:
        return set()
    return {m.group(1) for m in _BROKER_CLIENT.finditer(broker.log_text()[since:])}


def start_reference(pulse: PulseServer, channels: int) -> tuple[subprocess.Popen, LogWatcher]:
    """The bare capture process, once its stream runs."""
    proc = subprocess.Popen([sys.executable, "-c", _REFERENCE_SCRIPT, str(channels), str(SAMPLE_RATE_HZ),
                             str(BLOCK_FRAMES)], env=_child_env(pulse), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    log = LogWatcher(proc.stdout)
    _wait_for(lambda: log.first(re.compile("^capturing")) is not None, START_TIMEOUT_SECONDS,
              "the reference stream to start", proc, log)
    return proc, log


def run_once(pulse: PulseServer, configs: list[Path], warmup_s: float, window_s: float,
             broker: Optional[Mosquitto] = None) -> dict[str, Any]:
    """Start the daemon, time its start-up, meter it and the reference over one window, stop both.

    With a broker, the window starts only once every machine has connected to it (the daemon in its
    steady state, publishing); if one does not, the error shows the daemon's and the broker's logs."""
    machines = len(configs)
    since = len(broker.log_text()) if broker is not None else 0
    args = [sys.executable, "-m", "edge_monitor", "run"]
    for config in configs:
        args += ["--config", str(config)]
    launched = time.monotonic()
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=_child_env(pulse), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    log = LogWatcher(proc.stderr)
    reference: Optional[subprocess.Popen] = None
    try:
        _wait_for(lambda: len({m.group(1) for _, m in log.matches(_LOG_FIRST_SCORE)}) >= machines,
                  START_TIMEOUT_SECONDS, f"a first score from all {machines} machine(s)", proc, log)
        scores = log.matches(_LOG_FIRST_SCORE)
        ready, capture = log.first(_LOG_READY), log.first(_LOG_CAPTURE)
        if broker is not None:
            try:
                _wait_for(lambda: len(broker_clients(broker, since)) >= machines, START_TIMEOUT_SECONDS,
                          f"all {machines} machine(s) to connect to the broker", proc, log)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\nthe broker accepted {sorted(broker_clients(broker, since))}; the daemon "
                                   f"logged {len(log.matches(_LOG_MQTT_CONNECTED))} 'MQTT: connected' line(s)\n"
                                   f"broker (port {broker.port}, running: {broker.running}):\n"
                                   f"{broker.log_text()[-1500:]}") from None
        reference, reference_log = start_reference(pulse, machines)
        time.sleep(warmup_s)
        meters = {"daemon": CpuMeter(proc.pid), "reference": CpuMeter(reference.pid)}
        if pulse.server_pid is not None:
            meters["pulseaudio"] = CpuMeter(pulse.server_pid)
        load_start = os.getloadavg()[0]
        for meter in meters.values():
            meter.start()
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            if proc.poll() is not None or reference.poll() is not None:
                raise RuntimeError(f"a measured process exited during the window:\n{log.text()[-3000:]}\n"
                                   f"{reference_log.text()[-1000:]}")
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        cpu = {name: meter.stop() for name, meter in meters.items()}
        load_end = os.getloadavg()[0]
        memory = memory_mb(proc.pid)
    finally:
        exit_code = _stop(proc)
        if reference is not None:
            _stop(reference)
        log.join()
    return {
        "machines": machines,
        "cpu_percent": cpu["daemon"],
        "reference_cpu_percent": cpu["reference"],
        "cpu_ratio": cpu["daemon"] / cpu["reference"] if cpu["reference"] > 0 else None,
        "pulseaudio_cpu_percent": cpu.get("pulseaudio"),
        "rss_mb": memory["rss_mb"],
        "hwm_mb": memory["hwm_mb"],
        "start_to_ready_s": None if ready is None else ready - launched,
        "start_to_capture_s": None if capture is None else capture - launched,
        "start_to_first_score_s": scores[0][0] - launched,
        "start_to_all_scored_s": max(t for t, _ in scores) - launched,
        "window_s": window_s,
        "load_1m": (load_start + load_end) / 2,
        "mqtt_connections": len(broker_clients(broker, since)),
        "mqtt_connections_logged": len(log.matches(_LOG_MQTT_CONNECTED)),
        "alerts_logged": len(log.matches(_LOG_ALERT_START)),
        "exit_code": exit_code,
    }


# --------------------------------------------------------------- scenarios

def _median(runs: list[dict], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def run_scenario(workdir: Path, machines: int, mqtt: bool, repeats: int, warmup_s: float, window_s: float,
                 sink_latency_ms: Optional[float], progress: Any) -> dict[str, Any]:
    """``repeats`` runs of ``machines`` machines on one ``machines``-channel null sink; runs and medians."""
    workdir.mkdir(parents=True)
    pulse = PulseServer(workdir / "pulse", rate_hz=SAMPLE_RATE_HZ, channels=machines,
                        clock_latency_ms=sink_latency_ms)
    broker = Mosquitto(workdir / "broker", persistence=False) if mqtt else None
    feeder: Optional[Feeder] = None
    runs = []
    try:
        pulse.start()
        if broker is not None:
            broker.start()
        feeder = Feeder(pulse, build_feed_wav(workdir / f"feed-{machines}ch.wav", machines))
        feeder.start()
        time.sleep(SINK_SETTLE_SECONDS)
        for repeat in range(repeats):
            progress(f"{machines} machine(s), MQTT {'on' if mqtt else 'off'}: run {repeat + 1} of {repeats}")
            configs = write_configs(workdir / f"run{repeat}", machines, broker)
            runs.append(run_once(pulse, configs, warmup_s, window_s, broker))
    finally:
        if feeder is not None:
            feeder.stop()
        if broker is not None:
            broker.stop()
        pulse.stop()
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and k not in ("machines", "exit_code")]
    return {"machines": machines, "mqtt": mqtt, "runs": runs, "median": {k: _median(runs, k) for k in keys}}


def evaluate_targets(scenarios: list[dict]) -> list[dict[str, Any]]:
    """PASS/MISS per DESIGN.md target, from the medians of the MQTT-on scenario (else MQTT-off)."""
    out = []
    for key, machines, op, limit, text in TARGETS:
        candidates = [s for s in scenarios if s["machines"] == machines]
        candidates.sort(key=lambda s: not s["mqtt"])
        if not candidates:
            continue
        value = candidates[0]["median"].get(key)
        passed = value is not None and (value <= limit if op == "<=" else value >= limit)
        out.append({"target": text, "key": key, "machines": machines, "mqtt": candidates[0]["mqtt"],
                    "value": value, "limit": limit, "pass": passed})
    return out


def machine_info() -> dict[str, Any]:
    """CPU model, cores and Python of this machine."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------ output

_COLUMNS = (
    ("machines", "machines", "{:d}"),
    ("mqtt", "MQTT", "{}"),
    ("cpu_percent", "CPU %", "{:.2f}"),
    ("reference_cpu_percent", "ref CPU %", "{:.2f}"),
    ("cpu_ratio", "ratio", "{:.1f}x"),
    ("pulseaudio_cpu_percent", "pulse %", "{:.2f}"),
    ("rss_mb", "RSS MB", "{:.1f}"),
    ("hwm_mb", "peak MB", "{:.1f}"),
    ("start_to_ready_s", "ready s", "{:.2f}"),
    ("start_to_capture_s", "capture s", "{:.2f}"),
    ("start_to_first_score_s", "1st score s", "{:.2f}"),
    ("start_to_all_scored_s", "all scored s", "{:.2f}"),
    ("load_1m", "load 1m", "{:.2f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if fmt == "{:d}":
        return fmt.format(int(value))
    return fmt.format(value)


def format_report(result: dict[str, Any]) -> str:
    """The human-readable table and the PASS/MISS lines."""
    s = result["settings"]
    lines = [f"Live daemon at {SAMPLE_RATE_HZ} Hz, demo model, medians of {s['repeats']} run(s); "
             f"CPU over {s['window_s']:g} s after a {s['warmup_s']:g} s warm-up",
             f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"Python {result['machine']['python']}"]
    rows = [[title for _, title, _ in _COLUMNS]]
    for scenario in result["scenarios"]:
        values = {**scenario["median"], "machines": scenario["machines"], "mqtt": scenario["mqtt"]}
        rows.append([_cell(values.get(key), fmt) for key, _, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append("ref = a bare Python process that only opens the same input stream and discards the audio; "
                 "ratio = daemon / ref; pulse = the PulseAudio server")
    lines.append("Targets (DESIGN.md):")
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {value}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def _notes(scenarios: list[dict], window_seconds_of_model: float) -> list[str]:
    notes = [f"a live first score needs one model window of audio ({window_seconds_of_model:.3f} s) after "
             "capture starts, so start to first score is at least start to capture plus that"]
    for s in scenarios:
        bad = [r["exit_code"] for r in s["runs"] if r["exit_code"] != 0]
        if bad:
            notes.append(f"{s['machines']} machine(s): the daemon exited with {bad} when stopped")
        if s["mqtt"] and any(r["mqtt_connections"] < s["machines"] for r in s["runs"]):
            notes.append(f"{s['machines']} machine(s): not every machine connected to the broker")
    return notes


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns 0, or 2 when the needed tools are missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", default="1,8", help="comma-separated machine counts (1..8; default 1,8)")
    parser.add_argument("--mqtt", choices=("on", "off", "both"), default="on",
                        help="publish to a private mosquitto as in production (default on)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario; medians are reported")
    parser.add_argument("--warmup-seconds", type=float, default=10.0, help="after the first scores")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="CPU measurement window")
    parser.add_argument("--sink-latency-ms", type=float, default=30.0,
                        help="latency the null sink runs at, like a sound card's period (0: PulseAudio's "
                             "null-sink default of about 2 s, which delays a new stream's first audio)")
    parser.add_argument("--quick", action="store_true", help="1 run, 3 s warm-up, 10 s window (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup_seconds, args.window_seconds = 1, 3.0, 10.0
    counts = [int(c) for c in args.machines.split(",") if c.strip()]
    if any(c not in (1, 2, 4, 6, 8) for c in counts):
        parser.error("--machines: each count must be 1, 2, 4, 6 or 8 (a PulseAudio channel layout)")
    if not pulse_available() or (args.mqtt != "off" and not mosquitto_available()):
        print("daemon_live: needs pulseaudio, pulseaudio-utils and mosquitto", file=sys.stderr)
        return 2
    mqtt_modes = {"on": [True], "off": [False], "both": [True, False]}[args.mqtt]

    def progress(text: str) -> None:
        if not args.json:
            print(f"... {text}", file=sys.stderr, flush=True)

    scenarios = []
    with tempfile.TemporaryDirectory(prefix="edge-monitor-live-bench-") as tmp:
        for machines in counts:
            for mqtt in mqtt_modes:
                scenarios.append(run_scenario(Path(tmp) / f"{machines}-{'mqtt' if mqtt else 'plain'}", machines,
                                              mqtt, args.repeats, args.warmup_seconds, args.window_seconds,
                                              args.sink_latency_ms or None, progress))
    from edge_monitor.model import load_model

    window_seconds_of_model = load_model(DEMO_MODEL).bundle.spec.window_seconds
    result = {
        "machine": machine_info(),
        "settings": {"repeats": args.repeats, "warmup_s": args.warmup_seconds, "window_s": args.window_seconds,
                     "sample_rate_hz": SAMPLE_RATE_HZ, "model": str(DEMO_MODEL.relative_to(REPO_ROOT)),
                     "model_window_s": window_seconds_of_model,
                     "sink_latency_ms": args.sink_latency_ms or None},
        "scenarios": scenarios,
        "targets": evaluate_targets(scenarios),
        "notes": _notes(scenarios, window_seconds_of_model),
    }
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
