#!/usr/bin/env bash
# Install edge-monitor into ./.venv and run the daemon on the bundled demo recording.
# Set MQTT_HOST (and optionally MQTT_PORT) to also publish the alerts to a broker.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null || ! ldconfig -p | grep -q libportaudio.so.2; then
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip libportaudio2
fi
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q .
MQTT_ARGS=()
[ -n "${MQTT_HOST:-}" ] && MQTT_ARGS=(--mqtt "${MQTT_HOST}:${MQTT_PORT:-1883}")
exec .venv/bin/edge-monitor run "${MQTT_ARGS[@]}"
