"""What the gateway's web page costs the daemon: CPU with the page off, idle, and polled like a browser.

Each run starts the real daemon (``python -m edge_monitor run``) on the bundled
SYNTHETIC demo recording replayed at real-time pace on a loop (one machine,
16 kHz, clips on, MQTT off), waits for the first score and a warm-up, then
measures its CPU share of one core (utime + stime from ``/proc/<pid>/stat``) over
a window. Modes, interleaved so drifts in the machine's load hit all of them:

- ``off``: no ``web:`` section;
- ``idle``: the page served, nobody looking;
- ``polled``: a client does what an open machine page does: ``/api/<machine>``
  every window hop (0.5 s) and the SVG chart every 10 s, over one kept-alive
  connection as a browser would.

It also reports the import time of the web package on top of the daemon's.

    python -m benchmarks.web_page                 # 2 rounds, 30 s windows
    python -m benchmarks.web_page --window-seconds 60 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_monitor" / "demo"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(folder: Path, web: bool, port: int) -> Path:
    data = {"machine": {"id": "bench-fan", "type": "fan"}, "model": {"path": str(DEMO / "demo-fan.tflite")},
            "source": {"type": "file", "path": str(DEMO / "demo-fan.wav"), "realtime": True, "loop": True},
            "clips": {"enabled": True, "pre_seconds": 3, "post_seconds": 3, "max_count": 20},
            "state_dir": str(folder / "state")}
    if web:
        data["web"] = {"enabled": True, "port": port}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _poll(port: int, stop: threading.Event, counts: list[int]) -> None:
    """What an open machine page does, over one kept-alive connection as a browser would."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    cookie = ""
    last_chart = 0.0
    while not stop.is_set():
        paths = ["/api/bench-fan"]
        if time.monotonic() - last_chart >= 10.0:
            paths.append("/machine/bench-fan/chart.svg")
            last_chart = time.monotonic()
        for path in paths:
            try:
                conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
                resp = conn.getresponse()
                resp.read()
                got = resp.getheader("Set-Cookie")
                if got:
                    cookie = got.split(";")[0]
                counts[0] += 1
            except (OSError, http.client.HTTPException):
                counts[1] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        stop.wait(0.5)
    conn.close()


def run_once(mode: str, warmup_s: float, window_s: float) -> dict:
    """One daemon, one mode: CPU percent of one core over the window, and requests served."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = _free_port()
        log = open(folder / "log", "wb")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "edge_monitor", "run", "--config",
                                 str(_config(folder, mode != "off", port))], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        stop = threading.Event()
        counts = [0, 0]
        try:
            deadline = time.monotonic() + 30
            while b"first score" not in (folder / "log").read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((folder / "log").read_text())
                time.sleep(0.1)
            poller = None
            if mode == "polled":
                poller = threading.Thread(target=_poll, args=(port, stop, counts), daemon=True)
                poller.start()
            time.sleep(warmup_s)
            c0, t0 = _cpu_s(proc.pid), time.monotonic()
            counts[0] = counts[1] = 0
            time.sleep(window_s)
            c1, t1 = _cpu_s(proc.pid), time.monotonic()
            stop.set()
            if poller is not None:
                poller.join(5)
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
        return {"mode": mode, "cpu_percent": 100.0 * (c1 - c0) / (t1 - t0), "requests": counts[0],
                "request_errors": counts[1]}


def import_cost_ms() -> float:
    """Extra import time (ms) of edge_monitor.web.gateway over edge_monitor.daemon, median of 5."""
    code = ("import time; import edge_monitor.daemon; t = time.perf_counter(); import edge_monitor.web.gateway; "
            "print((time.perf_counter() - t) * 1000)")
    runs = [float(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout) for _ in range(5)]
    return statistics.median(runs)


def main() -> int:
    """Run the rounds and print a table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"off": [], "idle": [], "polled": []}
    for _ in range(args.rounds):
        for mode in results:
            results[mode].append(run_once(mode, args.warmup_seconds, args.window_seconds))
    summary = {mode: {"cpu_percent_median": statistics.median(r["cpu_percent"] for r in runs),
                      "cpu_percent_runs": [round(r["cpu_percent"], 3) for r in runs],
                      "requests": sum(r["requests"] for r in runs),
                      "request_errors": sum(r["request_errors"] for r in runs)} for mode, runs in results.items()}
    out = {"window_seconds": args.window_seconds, "rounds": args.rounds, "import_ms": round(import_cost_ms(), 1),
           "modes": summary,
           "idle_minus_off_pp": summary["idle"]["cpu_percent_median"] - summary["off"]["cpu_percent_median"],
           "polled_minus_off_pp": summary["polled"]["cpu_percent_median"] - summary["off"]["cpu_percent_median"]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"import of the web package on top of the daemon: {out['import_ms']} ms")
    for mode, s in summary.items():
        print(f"{mode:7s} CPU {s['cpu_percent_median']:.3f} % of a core (runs {s['cpu_percent_runs']}), "
              f"{s['requests']} requests, {s['request_errors']} errors")
    print(f"idle - off: {out['idle_minus_off_pp']:+.3f} pp; polled - off: {out['polled_minus_off_pp']:+.3f} pp "
          "(target: within 0.3 pp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
