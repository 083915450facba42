"""SIGHUP reloads: a bad config never stops the daemon; one validation for check-config, run and reload.

In-process tests drive ``Daemon.reload`` on a built daemon (demo model, file
source, not started) and collect its events with a recording sink. The last test
sends a real SIGHUP to a real ``edge-monitor run`` with a real broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_monitor.config import load_config
from edge_monitor.daemon import Daemon, check_config
from edge_monitor.events import Event, HealthEvent
from edge_monitor.model import ModelBundle
from edge_monitor.threshold_store import ThresholdStore
from tests.helpers.broker import Collector, Mosquitto, mosquitto, wait_until  # noqa: F401
from tests.helpers.daemon import DEMO_MODEL, DEMO_WAV, REPO_ROOT, DaemonProcess, write_config

MODEL_THRESHOLD = ModelBundle(DEMO_MODEL).threshold


class RecordingSink:
    """A sink that keeps every event it is handed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle(self, event: Event) -> None:
        """Keep it."""
        self.events.append(event)

    def close(self) -> None:
        """Nothing to release."""

    def health(self, kind: str) -> list[HealthEvent]:
        """Health events of one kind."""
        return [e for e in self.events if isinstance(e, HealthEvent) and e.kind == kind]


def _edit(path: Path, **sections: Any) -> None:
    data = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def built(tmp_path: Path):
    """A built (not started) daemon on the demo model, and its recording sink."""
    config = write_config(tmp_path)
    daemon = Daemon([load_config(config)])
    daemon.build()
    sink = RecordingSink()
    machine = daemon.machines[0]
    machine.sinks.append(sink)
    try:
        yield daemon, machine, sink, config
    finally:
        for m in daemon.machines:
            m.close()


BAD_YAML = {
    "non-scalar key": "? [a, b]\n: 1\n",
    "recursive alias": "x: &x [*x]\n",
    "invalid date": "detection:\n  cooldown_seconds: 2024-13-45\n",
    "billion laughs": "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'lol'}]\n" for i in range(9)),
    "not yaml": "machine: [\n",
}


@pytest.mark.parametrize("case", sorted(BAD_YAML))
def test_reload_with_unparseable_yaml_keeps_the_running_settings(built, case: str) -> None:
    daemon, machine, sink, config = built
    before = machine.settings
    config.write_text(config.read_text() + BAD_YAML[case])
    daemon.reload()  # must not raise
    assert machine.settings == before
    failed = sink.health("reload_failed")
    assert len(failed) == 1, sink.events
    assert str(config) in failed[0].detail and "\n" not in failed[0].detail


def test_reload_that_fails_when_applied_keeps_the_running_settings(built) -> None:
    daemon, machine, sink, config = built
    before = machine.settings
    # loads fine on its own, but is above the model's calibrated threshold
    _edit(config, detection={"clear_threshold": MODEL_THRESHOLD * 2, "trigger_k": 2})
    daemon.reload()
    assert machine.settings == before, "nothing of a refused reload may be applied"
    (failed,) = sink.health("reload_failed")
    assert "detection.clear_threshold" in failed.detail and f"{MODEL_THRESHOLD:g}" in failed.detail
    # the same file is refused by check-config with the same words
    result = subprocess.run([sys.executable, "-m", "edge_monitor", "check-config", str(config)], capture_output=True,
                            text=True, timeout=120, cwd=REPO_ROOT,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "detection.clear_threshold" in result.stderr
    assert check_config(load_config(config)) and check_config(load_config(config))[0] in failed.detail


def test_valid_reload_applies_and_reports_what_needs_a_restart(built) -> None:
    daemon, machine, sink, config = built
    _edit(config, detection={"trigger_k": 2, "trigger_n": 3, "window_hop_seconds": 0.25},
          mqtt={"keepalive_seconds": 60})
    daemon.reload()
    assert (machine.settings.trigger_k, machine.settings.trigger_n) == (2, 3)
    assert not sink.health("reload_failed")
    (restart,) = sink.health("reload_restart_needed")
    assert "detection.window_hop_seconds" in restart.detail and "mqtt.keepalive_seconds" in restart.detail
    assert "detection.trigger_k" not in restart.detail
    assert machine.cfg.detection.window_hop_seconds == 0.5, "the running hop stays until a restart"


def test_runtime_threshold_survives_a_reload_unless_the_yaml_value_changes(built) -> None:
    daemon, machine, sink, config = built
    shown: list[float] = []
    machine.threshold_listeners.append(shown.append)
    assert machine.set_threshold(7.5) == ""
    _edit(config, detection={"trigger_k": 2})  # threshold untouched in the YAML
    daemon.reload()
    assert machine.settings.threshold == 7.5 and shown[-1] == 7.5
    assert ThresholdStore(Path(machine.cfg.state_dir), machine.id).load() == 7.5
    _edit(config, detection={"threshold": 55.0})  # the YAML value changed: it wins and the saved value goes
    daemon.reload()
    assert machine.settings.threshold == 55.0 and shown[-1] == 55.0
    assert ThresholdStore(Path(machine.cfg.state_dir), machine.id).load() is None



def test_a_threshold_request_during_a_reload_is_published_after_it_and_stays_in_force(built) -> None:
    """A reload decides and publishes the threshold under the settings lock; a request waits for it and wins."""
    daemon, machine, sink, config = built
    shown: list[float] = []
    in_reload, release = threading.Event(), threading.Event()

    def slow_listener(value: float) -> None:  # like a publish that takes its time, on the reloading thread
        shown.append(value)
        if threading.current_thread() is reloader:
            in_reload.set()
            release.wait(10)

    machine.threshold_listeners.append(slow_listener)
    _edit(config, detection={"trigger_k": 2})
    reloader = threading.Thread(target=daemon.reload)
    reloader.start()
    assert in_reload.wait(10), "the reload publishes the threshold in force"
    requester = threading.Thread(target=machine.set_threshold, args=(7.5,))
    requester.start()
    requester.join(0.3)
    assert requester.is_alive() and machine.runtime_threshold is None, "the request waits for the reload"
    release.set()
    reloader.join(10)
    requester.join(10)
    assert shown == [MODEL_THRESHOLD, 7.5], "the value published last is the one in force"
    assert machine.settings.threshold == 7.5 and machine.settings.trigger_k == 2
    assert ThresholdStore(Path(machine.cfg.state_dir), machine.id).load() == 7.5

def test_saved_threshold_is_dropped_at_start_when_the_yaml_changed_meanwhile(tmp_path: Path) -> None:
    config = write_config(tmp_path, detection={"threshold": 50.0})
    first = Daemon([load_config(config)])
    first.build()
    first.machines[0].set_threshold(9.0)
    first.machines[0].close()
    again = Daemon([load_config(config)])
    again.build()
    assert again.machines[0].settings.threshold == 9.0  # YAML unchanged: the run-time value stands
    again.machines[0].close()
    _edit(config, detection={"threshold": 60.0})
    third = Daemon([load_config(config)])
    third.build()
    assert third.machines[0].settings.threshold == 60.0
    third.machines[0].close()


def test_run_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path, detection={"clear_threshold": MODEL_THRESHOLD * 3})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    results = [subprocess.run([sys.executable, "-m", "edge_monitor", *args, str(config)], capture_output=True,
                              text=True, timeout=120, cwd=REPO_ROOT, env=env)
               for args in (("check-config",), ("run", "--max-seconds", "5", "--config"))]
    for result in results:
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "detection.clear_threshold" in result.stderr


@pytest.mark.timeout(180)
def test_sighup_with_a_bad_config_keeps_the_daemon_running_and_reports_it(tmp_path: Path,
                                                                          mosquitto: Mosquitto) -> None:
    prefix = "e2e/reload-fan"
    config = write_config(tmp_path, machine_id="reload-fan",
                          source={"type": "file", "path": str(DEMO_WAV), "realtime": True,
                                  "loop": True},
                          mqtt={"host": mosquitto.host, "port": mosquitto.port})
    good = config.read_text()
    collector = Collector(mosquitto, [f"{prefix}/#"])
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: collector.on(f"{prefix}/threshold/state"), 60, what="threshold/state")
        collector.client.publish(f"{prefix}/threshold/set", b"33.5", qos=1)
        wait_until(lambda: collector.last(f"{prefix}/threshold/state").payload == b"33.5", 30, what="33.5")
        for n, text in enumerate([good + "? [a, b]\n: 1\n",
                                  good.replace("trigger_k: 3", f"trigger_k: 3\n  clear_threshold: {1e6}")], 1):
            config.write_text(text)
            daemon.proc.send_signal(signal.SIGHUP)
            wait_until(lambda n=n: len([m for m in collector.on(f"{prefix}/health")
                                    if m.json()["kind"] == "reload_failed"]) >= n, 30,
                       what=f"reload_failed health event #{n} (log: {daemon.log_text()[-1500:]})")
            assert daemon.running, daemon.log_text()
        config.write_text(good.replace("window_hop_seconds: 0.5", "window_hop_seconds: 0.25"))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any(m.json()["kind"] == "reload_restart_needed" for m in collector.on(f"{prefix}/health")),
                   30, what="reload_restart_needed")
        assert daemon.running
        assert collector.last(f"{prefix}/threshold/state").payload == b"33.5"  # the run-time value survived
        log = daemon.log_text()
        assert "Traceback" not in log
        assert "detection.window_hop_seconds" in log and "restart" in log
    finally:
        daemon.stop()
    collector.close()
