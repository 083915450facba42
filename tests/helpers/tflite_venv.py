"""A side virtualenv with tflite-runtime 2.14, for checking bundles against the fallback runtime.

tflite-runtime 2.14 (its last release) needs ``numpy<2`` and Python <= 3.11, so it can't share the
project venv (numpy 2, ai-edge-litert). The venv is built once in ``<repo>/.venv-tflite`` from
:data:`REQUIREMENTS` and reused while its recorded requirements match. The edge_monitor code it
runs is this checkout's (``PYTHONPATH``), so both runtimes go through the same ModelRunner.

Outside CI, a venv that can't be built because PyPI is unreachable skips the tests that need it.
In CI (``CI`` or ``EDGE_MONITOR_REQUIRE_TFLITE_RUNTIME`` set; ``scripts/test.sh`` sets the latter)
it is a failure, so the check can't silently stop running.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = Path(os.environ.get("EDGE_MONITOR_TFLITE_VENV", str(REPO_ROOT / ".venv-tflite")))
REQUIREMENTS = ("tflite-runtime==2.14.*", "numpy<2")
PROBE = Path(__file__).with_name("tflite_probe.py")
_STAMP = "edge-monitor-requirements.json"
_BUILD_TIMEOUT_S = 900


def required() -> bool:
    """True when a missing side venv must fail the run instead of skipping (CI)."""
    return bool(os.environ.get("CI") or os.environ.get("EDGE_MONITOR_REQUIRE_TFLITE_RUNTIME"))


def _base_python() -> Optional[str]:
    """A CPython <= 3.11 to build the venv with: this interpreter if old enough, else python3.11/3.10/3.9."""
    if sys.version_info[:2] <= (3, 11):
        return sys.executable
    for name in ("python3.11", "python3.10", "python3.9"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def _give_up(why: str) -> None:
    if required() or _pypi_reachable():
        pytest.fail(f"tflite-runtime side venv: {why}")
    pytest.skip(f"tflite-runtime side venv not available offline: {why}")


def venv_python() -> Path:
    """The side venv's python, building the venv first if needed (fails or skips as described above)."""
    python = VENV_DIR / "bin" / "python"
    stamp = VENV_DIR / _STAMP
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(str(VENV_DIR) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if python.exists() and stamp.is_file() and json.loads(stamp.read_text()) == list(REQUIREMENTS):
                return python
        except (OSError, ValueError):
            pass
        base = _base_python()
        if base is None:
            _give_up("tflite-runtime 2.14 needs Python <= 3.11 and none was found (python3.11, python3.10, "
                     "python3.9)")
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        steps = ([base, "-m", "venv", str(VENV_DIR)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS])
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _give_up(f"`{' '.join(cmd)}` took longer than {_BUILD_TIMEOUT_S} s")
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                _give_up(f"`{' '.join(cmd)}` failed:\n{tail}")
        stamp.write_text(json.dumps(list(REQUIREMENTS)))
        return python


def probe(python: Path | str, model: Path, wav: Optional[Path] = None, hop_frames: int = 8) -> dict[str, Any]:
    """Run :mod:`tests.helpers.tflite_probe` with ``python``; its JSON result (``error`` when the load failed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("EDGE_MONITOR_TFLITE_BACKEND", None)
    cmd = [str(python), str(PROBE), str(model), str(hop_frames)] + ([str(wav)] if wav else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
