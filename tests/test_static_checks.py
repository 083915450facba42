"""The package type-checks with mypy (setup.cfg [mypy]) and lints clean with ruff, as part of the suite."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MYPY_CACHE_DIR": str(tmp_path)})


@pytest.mark.timeout(900)
def test_mypy_finds_no_errors_in_the_package(tmp_path):
    pytest.importorskip("mypy")
    proc = _run(["mypy", "edge_monitor"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout


def test_ruff_finds_nothing_in_package_tests_and_benchmarks(tmp_path):
    pytest.importorskip("ruff")
    proc = _run(["ruff", "check", "--no-cache", "edge_monitor", "tests", "benchmarks"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
