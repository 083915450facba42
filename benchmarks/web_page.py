"""What the gateway's web page costs the daemon: CPU with the page off, idle, and open in a browser.

For 1 and for 8 machines, each round starts four real daemons (``python -m
edge_monitor run``) side by side, all on the bundled SYNTHETIC demo recording
replayed at real-time pace on a loop (16 kHz, clips on, MQTT off; 8 machines are 8
configs on the same file, so they share one source thread as 8 channels of one
microphone array do):

- ``off``: no ``web:`` section (the reference);
- ``idle``: the page served, nobody looking;
- ``polled``: a client does what a browser does with two tabs open, the overview and
  the first machine's page, each over its own kept-alive connection: the overview
  polls ``/api`` (every machine in one answer) every 2 s and reloads every chart
  every 10 s; the machine page polls ``/api/<machine>`` every window hop (0.5 s), reloads
  its chart every 10 s, and when an alert or a clip arrives reloads the alert table
  and fetches the spectrogram PNGs it has not seen (as the browser's lazy images do).
  This is the machine page's fallback when it cannot have an event stream;
- ``events``: the same two tabs, the machine page following the live score as
  server-sent events (``/api/<machine>/events``), as a current browser does.

After every daemon has scored and a warm-up, the CPU share of one core of each
(utime + stime from ``/proc/<pid>/stat``) is measured over the same window, so the
daemons see the same load from the rest of the machine: the figures to read are the
same-round differences (percentage points) and ratios against ``off``. The start
order rotates between rounds. Medians over the rounds, with min-max spread.

    python -m benchmarks.web_page                        # 1 and 8 machines, 3 rounds, 30 s windows
    python -m benchmarks.web_page --machines 1 --rounds 5 --window-seconds 60 --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edge_monitor" / "demo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("off", "idle", "polled", "events")
START_TIMEOUT_SECONDS = 60.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_ids(machines: int) -> list[str]:
    """The benchmark's machine ids."""
    return [f"bench-fan-{i + 1}" for i in range(machines)]


def write_configs(folder: Path, machines: int, web_port: Optional[int]) -> list[Path]:
    """One config per machine, all on the demo recording; ``web_port`` None: no page."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for mid in machine_ids(machines):
        data: dict[str, Any] = {
            "machine": {"id": mid, "type": "fan"}, "model": {"path": str(DEMO / "demo-fan.tflite")},
            "source": {"type": "file", "path": str(DEMO / "demo-fan.wav"), "realtime": True, "loop": True},
            "clips": {"enabled": True, "dir": str(folder / "clips" / mid), "pre_seconds": 3, "post_seconds": 3,
                      "max_count": 20},
            "state_dir": str(folder / "state")}
        if web_port is not None:
            data["web"] = {"enabled": True, "port": web_port}
        path = folder / f"{mid}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(path)
    return paths


class _Tab:
    """One browser tab: a kept-alive connection and the session cookie."""

    def __init__(self, port: int, counts: dict[str, int]) -> None:
        self.port = port
        self.counts = counts
        self.cookie = ""
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, path: str) -> Optional[bytes]:
        try:
            self.conn.request("GET", path, headers={"Cookie": self.cookie} if self.cookie else {})
            resp = self.conn.getresponse()
            body = resp.read()
            got = resp.getheader("Set-Cookie")
            if got:
                self.cookie = got.split(";")[0]
            self.counts["requests"] += 1
            if resp.status != 200:
                self.counts["errors"] += 1
                return None
            return body
        except (OSError, http.client.HTTPException):
            self.counts["errors"] += 1
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            return None

    def close(self) -> None:
        self.conn.close()


def _overview_tab(port: int, ids: list[str], stop: threading.Event, counts: dict[str, int]) -> None:
    tab = _Tab(port, counts)
    last_charts = 0.0
    while not stop.is_set():
        tab.get("/api")  # every machine in one answer, as the overview page asks
        if time.monotonic() - last_charts >= 10.0:
            last_charts = time.monotonic()
            for mid in ids:
                tab.get(f"/machine/{mid}/chart.svg")
        stop.wait(2.0)
    tab.close()


class _MachinePage:
    """What the machine page does with each new /api object: the alert table and new spectrograms on a change."""

    def __init__(self, tab: _Tab, mid: str) -> None:
        self.tab, self.mid = tab, mid
        self.seen: Optional[tuple] = None
        self.pictures: set[bytes] = set()
        self.last_chart = time.monotonic()

    def show(self, d: dict[str, Any]) -> None:
        now = (d["alerts_total"], d["clips"])
        if self.seen is not None and now != self.seen:
            table = self.tab.get(f"/machine/{self.mid}/alerts") or b""
            for src in re.findall(rb'src="(/machine/[^"]+/spectrogram/[^"]+\.png)"', table):
                if src not in self.pictures:
                    self.pictures.add(src)
                    if self.tab.get(src.decode()) is not None:
                        self.tab.counts["spectrograms"] += 1
        self.seen = now

    def chart(self) -> None:
        if time.monotonic() - self.last_chart >= 10.0:
            self.last_chart = time.monotonic()
            self.tab.get(f"/machine/{self.mid}/chart.svg")


def _machine_tab(port: int, mid: str, stop: threading.Event, counts: dict[str, int]) -> None:
    tab = _Tab(port, counts)
    tab.get(f"/machine/{mid}")
    page = _MachinePage(tab, mid)
    while not stop.is_set():
        body = tab.get(f"/api/{mid}")
        if body is not None:
            page.show(json.loads(body))
        page.chart()
        stop.wait(0.5)
    tab.close()


def _machine_tab_events(port: int, mid: str, stop: threading.Event, counts: dict[str, int]) -> None:
    tab = _Tab(port, counts)
    tab.get(f"/machine/{mid}")
    page = _MachinePage(tab, mid)
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    stream.request("GET", f"/api/{mid}/events", headers={"Cookie": tab.cookie} if tab.cookie else {})
    resp = stream.getresponse()
    if resp.status != 200:
        counts["errors"] += 1
        return
    while not stop.is_set():
        try:
            line = resp.readline()
        except OSError:
            counts["errors"] += 1
            break
        if not line:
            break
        if line.startswith(b"data: "):
            counts["events"] += 1
            page.show(json.loads(line[len(b"data: "):]))
        page.chart()
    stream.close()
    tab.close()


class _Daemon:
    """One daemon process for one mode."""

    def __init__(self, folder: Path, mode: str, machines: int) -> None:
        self.mode = mode
        self.ids = machine_ids(machines)
        self.port = _free_port() if mode != "off" else None
        configs = write_configs(folder / mode, machines, self.port)
        self.log_path = folder / mode / "log"
        self._log = open(self.log_path, "wb")
        args = [sys.executable, "-m", "edge_monitor", "run"]
        for c in configs:
            args += ["--config", str(c)]
        self.proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def scored(self) -> bool:
        text = self.log_path.read_bytes()
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.mode} daemon exited: {text.decode(errors='replace')[-2000:]}")
        return all(f"{mid}: first score".encode() in text for mid in self.ids)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self._log.close()


def _zero_counts() -> dict[str, int]:
    return {"requests": 0, "errors": 0, "spectrograms": 0, "events": 0}


def run_round(machines: int, warmup_s: float, window_s: float, order: list[str]) -> dict[str, Any]:
    """Four daemons (off, idle, polled, events) side by side, measured over the same window."""
    with tempfile.TemporaryDirectory() as tmp:
        daemons: dict[str, _Daemon] = {}
        stop = threading.Event()
        counts = {mode: _zero_counts() for mode in ("polled", "events")}
        tabs: list[threading.Thread] = []
        try:
            for mode in order:
                daemons[mode] = _Daemon(Path(tmp), mode, machines)
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not all(d.scored() for d in daemons.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("not every daemon scored within "
                                       f"{START_TIMEOUT_SECONDS:.0f} s")
                time.sleep(0.1)
            for mode, machine_tab in (("polled", _machine_tab), ("events", _machine_tab_events)):
                d = daemons[mode]
                assert d.port is not None
                tabs += [threading.Thread(target=_overview_tab, args=(d.port, d.ids, stop, counts[mode]), daemon=True),
                         threading.Thread(target=machine_tab, args=(d.port, d.ids[0], stop, counts[mode]),
                                          daemon=True)]
            for t in tabs:
                t.start()
            time.sleep(warmup_s)
            for c in counts.values():
                c.update(_zero_counts())
            c0 = {m: _cpu_s(d.proc.pid) for m, d in daemons.items()}
            t0 = time.monotonic()
            time.sleep(window_s)
            c1 = {m: _cpu_s(d.proc.pid) for m, d in daemons.items()}
            t1 = time.monotonic()
            served = {mode: dict(c) for mode, c in counts.items()}
            load = os.getloadavg()[0]
        finally:
            stop.set()
            for t in tabs:
                t.join(5)
            codes = {m: d.stop() for m, d in daemons.items()}
    cpu = {m: 100.0 * (c1[m] - c0[m]) / (t1 - t0) for m in MODES}
    return {"cpu_percent": cpu, "served": served, "load_1m": load, "exit_codes": codes, "order": order}


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def run_scenario(machines: int, rounds: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    """``rounds`` rounds for ``machines`` machines; medians, spreads, same-round differences and ratios."""
    results = []
    for r in range(rounds):
        order = list(MODES[r % len(MODES):] + MODES[:r % len(MODES)])
        print(f"{machines} machine(s): round {r + 1} of {rounds} (start order {', '.join(order)})", file=sys.stderr,
              flush=True)
        results.append(run_round(machines, warmup_s, window_s, order))
    cpu = {m: _spread([res["cpu_percent"][m] for res in results]) for m in MODES}
    diff = {m: _spread([res["cpu_percent"][m] - res["cpu_percent"]["off"] for res in results]) for m in MODES[1:]}
    ratio = {m: _spread([res["cpu_percent"][m] / res["cpu_percent"]["off"] for res in results]) for m in MODES[1:]}
    served = {mode: {k: sum(res["served"][mode][k] for res in results) for k in _zero_counts()}
              for mode in ("polled", "events")}
    return {"machines": machines, "rounds": rounds, "window_seconds": window_s, "cpu_percent": cpu,
            "minus_off_pp": diff, "ratio_to_off": ratio, "served": served,
            "load_1m": [round(res["load_1m"], 2) for res in results],
            "clean_exits": all(c == 0 for res in results for c in res["exit_codes"].values())}


def import_cost_ms() -> float:
    """Extra import time (ms) of edge_monitor.web.gateway over edge_monitor.daemon, median of 5."""
    code = ("import time; import edge_monitor.daemon; t = time.perf_counter(); import edge_monitor.web.gateway; "
            "print((time.perf_counter() - t) * 1000)")
    runs = [float(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout) for _ in range(5)]
    return statistics.median(runs)


def handler_costs_us(repeats: int = 200) -> dict[str, float]:
    """CPU (us, median of 5 batches) of the site's answers with a full hour of scores, without sockets.

    ``api``: one machine's JSON; ``chart_hour``: the chart over 7200 scores; ``spectrogram``: the
    PNG of a 10 s clip, computed (cache missed) and cached.
    """
    from edge_monitor.events import ScoreEvent
    from edge_monitor.wavio import read_wav, write_wav
    from edge_monitor.web.app import MachinePort, Request, WebApp
    from edge_monitor.web.auth import Auth
    from edge_monitor.web.feedback import FeedbackStore
    from edge_monitor.web.spectrogram import SpectrogramCache
    from edge_monitor.web.view import MachineView

    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        view = MachineView("m")
        for i in range(7200):
            view.handle(ScoreEvent("m", now - 3600 + i * 0.5, 0.5 + (i % 13) / 10, 1.5, -30.0, 0.2))
        port = MachinePort(id="m", name="m", view=view, feedback=FeedbackStore(folder, "m"), threshold=lambda: 1.5,
                           set_threshold=lambda v: "")
        app = WebApp([port], Auth(None))

        def cpu_us(fn: Any, n: int) -> float:
            batches = []
            for _ in range(5):
                c0 = time.process_time()
                for _ in range(n):
                    fn()
                batches.append((time.process_time() - c0) / n * 1e6)
            return statistics.median(batches)

        def get(path: str) -> Any:
            return lambda: app.handle(Request("GET", path, {}, {"host": "127.0.0.1"}, b"", "127.0.0.1"))

        audio, rate = read_wav(DEMO / "demo-fan.wav")
        clip = folder / "clip.wav"
        write_wav(clip, audio[10 * rate:20 * rate, 0], rate)
        cache = SpectrogramCache()
        fresh = [0]

        def uncached() -> None:
            fresh[0] += 1
            SpectrogramCache().png(clip, port.spec, [float(fresh[0] % 7)])

        out = {"api": cpu_us(get("/api/m"), repeats), "chart_hour": cpu_us(get("/machine/m/chart.svg"), repeats // 10),
               "spectrogram": cpu_us(uncached, 5)}
        cache.png(clip, port.spec)
        out["spectrogram_cached"] = cpu_us(lambda: cache.png(clip, port.spec), repeats)
    return {k: round(v, 1) for k, v in out.items()}


def format_report(out: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = [f"import of the web package on top of the daemon: {out['import_ms']} ms",
             "CPU per answer, full hour of scores (us): " + ", ".join(f"{k} {v:g}" for k, v in out["handler_us"].items())]
    for s in out["scenarios"]:
        lines.append(f"{s['machines']} machine(s), {s['rounds']} rounds of {s['window_seconds']:g} s "
                     f"(load 1m {s['load_1m']}):")
        for m in MODES:
            c = s["cpu_percent"][m]
            extra = ""
            if m != "off":
                d, r = s["minus_off_pp"][m], s["ratio_to_off"][m]
                extra = (f"; {d['median']:+.3f} pp vs off ({d['min']:+.3f} to {d['max']:+.3f}), "
                         f"x{r['median']:.3f} ({r['min']:.3f} to {r['max']:.3f})")
            lines.append(f"  {m:6s} CPU {c['median']:.3f} % of a core ({c['min']:.3f} to {c['max']:.3f}){extra}")
        for mode, c in s["served"].items():
            lines.append(f"  {mode}: {c['requests']} requests, {c['events']} events, {c['errors']} errors, "
                         f"{c['spectrograms']} spectrograms")
        lines.append(f"  clean exits: {s['clean_exits']}")
    lines.append("target: page idle or open adds <= 0.3 percentage points")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the scenarios and print a table or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", default="1,8", help="comma-separated machine counts (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.machines.split(",") if c.strip()]
    if not counts or any(not 1 <= c <= 16 for c in counts) or args.rounds < 1:
        parser.error("--machines: counts from 1 to 16; --rounds: at least 1")
    out = {"import_ms": round(import_cost_ms(), 1), "handler_us": handler_costs_us(),
           "scenarios": [run_scenario(c, args.rounds, args.warmup_seconds, args.window_seconds) for c in counts]}
    print(json.dumps(out) if args.json else format_report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
