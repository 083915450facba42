"""Side virtualenvs with other TFLite runtimes, for checking bundles against them.

* ``.venv-tflite``: ``pip install '<checkout>[tflite-runtime]'``, i.e. tflite-runtime 2.14 (its last
  release: ``numpy<2``, Python <= 3.11, so it can't share the project venv) next to ai-edge-litert,
  as a user who picks the fallback on x86_64 or aarch64 gets it.
* ``.venv-litert-<floor>``: the oldest ai-edge-litert that setup.cfg allows.

Each venv is built once and reused while its requirements and setup.cfg are unchanged. The
edge_monitor code they run is this checkout's (``PYTHONPATH``), so every runtime goes through the
same ModelRunner.

Outside CI, a venv that can't be built because PyPI is unreachable skips the tests that need it.
In CI (``CI`` or ``EDGE_MONITOR_REQUIRE_TFLITE_RUNTIME`` set; ``scripts/test.sh`` sets the latter)
it is a failure, so the check can't silently stop running.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("tflite_probe.py")
_STAMP = "edge-monitor-requirements.json"
_BUILD_TIMEOUT_S = 900


def tflite_runtime_requirements() -> list[str]:
    """What a user gets with ``pip install 'edge-monitor[tflite-runtime]'``: this checkout with that extra."""
    return [f"{REPO_ROOT}[tflite-runtime]"]


def litert_floor() -> str:
    """The lowest ai-edge-litert version setup.cfg allows (``ai-edge-litert>=X``)."""
    match = re.search(r"^\s*ai-edge-litert>=([0-9.]+)", (REPO_ROOT / "setup.cfg").read_text(), re.MULTILINE)
    assert match, "setup.cfg pins no ai-edge-litert floor"
    return match.group(1)


def required() -> bool:
    """True when a missing side venv must fail the run instead of skipping (CI)."""
    return bool(os.environ.get("CI") or os.environ.get("EDGE_MONITOR_REQUIRE_TFLITE_RUNTIME"))


def _base_python(old_python: bool) -> Optional[str]:
    """The interpreter to build a venv with; with ``old_python``, a CPython <= 3.11 (python3.11/3.10/3.9)."""
    if not old_python or sys.version_info[:2] <= (3, 11):
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
        pytest.fail(f"side venv: {why}")
    pytest.skip(f"side venv not available offline: {why}")


def venv_python(name: str, requirements: list[str], *, old_python: bool = False) -> Path:
    """``<repo>/.venv-<name>``'s python with ``requirements`` installed, building the venv if needed.

    ``old_python``: built with Python <= 3.11 (what tflite-runtime 2.14 needs).

    Reused while its recorded requirements (and, for a local path, that path's setup.cfg) are unchanged.
    Fails or skips as described in the module docstring.
    """
    venv = REPO_ROOT / f".venv-{name}"
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    want = {"requirements": requirements,
            "setup.cfg": hashlib.sha256((REPO_ROOT / "setup.cfg").read_bytes()).hexdigest()}
    with open(str(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if python.exists() and json.loads(stamp.read_text()) == want:
                return python
        except (OSError, ValueError):
            pass
        base = _base_python(old_python)
        if base is None:
            _give_up("tflite-runtime 2.14 needs Python <= 3.11 and none was found (python3.11, python3.10, "
                     "python3.9)")
        shutil.rmtree(venv, ignore_errors=True)
        steps = ([base, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements])
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _give_up(f"`{' '.join(cmd)}` took longer than {_BUILD_TIMEOUT_S} s")
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                _give_up(f"`{' '.join(cmd)}` failed:\n{tail}")
        stamp.write_text(json.dumps(want))
        return python


def probe(python: Path | str, model: Path, wav: Optional[Path] = None, hop_frames: int = 8,
          backend: Optional[str] = None) -> dict[str, Any]:
    """Run :mod:`tests.helpers.tflite_probe` with ``python`` and this checkout's code; its JSON result.

    ``backend`` sets ``EDGE_MONITOR_TFLITE_BACKEND`` (None: unset, the first runtime found). The result's
    ``error`` holds the ModelError when the model or runtime was refused.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("EDGE_MONITOR_TFLITE_BACKEND", None)
    if backend is not None:
        env["EDGE_MONITOR_TFLITE_BACKEND"] = backend
    cmd = [str(python), str(PROBE), str(model), str(hop_frames)] + ([str(wav)] if wav else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
