"""``edge-monitor record`` from a file source: the clips it writes are the recording, cut in pieces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_monitor.wavio import read_wav
from tests.helpers.daemon import DEMO_WAV, REPO_ROOT, write_config


def test_record_writes_the_first_seconds_of_the_source_in_clips(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # the demo recording as a file source
    out = tmp_path / "clips-out"
    done = subprocess.run([sys.executable, "-m", "edge_monitor", "record", "--config", str(config), "--seconds", "2.5",
                           "--clip-seconds", "1", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*.wav"))
    assert len(files) == 3 and "wrote 3 file(s)" in done.stderr
    parts = [read_wav(f) for f in files]
    assert all(rate == 16000 for _, rate in parts)
    assert [a.shape[0] for a, _ in parts[:2]] == [16000, 16000]
    recorded = np.concatenate([a for a, _ in parts])
    original, _ = read_wav(DEMO_WAV)
    assert recorded.shape[0] >= 40000
    np.testing.assert_array_equal(recorded, original[:recorded.shape[0], :recorded.shape[1]])
