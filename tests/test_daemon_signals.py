"""Signals and the watchdog on a real ``edge-monitor run`` with a real broker.

- SIGHUPs while ``threshold/set`` requests arrive: every request is applied and
  echoed, and the last one is what is in force, saved and retained;
- a SIGHUP with a broken config: the daemon keeps running on the old settings and
  says why, in its log and on ``<prefix>/health``;
- a source worker stuck in a blocking call: the daemon stops petting systemd's
  watchdog (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``) and starts again once it moves.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_monitor.threshold_store import ThresholdStore
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until  # noqa: F401
from tests.helpers.daemon import DEMO_WAV, DaemonProcess, write_config
from tests.helpers.notify import NotifySocket

MACHINE = "signal-fan"
PREFIX = f"e2e/{MACHINE}"


def _edit(path: Path, **sections: Any) -> None:
    data = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _live_config(tmp_path: Path, mosquitto: Mosquitto) -> Path:
    return write_config(tmp_path, machine_id=MACHINE,
                        source={"type": "file", "path": str(DEMO_WAV), "realtime": True, "loop": True},
                        mqtt={"host": mosquitto.host, "port": mosquitto.port})


def _request_until_shown(collector: Collector, value: float) -> None:
    """Request ``value`` on threshold/set, again each second, until threshold/state shows it."""
    deadline = time.monotonic() + 30
    while True:
        collector.client.publish(f"{PREFIX}/threshold/set", repr(value).encode(), qos=1).wait_for_publish(10)
        try:
            wait_until(lambda: float(collector.last(f"{PREFIX}/threshold/state").payload) == value, 1.0,
                       what=f"threshold/state {value}")
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def _telemetry(collector: Collector) -> list[dict]:
    return [m.json() for m in collector.on(f"{PREFIX}/telemetry")]


@pytest.mark.timeout(240)
def test_sighups_during_threshold_requests_lose_no_value_and_the_last_one_wins(tmp_path: Path,
                                                                              mosquitto: Mosquitto) -> None:
    config = _live_config(tmp_path, mosquitto)
    collector = Collector(mosquitto, [f"{PREFIX}/#"])
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    values = [round(20.0 + 0.25 * i, 2) for i in range(40)]
    stop_hups = threading.Event()
    hups = {"n": 0}

    def hangups() -> None:  # reloads that really change something, as fast as the daemon takes them
        while not stop_hups.is_set():
            _edit(config, detection={"trigger_k": 2 + hups["n"] % 2})
            daemon.proc.send_signal(signal.SIGHUP)
            hups["n"] += 1
            time.sleep(0.03)

    try:
        wait_until(lambda: collector.on(f"{PREFIX}/threshold/state"), 60, what="threshold/state")
        _request_until_shown(collector, 19.5)  # the sink subscribes just after it connects
        hup_thread = threading.Thread(target=hangups, daemon=True)
        hup_thread.start()
        for value in values:
            collector.client.publish(f"{PREFIX}/threshold/set", repr(value).encode(), qos=1).wait_for_publish(10)
            time.sleep(0.02)
        wait_until(lambda: float(collector.last(f"{PREFIX}/threshold/state").payload) == values[-1], 30,
                   what=f"threshold/state {values[-1]} (log: {daemon.log_text()[-1500:]})")
        stop_hups.set()
        hup_thread.join(timeout=10)
        assert hups["n"] >= 10, "the reloads must overlap the requests"
        # one last reload that is known to have finished: trigger_k 4 shows in its log line
        _edit(config, detection={"trigger_k": 4})
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "4 of 5)" in daemon.log_text(), 30, what="the last reload")
        seen = len(_telemetry(collector))
        wait_until(lambda: len(_telemetry(collector)) > seen, 30, what="telemetry after the last reload")
        assert daemon.running, daemon.log_text()

        shown = [float(m.payload) for m in collector.on(f"{PREFIX}/threshold/state")]
        assert set(values) <= set(shown), "every request was applied and echoed"
        assert shown[-1] == values[-1], "the retained threshold is the last one requested"
        assert collector.on(f"{PREFIX}/threshold/error") == []
        assert _telemetry(collector)[-1]["threshold"] == values[-1], "the value in force is the last one"
        assert ThresholdStore(tmp_path / "state", MACHINE).load() == values[-1], "the saved value is the last one"
        reloaded = [line for line in daemon.log_text().splitlines() if "reloaded detection settings" in line]
        assert reloaded and f"threshold {values[-1]:g}," in reloaded[-1]
        assert "Traceback" not in daemon.log_text()
    finally:
        stop_hups.set()
        daemon.stop()
    collector.close()


@pytest.mark.timeout(180)
def test_sighup_with_a_broken_config_keeps_the_old_settings_running_and_says_why(tmp_path: Path,
                                                                                mosquitto: Mosquitto) -> None:
    config = _live_config(tmp_path, mosquitto)
    _edit(config, detection={"threshold": 30.0})
    good = config.read_text()
    collector = Collector(mosquitto, [f"{PREFIX}/#"])
    notify = NotifySocket()
    daemon = DaemonProcess(config, tmp_path / "daemon.log", env=notify.env)
    try:
        wait_until(lambda: _telemetry(collector), 60, what="telemetry")
        assert _telemetry(collector)[-1]["threshold"] == 30.0
        config.write_text(good.replace("threshold: 30.0", "threshold: -2.0\n  trigger_k: many"))
        daemon.proc.send_signal(signal.SIGHUP)
        (failed,) = wait_until(lambda: [m.json() for m in collector.on(f"{PREFIX}/health")
                                        if m.json()["kind"] == "reload_failed"], 30, what="reload_failed")
        assert "refused, the running settings stay" in failed["detail"] and "trigger_k" in failed["detail"]
        log = daemon.log_text()
        assert "refused, the running settings stay" in log and "trigger_k" in log and "Traceback" not in log
        # still running, still scoring, on the old threshold; systemd heard the reload end (READY after RELOADING)
        seen = len(_telemetry(collector))
        wait_until(lambda: len(_telemetry(collector)) > seen + 1, 30, what="telemetry after the refused reload")
        assert daemon.running
        last = _telemetry(collector)[-1]
        assert last["threshold"] == 30.0 and last["windows"] > 0
        lines = notify.messages()
        assert "RELOADING=1" in lines and lines.index("RELOADING=1") < len(lines) - 1 - lines[::-1].index("READY=1")
    finally:
        daemon.stop()
        notify.close()
    collector.close()


@pytest.mark.timeout(180)
def test_a_stuck_source_worker_stops_the_watchdog_pets_until_it_moves_again(tmp_path: Path) -> None:
    """The worker blocks opening a FIFO that no one writes to: the main thread is fine, the pipeline is not."""
    fifo = tmp_path / "input.wav"  # absent at the start: the worker retries, which is progress
    config = write_config(tmp_path, machine_id=MACHINE,
                          source={"type": "file", "path": str(fifo), "realtime": True, "loop": True},
                          health={"retry_max_seconds": 1.0})
    notify = NotifySocket()
    watchdog_s = 2.0
    daemon = DaemonProcess(config, tmp_path / "daemon.log",
                           env={**notify.env, "WATCHDOG_USEC": str(int(watchdog_s * 1e6))})
    try:
        wait_until(lambda: notify.count("READY=1") and notify.count("WATCHDOG=1") >= 3, 60,
                   what=f"READY and watchdog pets (log: {daemon.log_text()[-1500:]})")
        os.mkfifo(fifo)  # the next attempt to open it blocks in open(2)
        wait_until(lambda: "is stuck; not petting the watchdog" in daemon.log_text(), 30,
                   what="the stuck worker to be noticed")
        pets = notify.count("WATCHDOG=1")
        time.sleep(2 * watchdog_s)  # systemd would have restarted the service by now
        assert notify.count("WATCHDOG=1") == pets, "no pets while the worker is stuck"
        assert daemon.running
        # unblock it: a writer that closes at once; the worker fails to read a WAV from it, which is progress
        fd = os.open(fifo, os.O_WRONLY)
        os.close(fd)
        os.unlink(fifo)
        wait_until(lambda: notify.count("WATCHDOG=1") > pets, 30, what="pets again once the worker moves")
        assert daemon.running
    finally:
        daemon.stop()
        notify.close()
    lines = [json.dumps(m) for m in notify.messages()]
    assert '"STOPPING=1"' in lines
