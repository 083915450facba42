"""The shipped systemd unit, sysusers and tmpfiles files, checked with systemd's own tools."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "edge-monitor@.service"
SYSUSERS = SYSTEMD_DIR / "edge-monitor.sysusers"
TMPFILES = SYSTEMD_DIR / "edge-monitor.tmpfiles"
BINARY = "/opt/edge-monitor/bin/edge-monitor"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create files owned by other users")


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> [values]`` of a unit file, in order; repeated keys keep every value."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def instance_copy(tmp_path: Path, instance: str = "fan") -> Path:
    """The real unit as a concrete instance whose executable exists, so ``verify`` can check it fully."""
    fake_binary = tmp_path / "bin" / "edge-monitor"
    fake_binary.parent.mkdir()
    fake_binary.write_text("#!/bin/sh\nexit 0\n")
    fake_binary.chmod(fake_binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    text = UNIT.read_text()
    assert text.count(BINARY) == 3  # ExecStartPre, ExecStart and the first ExecReload
    unit_path = tmp_path / f"edge-monitor@{instance}.service"
    unit_path.write_text(text.replace(BINARY, str(fake_binary)))
    return unit_path


def test_unit_keeps_its_contract() -> None:
    s = unit_settings(UNIT.read_text())
    assert s[("Service", "Type")] == ["notify"]
    assert s[("Service", "ExecStartPre")] == [f"{BINARY} check-config /etc/edge-monitor/%i.yaml"]
    assert s[("Service", "ExecStart")] == [f"{BINARY} run --config /etc/edge-monitor/%i.yaml"]
    assert s[("Service", "ExecReload")] == [f"{BINARY} check-config /etc/edge-monitor/%i.yaml", "/bin/kill -HUP $MAINPID"]
    assert s[("Service", "Restart")] == ["on-failure"]
    assert s[("Service", "WatchdogSec")] and s[("Service", "WatchdogSec")][0] != "0"
    assert s[("Unit", "StartLimitIntervalSec")] and s[("Unit", "StartLimitBurst")]
    assert s[("Service", "StateDirectory")] == ["edge-monitor/%i"]
    assert s[("Service", "User")] == ["edge-monitor"]
    assert set(s[("Service", "SupplementaryGroups")][0].split()) == {"audio", "dialout"}
    assert s[("Service", "LoadCredential")] == ["mqtt-password:/etc/edge-monitor/%i.mqtt-password"]
    # Without a fallback, a missing password file would stop the service from starting.
    assert [v.split(":", 1)[0] for v in s[("Service", "SetCredential")]] == ["mqtt-password"]
    assert set(s[("Service", "RestrictAddressFamilies")][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert set(s[("Service", "DeviceAllow")]) == {"char-alsa rw", "char-ttyACM rw", "char-ttyUSB rw"}
    assert s[("Service", "DevicePolicy")] == ["closed"]
    # sounddevice's cffi callback needs W+X memory; PrivateDevices= would hide re-plugged devices.
    assert s[("Service", "MemoryDenyWriteExecute")] == ["no"]
    assert ("Service", "PrivateDevices") not in s
    assert s[("Install", "WantedBy")] == ["multi-user.target"]


@needs_analyze
@pytest.mark.timeout(120)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit_path = instance_copy(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(unit_path)],
                            capture_output=True, text=True, timeout=100, check=False)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if unit_path.name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@needs_analyze
@pytest.mark.timeout(120)
def test_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    unit_path = instance_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit_path)],
        capture_output=True, text=True, timeout=100, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE
    assert result.returncode == 0, result.stdout


@needs_root
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers or systemd-tmpfiles is not installed")
@pytest.mark.timeout(120)
def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\naudio:x:29:\ndialout:x:20:\n")
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
                   check=True, capture_output=True, timeout=100)
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "group").read_text().splitlines()}
    user = passwd["edge-monitor"]
    assert user[5] == "/var/lib/edge-monitor"
    assert user[6].endswith("nologin")
    assert "edge-monitor" in groups["audio"][3].split(",")
    assert "edge-monitor" in groups["dialout"][3].split(",")
    service_gid = int(groups["edge-monitor"][2])

    conf = root / "etc" / "edge-monitor"
    (conf / "models").mkdir(parents=True)
    (conf / "fan.yaml").write_text("machine: {id: fan}\n")
    (conf / "fan.yaml").chmod(0o666)
    (conf / "fan.mqtt-password").write_text("secret\n")
    (conf / "fan.mqtt-password").chmod(0o644)
    (conf / "models" / "fan.tflite").write_bytes(b"model")
    (conf / "tls").mkdir()
    (conf / "tls" / "client.key").write_text("key")
    (conf / "tls" / "client.key").chmod(0o600)
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
                   check=True, capture_output=True, timeout=100)

    def mode_and_owner(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    assert mode_and_owner(conf) == (0o750, 0, service_gid)
    assert mode_and_owner(conf / "models") == (0o750, 0, service_gid)
    assert mode_and_owner(conf / "fan.yaml") == (0o640, 0, service_gid)
    assert mode_and_owner(conf / "models" / "fan.tflite") == (0o640, 0, service_gid)
    assert mode_and_owner(conf / "tls") == (0o750, 0, service_gid)
    assert mode_and_owner(conf / "tls" / "client.key") == (0o640, 0, service_gid)
    assert mode_and_owner(conf / "fan.mqtt-password") == (0o600, 0, 0)
