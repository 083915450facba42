#!/usr/bin/env bash
# The real Home Assistant check: build (or reuse) .venv-ha with Home Assistant 2024.3.3
# (scripts/ha-venv.sh), then run tests/test_homeassistant_real.py: the live demo against a real
# mosquitto and a real Home Assistant, checked through Home Assistant's REST API. Prints what
# Home Assistant showed. Needs the project venv (.venv, e.g. from scripts/test.sh) and mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
start_s=$(date +%s)
bash scripts/ha-venv.sh
venv_s=$(date +%s)
EDGE_MONITOR_REQUIRE_HA=1 .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/test_homeassistant_real.py "$@"
echo "ha-check: venv $(( venv_s - start_s )) s, check $(( $(date +%s) - venv_s )) s"
