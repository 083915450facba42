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


MAX_FUNCTION_LINES = 60
MAX_DAEMON_MODULE_LINES = 450


def test_no_function_in_the_package_is_over_60_lines():
    import ast

    long = []
    for path in sorted((ROOT / "edge_monitor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_no_module_the_daemon_imports_is_over_450_lines(tmp_path):
    # what `edge-monitor run` can load, whichever source, sinks and web settings a config chooses
    loaded = ["daemon", "machine", "source_worker", "pipeline", "sinks.mqtt", "sinks.homeassistant", "sinks.clips",
              "sinks.console", "sources.microphone", "sources.serial", "sources.wavfile", "sources.factory",
              "web.gateway", "web.server", "web.app"]
    code = ("import sys\n" + "".join(f"import edge_monitor.{m}\n" for m in loaded) +
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items()\n"
            "                 if n.startswith('edge_monitor') and getattr(m, '__file__', None)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = [Path(f) for f in proc.stdout.split()]
    assert any(f.name == "daemon.py" for f in files) and any(f.name == "mqtt.py" for f in files)
    big = {str(f.relative_to(ROOT)): n for f in files if (n := len(f.read_text().splitlines())) > MAX_DAEMON_MODULE_LINES}
    assert not big, big
