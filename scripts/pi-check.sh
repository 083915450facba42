#!/usr/bin/env bash
# Check the README's Raspberry Pi set-up in an emulated 64-bit Debian root, as a new user would try it.
#
#   sudo bash scripts/pi-check.sh [bookworm|trixie] [arm64|armhf]   (default bookworm arm64; root, network)
#
# 1. Builds (once) a Debian root for the architecture with debootstrap (--include=ca-certificates,git),
#    then copies it to a fresh working root for every run, so each run starts from a clean system.
#    arm64 stands for the 64-bit Raspberry Pi OS, armhf for the 32-bit one (a 32-bit kernel: uname -m
#    says armv7l).
# 2. Runs it under qemu-user-static with a Raspberry Pi CPU: QEMU_CPU=cortex-a72 (Pi 4; PI_CHECK_CPU=
#    cortex-a76 for a Pi 5; armhf: cortex-a15, the nearest 32-bit model qemu-arm has) and a Pi-style
#    /proc/cpuinfo bind-mounted over the emulator's. Both matter: with qemu's default CPU model
#    ai-edge-litert 2.2/2.3 crash in Interpreter.__init__ and 2.1.6 scores wrongly, which is the
#    emulator, not a Pi.
# 3. Clones this repository's HEAD (PI_CHECK_REF to choose another commit) inside the root with its git
#    and runs the README's demo command exactly as written: `bash scripts/demo.sh`.
# 4. Runs the same demo from a clone on this (x86) machine and compares the alerts: types, scores and
#    offsets must match (on armhf, which runs tflite-runtime, scores within 1%).
#
# Results: $PI_CHECK_DIR/<suite>-result.txt (versions, venv size, apt download and disk size, demo
# output). Timings under emulation are NOT Raspberry Pi timings; the script prints none.
# Environment: PI_CHECK_DIR (default /var/tmp/edge-monitor-pi-check), PI_CHECK_MIRROR, PI_CHECK_CPU,
# PI_CHECK_REF, and PI_CHECK_CA_CERT: a PEM file of extra CA certificates for a network behind a
# TLS-inspecting proxy (added to the root's trust store, and pip inside is pointed at that store).
set -euo pipefail

SUITE="${1:-bookworm}"
ARCH="${2:-arm64}"
case "$SUITE" in
    bookworm|trixie) ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [bookworm|trixie] [arm64|armhf]" >&2; exit 2 ;;
esac
case "$ARCH" in
    arm64) QEMU=qemu-aarch64; DEFAULT_CPU=cortex-a72 ;;
    armhf) QEMU=qemu-arm; DEFAULT_CPU=cortex-a15 ;;
    *) echo "usage: $0 [bookworm|trixie] [arm64|armhf]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "pi-check: run as root (debootstrap, chroot and mounts need it)" >&2; exit 2; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${PI_CHECK_DIR:-/var/tmp/edge-monitor-pi-check}"
MIRROR="${PI_CHECK_MIRROR:-http://deb.debian.org/debian}"
CPU="${PI_CHECK_CPU:-$DEFAULT_CPU}"
REF="$(git -C "$REPO" rev-parse "${PI_CHECK_REF:-HEAD}")"
NAME="$SUITE-$ARCH"
BASE="$WORK/$NAME"                 # pristine debootstrap root, built once
ROOT="$WORK/$NAME-run"             # fresh copy for this run
RESULT="$WORK/$NAME-result.txt"
PI_LOG="$WORK/$NAME-pi-demo.log"
X86_LOG="$WORK/$NAME-x86-demo.log"
mkdir -p "$WORK"

say() { echo "pi-check: $*" >&2; }

# ---------------------------------------------------------------- host tools and binfmt
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -x "/usr/bin/$QEMU-static" ] || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e "/proc/sys/fs/binfmt_misc/$QEMU" ] || update-binfmts --enable "$QEMU"
grep -q '^enabled' "/proc/sys/fs/binfmt_misc/$QEMU" || { say "binfmt $QEMU is not enabled"; exit 1; }

# ---------------------------------------------------------------- the root
if [ ! -e "$BASE/.edge-monitor-pi-check" ]; then
    rm -rf "$BASE"
    say "debootstrap $SUITE $ARCH from $MIRROR into $BASE (both stages under emulation; takes a while)"
    if ! debootstrap --arch="$ARCH" --include=ca-certificates,git "$SUITE" "$BASE" "$MIRROR" \
            >"$WORK/$NAME-debootstrap.log" 2>&1; then
        say "debootstrap failed; the end of $WORK/$NAME-debootstrap.log:"
        tail -n 20 "$WORK/$NAME-debootstrap.log" >&2
        [ -f "$BASE/debootstrap/debootstrap.log" ] && tail -n 20 "$BASE/debootstrap/debootstrap.log" >&2
        exit 1
    fi
    touch "$BASE/.edge-monitor-pi-check"
fi

MOUNTS=()
cleanup() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mount "$@"; MOUNTS+=("${!#}"); }

say "fresh working root $ROOT"
rm -rf "$ROOT"
cp -a --reflink=auto "$BASE" "$ROOT"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp "/usr/bin/$QEMU-static" "$ROOT/usr/bin/"   # for binfmt entries without the F flag
EXTRA_ENV=()
if [ -n "${PI_CHECK_CA_CERT:-}" ]; then
    cp "$PI_CHECK_CA_CERT" "$ROOT/usr/local/share/ca-certificates/pi-check-extra.crt"
    chroot "$ROOT" /usr/sbin/update-ca-certificates >/dev/null 2>&1
    EXTRA_ENV=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi

# A Raspberry Pi 4 (or 5) /proc/cpuinfo: the emulator would otherwise show the host's.
case "$CPU" in
    cortex-a76) PART=0xd0b; REV=1; VARIANT=0x4; MODEL="Raspberry Pi 5 Model B Rev 1.0"; BOARD=d04170 ;;
    *)          PART=0xd08; REV=3; VARIANT=0x0; MODEL="Raspberry Pi 4 Model B Rev 1.5"; BOARD=d03115 ;;
esac
CPUINFO="$WORK/cpuinfo-$ARCH-$CPU"
{
    for n in 0 1 2 3; do
        if [ "$ARCH" = armhf ]; then  # what a 32-bit kernel shows on a Pi 4
            printf 'processor\t: %s\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n' "$n"
            printf 'Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n'
            printf 'CPU implementer\t: 0x41\nCPU architecture: 7\n'
        else
            printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$n"
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\n'
        fi
        printf 'CPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$VARIANT" "$PART" "$REV"
    done
    [ "$ARCH" = armhf ] && printf 'Hardware\t: BCM2835\n'
    printf 'Revision\t: %s\nSerial\t\t: 10000000e1f2a3b4\nModel\t\t: %s\n' "$BOARD" "$MODEL"
} >"$CPUINFO"

bind -t proc proc "$ROOT/proc"
bind -t sysfs sys "$ROOT/sys"
bind --bind /dev "$ROOT/dev"
bind --bind /dev/pts "$ROOT/dev/pts"
bind --bind "$CPUINFO" "$ROOT/proc/cpuinfo"
mkdir -p "$ROOT/mnt/edge-monitor-src"
bind --bind -o ro "$REPO" "$ROOT/mnt/edge-monitor-src"

in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$CPU" "${EXTRA_ENV[@]}" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$1"
}

# ---------------------------------------------------------------- the demo on the emulated Pi
say "cloning $REF and running 'bash scripts/demo.sh' in the $NAME root (QEMU_CPU=$CPU)"
in_root "git -c safe.directory='*' clone -q --no-local /mnt/edge-monitor-src /root/edge-monitor \
         && git -C /root/edge-monitor checkout -q $REF"
set +e
in_root "cd /root/edge-monitor && bash scripts/demo.sh" >"$PI_LOG" 2>&1
PI_RC=$?
set -e
in_root "cd /root/edge-monitor && {
    echo \"arch: \$(uname -m), \$(. /etc/os-release; echo \$PRETTY_NAME), glibc \$(ldd --version | head -n1 | awk '{print \$NF}')\"
    echo \"python: \$(python3 --version 2>&1)\"
    echo \"cpuinfo seen: \$(grep -m1 ^Model /proc/cpuinfo)\"
    if [ -x .venv/bin/python ]; then
        echo \"venv size: \$(du -sm .venv | cut -f1) MB\"
        echo 'packages:'; .venv/bin/python -m pip list --format=freeze 2>/dev/null | sed 's/^/  /'
        .venv/bin/python -c 'from edge_monitor.model import interpreter_class; print(\"runtime:\", interpreter_class()[1])'
    fi
    if [ -x .venv/bin/python ]; then  # what pip fetched for the install, fetched again to weigh it
        .venv/bin/python -m pip freeze 2>/dev/null | grep -v '^edge-monitor' >/tmp/pi-check-req.txt
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d /tmp/pi-check-wheels \
            -r /tmp/pi-check-req.txt >/dev/null 2>&1 &&
            echo \"wheels pip installed: \$(ls /tmp/pi-check-wheels | wc -l), \$(du -sm /tmp/pi-check-wheels | cut -f1) MB download\"
    fi
}" >"$WORK/$NAME-pi-facts.txt" 2>&1 || true

# ---------------------------------------------------------------- the same demo on this machine
say "running the same demo from a clone on $(uname -m)"
X86="$WORK/x86-clone"
if [ ! -d "$X86/.git" ]; then git -c safe.directory='*' clone -q --no-local "$REPO" "$X86"; fi
git -C "$X86" fetch -q "$REPO" "$REF" && git -C "$X86" checkout -q --force "$REF"
set +e
(cd "$X86" && bash scripts/demo.sh) >"$X86_LOG" 2>&1
X86_RC=$?
set -e
# ai-edge-litert (x86 and arm64) gives the same scores everywhere; tflite-runtime on a 32-bit root differs
# from it a little (its int8 kernels round differently from XNNPACK, and 32-bit numpy's features differ
# in the last bits), so there the scores must agree within SCORE_RTOL and the offsets exactly.
SCORE_RTOL=0
grep -q '^runtime: tflite_runtime' "$WORK/$NAME-pi-facts.txt" && SCORE_RTOL=0.01

# ---------------------------------------------------------------- compare
alerts() {  # one line per alert: type, score, where it falls in the recording (recording_s) when printed
    python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "alert":
            at = f" at {obj['recording_s']:.3f} s of the recording" if "recording_s" in obj else ""
            print(f"{obj['type']} score {obj['score']:.6f}{at}")
EOF
}
PI_ALERTS="$(alerts "$PI_LOG")"
X86_ALERTS="$(alerts "$X86_LOG")"
same_alerts() {  # same types and offsets, scores within SCORE_RTOL (0: identical)
    python3 - "$1" "$2" "$SCORE_RTOL" <<'EOF'
import sys
a, b = (x.splitlines() for x in sys.argv[1:3])
rtol = float(sys.argv[3])
def parts(line):
    kind, _, score, *rest = line.split()
    return kind, float(score), " ".join(rest)
ok = len(a) == len(b) and all(
    pa[0] == pb[0] and pa[2] == pb[2] and abs(pa[1] - pb[1]) <= rtol * abs(pb[1])
    for pa, pb in (map(parts, pair) for pair in zip(a, b)))
sys.exit(0 if ok else 1)
EOF
}
{
    echo "edge-monitor pi-check: $SUITE $ARCH under qemu-user ($("/usr/bin/$QEMU-static" --version | head -n1)),"
    echo "QEMU_CPU=$CPU, Pi-style /proc/cpuinfo; commit $REF; $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "Emulated: timings here are not Raspberry Pi timings."
    echo
    cat "$WORK/$NAME-pi-facts.txt"
    echo
    echo "apt (scripts/demo.sh):"
    grep -E "^(Need to get|After this operation|[0-9]+ upgraded)" "$PI_LOG" | sed 's/^/  /' || echo "  (no apt step)"
    echo
    echo "demo output on the emulated Pi (exit $PI_RC), the daemon's lines:"
    grep -E "^(INFO|WARNING|ERROR|CRITICAL|\{|edge-monitor)" "$PI_LOG" | tail -n 25 | sed 's/^/  /'
    echo
    echo "alerts on the emulated Pi:"; echo "${PI_ALERTS:-  (none)}" | sed 's/^/  /'
    echo "alerts on $(uname -m), ai-edge-litert (exit $X86_RC):"; echo "${X86_ALERTS:-  (none)}" | sed 's/^/  /'
    [ "$SCORE_RTOL" = 0 ] && echo "required: the same alerts" ||
        echo "required: the same alert types and offsets, scores within a relative $SCORE_RTOL (tflite-runtime)"
} | tee "$RESULT"

if [ "$PI_RC" -ne 0 ]; then say "FAIL: the demo exited with $PI_RC on the emulated Pi (see $PI_LOG)"; exit 1; fi
if [ -z "$PI_ALERTS" ]; then say "FAIL: no alert on the emulated Pi"; exit 1; fi
if [ "$X86_RC" -ne 0 ] || ! same_alerts "$PI_ALERTS" "$X86_ALERTS"; then
    say "FAIL: the alerts differ from $(uname -m)"; exit 1
fi
say "PASS: $SUITE $ARCH gives the same alerts as $(uname -m); results in $RESULT"
