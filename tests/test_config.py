"""Config loading: every problem at once, each with file:line, key path, value and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_monitor.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "config").glob("*.yml"))

VALID = """\
machine:
  id: fan-1
  site: hall-a
  type: fan
model:
  path: models/fan.tflite
source:
  type: microphone
  channels: [0, 1]
detection:
  threshold: 2.5
  trigger_k: 2
  trigger_n: 4
mqtt:
  enabled: true
  host: broker.local
  port: 8883
state_dir: /tmp/edge-monitor-test
"""


def _write(tmp_path: Path, text: str, name: str = "machine.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_monitor", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


# ---------------------------------------------------------------- valid configs

@pytest.mark.skipif(not EXAMPLES, reason="no example configs in config/ yet")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.machine.id and cfg.model.path
    assert Path(cfg.model.path).is_absolute()
    result = _cli("check-config", "--skip-model", str(path))
    assert result.returncode == 0, result.stderr
    assert ": ok (machine " in result.stdout


def test_valid_config_loads_with_types_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, VALID))
    assert cfg.machine.id == "fan-1" and cfg.machine.type == "fan"
    assert cfg.source.channels == (0, 1) and isinstance(cfg.source.channels, tuple)
    assert cfg.detection.threshold == 2.5 and isinstance(cfg.detection.threshold, float)
    assert cfg.detection.cooldown_seconds == 30.0  # default
    assert cfg.mqtt.port == 8883 and cfg.mqtt.homeassistant.enabled is True
    assert cfg.source_file.endswith("machine.yaml")


def test_relative_model_path_is_resolved_against_the_config_folder(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID, "site/machines/fan.yaml")
    cfg = load_config(path)
    assert Path(cfg.model.path) == (tmp_path / "site" / "machines" / "models" / "fan.tflite").resolve()


def test_absolute_model_path_is_kept(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, VALID.replace("models/fan.tflite", "/opt/models/fan.tflite")))
    assert cfg.model.path == "/opt/models/fan.tflite"


def test_single_channel_may_be_a_scalar(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, VALID.replace("channels: [0, 1]", "channels: 3")))
    assert cfg.source.channels == (3,)


# ---------------------------------------------------------------- errors

THREE_MISTAKES = """\
machine:
  id: fan-1
model:
  path: fan.tflite
detection:
  treshold: 2.5
  trigger_k: three
mqtt:
  port: 70000
"""


def test_three_mistakes_give_three_precise_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, THREE_MISTAKES)
    problems = _problems(path)
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert f"{path}:6: detection.treshold: unknown key (did you mean 'threshold'?)" in text
    assert f"{path}:7: detection.trigger_k: got 'three'; expected an integer between 1 and 1000" in text
    assert f"{path}:9: mqtt.port: got 70000; expected an integer between 1 and 65535" in text


def test_check_config_exits_2_and_lists_every_problem(tmp_path: Path) -> None:
    path = _write(tmp_path, THREE_MISTAKES)
    result = _cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count(f"{path}:") >= 3
    assert "detection.treshold" in result.stderr and "mqtt.port" in result.stderr
    assert "3 problem(s)" in result.stderr
    assert result.stdout == ""


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID + "colour: blue\n"))
    assert len(problems) == 1
    assert ":19: colour: unknown key (known keys: machine, model, source," in problems[0]


def test_unknown_top_level_section_typo(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID.replace("detection:", "detecton:")))
    assert problems == [f"{tmp_path / 'machine.yaml'}:10: detecton: unknown key (did you mean 'detection'?)"]


def test_missing_required_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        machine:
          site: hall-a
        source:
          type: microphone
        """)
    problems = _problems(path)
    assert len(problems) == 2, problems
    # the line is the machine section's (its key on line 1 or its first entry on line 2)
    assert any(p.startswith((f"{path}:1: machine.id: missing; expected a string",
                             f"{path}:2: machine.id: missing; expected a string")) for p in problems), problems
    assert any(": model: missing; expected a mapping" in p for p in problems)


def test_type_errors(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
        machine:
          id: fan-1
          type: blender
        model:
          path: [a, b]
        source:
          realtime: "yes"
          channels: [0, x]
        detection:
          cooldown_seconds: -1
        mqtt: 5
        """)
    problems = _problems(path)
    text = "\n".join(problems)
    assert f"{path}:3: machine.type: got 'blender'; expected one of fan, pump, slider, valve, pipe, unknown" in text
    assert f"{path}:5: model.path: got ['a', 'b']; expected a string" in text
    assert f"{path}:7: source.realtime: got 'yes'; expected true or false" in text
    assert f"{path}:8: source.channels.1: got 'x'; expected an integer" in text
    assert f"{path}:10: detection.cooldown_seconds: got -1; expected a number between 0 and 86400" in text
    assert f"{path}:11: mqtt: got 5; expected a mapping of enabled, host, port" in text
    assert len(problems) == 6, problems


def test_booleans_are_not_numbers(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID.replace("trigger_k: 2", "trigger_k: true")))
    assert problems == [f"{tmp_path / 'machine.yaml'}:12: detection.trigger_k: got True; "
                        "expected an integer between 1 and 1000"]


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID.replace("  trigger_n: 4\n", "  trigger_n: 4\n  trigger_n: 5\n")))
    assert any(":14: detection.trigger_n: duplicate key" in p for p in problems), problems


def test_semantic_checks(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("type: microphone", "type: file").replace("machine:\n  id: fan-1",
                                                                                   "machine:\n  id: fan 1"))
    problems = _problems(path)
    assert any(":2: machine.id: got 'fan 1'; expected 1-64 letters" in p for p in problems), problems


def test_semantic_check_on_an_absent_key_names_its_full_path(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID.replace("type: microphone", "type: file")))
    assert len(problems) == 1, problems
    assert "source.path: got None; expected a WAV file path when source.type is file" in problems[0]


def test_trigger_k_above_trigger_n(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path, VALID.replace("trigger_k: 2", "trigger_k: 6")))
    assert problems == [f"{tmp_path / 'machine.yaml'}:12: detection.trigger_k: got 6; expected at most trigger_n (4)"]


def test_yaml_syntax_error_reports_a_line(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("  trigger_k: 2\n", "  trigger_k: [2\n"))
    problems = _problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:") and "not valid YAML" in problems[0]
    line = int(problems[0][len(str(path)) + 1:].split(":")[0])
    assert 12 <= line <= 14


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert "the file is empty" in _problems(_write(tmp_path, ""))[0]
    assert _problems(tmp_path / "absent.yaml") == [f"{tmp_path / 'absent.yaml'}: file not found"]


def test_parse_config_without_file_names_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^<config>:1: machine: got 'x'"):
        parse_config("machine: x\nmodel: {path: m.tflite}\n")
