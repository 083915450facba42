#!/usr/bin/env bash
# Build (or reuse) a side venv with a real Home Assistant for scripts/ha-check.sh and
# tests/test_homeassistant_real.py.  Usage: bash scripts/ha-venv.sh [VENV_DIR]   (default .venv-ha)
#
# Home Assistant 2024.3.3 is the newest release that runs on Python 3.11. Its wheel pins its whole
# dependency tree in homeassistant/package_constraints.txt, which is used as a pip constraint; josepy<2
# keeps acme importable. The integrations the check loads (mqtt, api, onboarding and their dependencies)
# get their requirements installed here too, so Home Assistant runs with --skip-pip and installs
# nothing at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
HA_VERSION="${HA_VERSION:-2024.3.3}"
# What the check loads; Home Assistant 2024.3 goes into recovery mode without the frontend.
INTEGRATIONS="mqtt api onboarding frontend"
VENV="${1:-.venv-ha}"
STAMP="$VENV/edge-monitor-ha-version"
if [ -x "$VENV/bin/hass" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$HA_VERSION $INTEGRATIONS" ]; then
    echo "ha-venv: $VENV already has Home Assistant $HA_VERSION"
    exit 0
fi
start_s=$(date +%s)
rm -rf "$VENV"
PY="${HA_PYTHON:-python3}"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip wheel >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" -m pip download -q --no-deps -d "$work" "homeassistant==$HA_VERSION"
"$VENV/bin/python" - "$work" <<'EOF'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
wheel = next(work.glob("homeassistant-*.whl"))
with zipfile.ZipFile(wheel) as z:
    text = z.read("homeassistant/package_constraints.txt").decode()
# Keep only the version pins: the file also holds "# comments" and a few lines pip reads as options.
(work / "constraints.txt").write_text(
    "".join(line + "\n" for line in text.splitlines() if line.strip() and not line.startswith(("#", "-"))))
EOF
"$VENV/bin/python" -m pip install -q -c "$work/constraints.txt" "$work"/homeassistant-*.whl 'josepy<2'
# Requirements of the integrations the check loads, with their dependencies (from the manifests).
"$VENV/bin/python" - $INTEGRATIONS <<'EOF' > "$work/integration-requirements.txt"
import json, pathlib, sys
import homeassistant.components as components
base = pathlib.Path(components.__path__[0])
todo, seen, reqs = sys.argv[1:], set(), set()
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    manifest = json.loads((base / name / "manifest.json").read_text())
    reqs.update(manifest.get("requirements", []))
    todo += manifest.get("dependencies", []) + manifest.get("after_dependencies", [])
print("\n".join(sorted(reqs)))
EOF
if [ -s "$work/integration-requirements.txt" ]; then
    "$VENV/bin/python" -m pip install -q -c "$work/constraints.txt" -r "$work/integration-requirements.txt"
fi
echo "$HA_VERSION $INTEGRATIONS" > "$STAMP"
echo "ha-venv: Home Assistant $HA_VERSION installed in $VENV in $(( $(date +%s) - start_s )) s" \
     "($(du -sm "$VENV" | cut -f1) MB; integration requirements: $(tr '\n' ' ' < "$work/integration-requirements.txt"))"
