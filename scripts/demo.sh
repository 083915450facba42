#!/usr/bin/env bash
# Install edge-monitor into ./.venv and run the daemon on the bundled demo recording.
# Set MQTT_HOST (and optionally MQTT_PORT) to also publish the alerts to a broker, and DEMO_LIVE=1 to
# play it in real time on a loop (edge-monitor run --demo-live).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# 32-bit userland (armhf Raspberry Pi OS), also on a 64-bit kernel where `uname -m` says aarch64: no
# ai-edge-litert wheel exists there, so pip must see a 32-bit machine to pick tflite-runtime (setup.cfg),
# and numpy<2, PyYAML and cffi come from Debian instead of being compiled.
PIP_ARCH=()
APT_32BIT=()
if [ "$(getconf LONG_BIT)" = 32 ]; then
    APT_32BIT=(python3-numpy python3-yaml python3-cffi)
    case "$(uname -m)" in aarch64|arm64) PIP_ARCH=(linux32) ;; esac
fi
need_apt=0
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt=1
ldconfig -p | grep -q libportaudio.so.2 || need_apt=1
[ "${#APT_32BIT[@]}" -gt 0 ] && ! python3 -c 'import numpy, yaml, cffi' 2>/dev/null && need_apt=1
if [ "$need_apt" = 1 ]; then
    $SUDO apt-get update -q
    # Recommends would add a compiler and headers (about 100 MB download): every wheel we need is prebuilt.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3-venv libportaudio2 "${APT_32BIT[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
"${PIP_ARCH[@]}" .venv/bin/python -m pip install -q --upgrade pip >/dev/null
"${PIP_ARCH[@]}" .venv/bin/python -m pip install -q .
MQTT_ARGS=()
[ -n "${MQTT_HOST:-}" ] && MQTT_ARGS=(--mqtt "${MQTT_HOST}:${MQTT_PORT:-1883}")
# DEMO_LIVE=1: the same recording at real-time pace on a loop, until Ctrl-C (watch it in Home Assistant)
[ -n "${DEMO_LIVE:-}" ] && MQTT_ARGS+=(--demo-live)
exec .venv/bin/edge-monitor run "${MQTT_ARGS[@]}"
