"""The ``web:`` section: off by default, localhost by default, never beyond localhost without a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_monitor.config import ConfigError, is_loopback, parse_config

BASE = "machine: {id: fan-1}\nmodel: {path: m.tflite}\n"


def _problems(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra, "m.yaml", Path("/etc/em"))
    return info.value.problems


def test_defaults_are_off_and_local() -> None:
    web = parse_config(BASE, "m.yaml").web
    assert (web.enabled, web.host, web.port, web.password_file, web.tls) == (False, "127.0.0.1", 8099, None, None)


def test_lan_without_password_is_refused_with_line_key_and_value() -> None:
    problems = _problems("web:\n  enabled: true\n  host: 0.0.0.0\n")
    assert len(problems) == 1
    assert problems[0].startswith("m.yaml:3: web.password_file: got None; expected a password file")
    assert "'0.0.0.0'" in problems[0]


def test_lan_with_password_and_tls_resolves_paths() -> None:
    cfg = parse_config(BASE + "web:\n  enabled: true\n  host: 0.0.0.0\n  password_file: pw\n"
                       "  tls: {cert: c.pem, key: /k.pem}\n", "m.yaml", Path("/etc/em"))
    assert cfg.web.password_file == "/etc/em/pw"
    assert (cfg.web.tls.cert, cfg.web.tls.key) == ("/etc/em/c.pem", "/k.pem")


def test_credential_password_is_kept_as_a_name() -> None:
    cfg = parse_config(BASE + "web: {enabled: true, host: '::', password_file: 'credential:web'}\n", "m.yaml")
    assert cfg.web.password_file == "credential:web"


def test_bad_values_are_all_reported() -> None:
    problems = _problems("web:\n  prot: 1\n  port: 70000\n  tls: {cert: c.pem}\n")
    text = "\n".join(problems)
    assert "m.yaml:4: web.prot: unknown key (did you mean 'port'?)" in text
    assert "m.yaml:5: web.port: got 70000" in text


def test_half_tls_is_refused() -> None:
    problems = _problems("web:\n  tls: {cert: c.pem}\n")
    assert problems == ["m.yaml:4: web.tls: got 'cert/key'; expected both cert and key (PEM files)"]


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.1.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")
