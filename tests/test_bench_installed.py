"""``edge-monitor bench`` from a plain ``pip install .`` (no checkout, no TensorFlow, no librosa).

The package is installed into a side venv (``.venv-installed``, its dependencies cached; the package
itself reinstalled from this checkout for every run) and run from a directory that is not a checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.tflite_venv import REPO_ROOT, venv_python


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``edge-monitor`` script of a venv where this checkout was installed with ``pip install .``."""
    python = venv_python("installed", [str(REPO_ROOT)])
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                           "--force-reinstall", str(REPO_ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return python.parent / "edge-monitor"


def _bench(script: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(script), "bench", "--json", "--seconds", "5", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_bench_runs_from_an_installed_package(installed: Path, tmp_path: Path) -> None:
    venv = installed.parent.parent
    for module in ("tensorflow", "librosa"):  # the install really is plain
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is installed in the side venv"
    done = _bench(installed, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model_origin"] == "bundled demo"
    model = Path(result["model"])
    assert model.is_relative_to(venv) and model.parent.name == "demo", model  # package data, not a checkout
    assert not model.is_relative_to(REPO_ROOT / "edge_monitor")
    assert result["rss_heavy_modules"] == [] and result["rss_windows"] > 0
    assert result["startup_s"] > 0 and result["realtime_factor"] > 0
    assert result["librosa_ratio"] is None and any("librosa" in n for n in result["notes"])


@pytest.mark.timeout(900)
def test_bench_resolves_a_relative_model_path(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    shutil.copy(REPO_ROOT / "models" / "machine-type.tflite", tmp_path / "models" / "mine.tflite")
    done = _bench(installed, tmp_path, "--model", "models/mine.tflite")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == str(tmp_path / "models" / "mine.tflite")
    assert result["model_ident"].startswith("machine-type@") and result["startup_s"] > 0
