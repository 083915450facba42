"""Hostile configs: every odd YAML file is a ConfigError naming file:line, never a traceback or a hang.

The fuzzer mutates the shipped example configs (config/*.yaml) line by line with
tokens that broke earlier versions (dates, non-scalar keys, aliases, tags, huge
numbers, control characters, wildcards) and asserts that loading either succeeds
with a config whose invariants hold, or raises ConfigError. Fixed budget, fixed seed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_monitor.config import (
    MAX_YAML_VALUES,
    Config,
    ConfigError,
    load_config,
    mqtt_prefix,
    parse_config,
    topic_problem,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))
EXAMPLE_TEXTS = [p.read_text() for p in EXAMPLES]

MINIMAL = "machine:\n  id: fan-1\nmodel:\n  path: m.tflite\n"


def _problems(text: str, fname: str = "c.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, fname)
    return info.value.problems


def _billion_laughs(levels: int = 9, fan_out: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n" + MINIMAL


# ---------------------------------------------------------------- one case per class

def test_billion_laughs_fails_fast_with_a_clear_error() -> None:
    # 10**9 values if expanded; the loader stops at its budget, after a few thousand conversions
    problems = _problems(_billion_laughs())
    assert len(problems) == 1
    assert problems[0].startswith("c.yaml:")
    assert f"more than {MAX_YAML_VALUES} values" in problems[0]


def test_recursive_alias_is_an_error() -> None:
    problems = _problems(MINIMAL + "source: &s\n  channels: *s\n")
    assert any("an alias refers to itself" in p and p.startswith("c.yaml:5:") for p in problems), problems


@pytest.mark.parametrize("key", ["? [a, b]\n: 1", "{a: 1}: 2", "? {x: 1}\n: 3"])
def test_non_scalar_key_is_an_error_with_its_line(key: str) -> None:
    problems = _problems(MINIMAL + key + "\n")
    assert any(p.startswith("c.yaml:5: (top level): a key must be a plain name") for p in problems), problems


@pytest.mark.parametrize("value", ["2024-13-45", "2024-02-30", "2001-12-14t21:59:43.10-05:00"])
def test_dates_invalid_or_not_stay_text(value: str) -> None:
    cfg = parse_config(MINIMAL.replace("id: fan-1", "id: fan-1\n  name: " + value))
    assert cfg.machine.name == value
    problems = _problems(MINIMAL + f"detection:\n  cooldown_seconds: {value}\n")
    assert problems == [f"c.yaml:6: detection.cooldown_seconds: got {value!r}; expected a number between 0 and 86400"]


@pytest.mark.parametrize("value,tag", [("!!binary aGk=", "!!binary"), ("!!python/name:os.system ''", "!!python"),
                                       ("!foo bar", "!foo"), ("!!set {1}", "!!set")])
def test_unsupported_tags_are_errors(value: str, tag: str) -> None:
    problems = _problems(MINIMAL.replace("id: fan-1", "id: fan-1\n  name: " + value))
    assert len(problems) == 1 and problems[0].startswith("c.yaml:3: machine.name: unsupported YAML tag " + tag)


def test_unreadable_scalars_are_errors() -> None:
    problems = _problems(MINIMAL + "detection:\n  trigger_k: !!int x\n  trigger_n: " + "1" * 5000 + "\n")
    assert len(problems) == 2, problems
    assert problems[0].startswith("c.yaml:6: detection.trigger_k: cannot read 'x' as !!int")
    assert problems[1].startswith("c.yaml:7: detection.trigger_n: cannot read '1111")
    assert all(len(p) < 300 for p in problems)


def test_merge_keys_and_deep_nesting_are_errors() -> None:
    assert "merge keys (<<) are not supported" in _problems("base: &b {id: x}\nmachine:\n  <<: *b\n")[0]
    assert "nested" in _problems(MINIMAL + "x: " + "[" * 200 + "]" * 200 + "\n")[0]
    assert "nested too deeply" in _problems(MINIMAL + "x: " + "[" * 5000 + "]" * 5000 + "\n")[0]


@pytest.mark.parametrize("machine_id", ['"fan-01\\n"', '"fan-01\\r"', '"fan\\t01"', '"fan\\u0000"', '"fan-01 "'])
def test_machine_id_with_trailing_newline_or_control_characters_is_refused(machine_id: str) -> None:
    problems = _problems(MINIMAL.replace("fan-1", machine_id, 1))
    assert len(problems) == 1 and problems[0].startswith("c.yaml:2: machine.id: got "), problems


def test_control_characters_are_refused_in_every_string() -> None:
    problems = _problems(MINIMAL.replace("m.tflite", '"m\\n.tflite"') + 'mqtt:\n  host: "broker\\x00"\n')
    assert [p.split(": got")[0] for p in problems] == ["c.yaml:4: model.path", "c.yaml:6: mqtt.host"]


@pytest.mark.parametrize("section,key,value", [
    ("mqtt", "prefix", "plant/#"), ("mqtt", "prefix", "plant/+/fan"), ("mqtt", "prefix", "a//b"),
    ("mqtt", "prefix", "/a"), ("mqtt", "prefix", "$SYS/x"), ("mqtt", "prefix", "/"),
    ("homeassistant", "discovery_prefix", "home/#"), ("homeassistant", "discovery_prefix", "+"),
    ("homeassistant", "discovery_prefix", "ha//x"), ("homeassistant", "discovery_prefix", "''"),
])
def test_topics_are_validated_at_load(section: str, key: str, value: str) -> None:
    body = f"mqtt:\n  {key}: {value}\n" if section == "mqtt" else f"mqtt:\n  homeassistant:\n    {key}: {value}\n"
    problems = _problems(MINIMAL + body)
    dotted = "mqtt.prefix" if section == "mqtt" else "mqtt.homeassistant.discovery_prefix"
    assert len(problems) == 1 and f": {dotted}: got " in problems[0], problems
    assert problems[0].startswith("c.yaml:6:" if section == "mqtt" else "c.yaml:7:")


def test_site_that_breaks_the_default_prefix_is_refused_but_fine_with_an_explicit_prefix() -> None:
    problems = _problems(MINIMAL.replace("id: fan-1", "id: fan-1\n  site: hall/#"))
    assert len(problems) == 1 and "machine.site" in problems[0] and "wildcard" in problems[0]
    cfg = parse_config(MINIMAL.replace("id: fan-1", "id: fan-1\n  site: hall/#") + "mqtt:\n  prefix: plant/fan-1/\n")
    assert cfg.mqtt.prefix == "plant/fan-1"  # one trailing slash is tolerated and dropped


def test_relative_outbox_and_clips_paths_follow_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "machines"
    folder.mkdir(parents=True)
    path = folder / "fan.yaml"
    path.write_text(MINIMAL + "mqtt:\n  outbox_path: state/outbox.sqlite\nclips:\n  dir: clips\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        cfg = load_config("../etc/machines/fan.yaml")
    finally:
        os.chdir(cwd)
    assert Path(cfg.mqtt.outbox_path) == folder.resolve() / "state" / "outbox.sqlite"
    assert Path(cfg.clips.dir) == folder.resolve() / "clips"


def test_huge_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(MINIMAL + "# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_check_config_on_hostile_files_exits_2_without_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name, text in {"laughs.yaml": _billion_laughs(), "keys.yaml": MINIMAL + "? [a]\n: 1\n",
                       "loop.yaml": MINIMAL + "x: &x [*x]\n", "ha.yaml": MINIMAL + "mqtt:\n  homeassistant:\n"
                                                                               "    discovery_prefix: 'ha/#'\n"}.items():
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run([sys.executable, "-m", "edge_monitor", "check-config", "--skip-model", str(path)],
                                capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        assert result.returncode == 2, (name, result.stderr)
        assert "Traceback" not in result.stderr and f"{path}:" in result.stderr, (name, result.stderr)


# ---------------------------------------------------------------- the fuzzer

TOKENS = ["2024-13-45", "2024-01-05", "[a, b]", "{a: 1}", ".nan", ".inf", "-.inf", "!!binary aGk=",
          "!!python/none ''", "1" + "0" * 5000, "0x1F", "~", "'a\\nb'", '"x\\u0000y"', '"fan-1\\n"', "*nope",
          "&a x", "? [1]", "!!set {1}", "1e999", "-1", "0", "true", "'#'", "a/+/b", "'a//b'", "12:30:00",
          "!!timestamp 2001-12-14", "[]", "{}", "!!float x", "!!int x", "<<: *a", "|", ">-", "'", '"', "@",
          "`", "%", "!foo bar", "[[[[[[[[]]]]]]]]", "&r [*r]", "\t", "\x00", "\x85", ":", "-", "#"]
INSERTS = ["? [1, 2]: 1", "[a]: b", "{x: 1}: 2", "&x y: 1", "*x: 2", "x: 1", "<<: {a: 1}", "- item"]

_op = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 200)),
    st.tuples(st.just("duplicate"), st.integers(0, 200)),
    st.tuples(st.just("value"), st.integers(0, 200), st.sampled_from(TOKENS)),
    st.tuples(st.just("indent"), st.integers(0, 200), st.integers(0, 6)),
    st.tuples(st.just("insert_text"), st.integers(0, 200), st.integers(0, 80), st.sampled_from(TOKENS)),
    st.tuples(st.just("insert_line"), st.integers(0, 200), st.sampled_from(INSERTS)),
    st.tuples(st.just("swap"), st.integers(0, 200), st.integers(0, 200)),
)


def mutate(text: str, ops: list[tuple]) -> str:
    """Apply line-level mutations to a YAML text."""
    lines = text.splitlines() or [""]
    for op in ops:
        i = op[1] % len(lines)
        if op[0] == "delete" and len(lines) > 1:
            del lines[i]
        elif op[0] == "duplicate":
            lines.insert(i, lines[i])
        elif op[0] == "value" and ":" in lines[i]:
            lines[i] = lines[i].partition(":")[0] + ": " + op[2]
        elif op[0] == "indent":
            lines[i] = " " * op[2] + lines[i].lstrip()
        elif op[0] == "insert_text":
            pos = op[2] % (len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + op[3] + lines[i][pos:]
        elif op[0] == "insert_line":
            lines.insert(i, op[2])
        elif op[0] == "swap":
            j = op[2] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


def _check_invariants(cfg: Config) -> None:
    """What every loaded config guarantees to the daemon."""
    assert cfg.machine.id.isprintable() and cfg.machine.id.strip() == cfg.machine.id
    assert topic_problem(mqtt_prefix(cfg)) is None
    assert topic_problem(cfg.mqtt.homeassistant.discovery_prefix) is None
    for section in (cfg.machine, cfg.model, cfg.source, cfg.detection, cfg.health, cfg.mqtt, cfg.clips):
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            if isinstance(v, str):
                assert v.isprintable(), (f.name, v)
            if isinstance(v, float):
                assert v == v and abs(v) != float("inf"), (f.name, v)
    d = cfg.detection
    assert 1 <= d.trigger_k <= d.trigger_n
    assert d.clear_threshold is None or d.threshold is None or d.clear_threshold <= d.threshold


@pytest.mark.skipif(not EXAMPLES, reason="no example configs")
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(example=st.sampled_from(range(len(EXAMPLE_TEXTS)) if EXAMPLE_TEXTS else [0]),
       ops=st.lists(_op, min_size=1, max_size=4))
def test_fuzz_mutated_example_configs_give_config_errors_only(example: int, ops: list[tuple]) -> None:
    text = mutate(EXAMPLE_TEXTS[example], ops)
    try:
        cfg = parse_config(text, "fuzz.yaml", Path("/etc/edge-monitor"))
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml") for p in exc.problems), exc.problems
        assert all("\n" not in p for p in exc.problems), exc.problems
        return
    _check_invariants(cfg)
