#!/usr/bin/env bash
# Install everything the test suite needs (system packages included) into ./.venv and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    python3-venv python3-pip python3-dev build-essential pkg-config openssl \
    libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils \
    mosquitto mosquitto-clients socat chromium chromium-driver \
    arduino-mk arduino-core-avr gcc-avr avr-libc simavr libsimavr-dev libsimavrparts1 libelf-dev \
    systemd
# The test suite starts its own brokers on free ports; a packaged one would only be in the way.
$SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[train,dev]"
# tests/test_tflite_runtime.py builds .venv-tflite (tflite-runtime 2.14, numpy<2) itself; here it must not skip.
export EDGE_MONITOR_REQUIRE_TFLITE_RUNTIME=1
# A real Home Assistant 2024.3.3 in .venv-ha (about 1-3 min to build, reused while its version holds) for
# tests/test_homeassistant_real.py (about 40 s), which must not skip here.
bash scripts/ha-venv.sh
export EDGE_MONITOR_REQUIRE_HA=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
