"""The daemon's import path holds the monitor only: no tools, no training, no heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.daemon import REPO_ROOT

_PROBE = """
import json, sys
import edge_monitor.daemon, edge_monitor.sources.serial, edge_monitor.sources.microphone
import edge_monitor.sources.wavfile, edge_monitor.sinks.mqtt, edge_monitor.sinks.clips
print(json.dumps(sorted(sys.modules)))
"""


def test_the_daemon_imports_no_tool_and_no_training_module() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    assert "edge_monitor.sources.serial_protocol" in modules  # the codecs are part of the runtime
    unwanted = [m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "librosa", "matplotlib")
                or m.startswith(("edge_monitor.tools", "edge_monitor.training"))]
    assert unwanted == []
