"""Regenerate firmware/test_vectors.txt from the Python reference encoder.

Run from the repository root: ``python firmware/tools/make_test_vectors.py``.
The file is committed; the C host tests and tests/test_serial_protocol.py both
check their implementation against it, so a change in either side that breaks
the wire format fails a test. Only regenerate it when the protocol version changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edge_monitor.sources import serial_protocol as sp  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "test_vectors.txt"


def _hex(data: bytes) -> str:
    """Lower-case hex, or '-' for empty."""
    return data.hex() if data else "-"


def main() -> None:
    """Write the vectors file."""
    lines = [
        "# edge-monitor serial protocol v1 test vectors (see PROTOCOL.md).",
        "# One vector per line: <kind> <name> key=value ... ; hex strings, '-' means empty.",
        "# crc:       data=HEX crc=HEX4 (CRC-16/CCITT-FALSE)",
        "# audio:     flags seq rate samples=c,c,... frame=HEX (device -> gateway)",
        "# reply:     flags seq rate payload=HEX frame=HEX (device -> gateway)",
        "# command:   cmd args=HEX frame=HEX (gateway -> device)",
        "# cmdstream: input=HEX cmds=CMD:ARGS;CMD:ARGS (decoded commands, in order; '-' for none)",
        "# framestream: input=HEX seqs=s,s,... crc_errors=N (decoded audio frame seqs)",
        "# sample: code=C float=F (10-bit code -> float sample)",
    ]
    lines.append("crc check_string data=" + b"123456789".hex() + " crc=29b1")
    lines.append("crc empty data=- crc=ffff")
    lines.append("crc zeros data=" + bytes(8).hex() + f" crc={sp.crc16(bytes(8)):04x}")

    audio_cases = [
        ("one_sample_mid", sp.Flag.STREAMING | sp.Flag.BOOT | sp.Flag.RESTART, 0, 16000, [512]),
        ("extremes", sp.Flag.STREAMING, 1, 16000, [0, 1023, 512, 511, 513]),
        ("rate_8k_alarm", sp.Flag.STREAMING | sp.Flag.ALARM, 65535, 8000, [100, 200, 300, 400]),
        ("overrun", sp.Flag.STREAMING | sp.Flag.OVERRUN, 4660, 16000, list(range(0, 1024, 64))),
    ]
    rng = np.random.default_rng(5)
    audio_cases.append(("full_block_128", sp.Flag.STREAMING, 42, 16000,
                        [int(v) for v in rng.integers(0, 1024, 128)]))
    frames = {}
    for name, flags, seq, rate, samples in audio_cases:
        frame = sp.encode_frame(np.array(samples), seq=seq, sample_rate_hz=rate, flags=flags)
        frames[name] = frame
        lines.append(f"audio {name} flags={int(flags)} seq={seq} rate={rate} "
                     f"samples={','.join(map(str, samples))} frame={frame.hex()}")

    ping_data = bytes([1, 1, 0, 0]) + b"uno"
    for name, flags, seq, rate, payload in [
        ("ping_reply", 0x01, 3, 16000, bytes([sp.Command.PING, sp.Status.OK]) + ping_data),
        ("alarm_ack", 0x03, 4, 16000, bytes([sp.Command.SET_ALARM, sp.Status.OK])),
        ("bad_rate", 0x01, 5, 16000, bytes([sp.Command.SET_RATE, sp.Status.BAD_ARG])),
        ("empty", 0x00, 0, 8000, b""),
    ]:
        frame = sp.encode_reply(payload, seq=seq, sample_rate_hz=rate, flags=flags)
        lines.append(f"reply {name} flags={flags} seq={seq} rate={rate} payload={_hex(payload)} frame={frame.hex()}")

    commands = {
        "ping": (sp.Command.PING, b""),
        "alarm_on": (sp.Command.SET_ALARM, b"\x01"),
        "alarm_off": (sp.Command.SET_ALARM, b"\x00"),
        "rate_8000": (sp.Command.SET_RATE, (8000).to_bytes(2, "little")),
        "rate_16000": (sp.Command.SET_RATE, (16000).to_bytes(2, "little")),
        "start": (sp.Command.START, b""),
        "stop": (sp.Command.STOP, b""),
        "max_args": (0x7F, bytes(range(1, 9))),
    }
    encoded = {}
    for name, (cmd, args) in commands.items():
        encoded[name] = sp.encode_command(cmd, args)
        lines.append(f"command {name} cmd={int(cmd)} args={_hex(args)} frame={encoded[name].hex()}")

    def cmds(*names: str) -> str:
        return ";".join(f"{int(commands[n][0])}:{_hex(commands[n][1])}" for n in names) or "-"

    bad_crc = bytearray(encoded["alarm_on"])
    bad_crc[-1] ^= 0xFF
    long_claim = bytes([0xC3, 0x3C, 0x01, 0x02, 0x08])  # header that claims 8 arg bytes
    streams = [
        ("back_to_back", encoded["alarm_on"] + encoded["start"], cmds("alarm_on", "start")),
        ("garbage_first", bytes([0x00, 0xFF, 0xC3, 0x11, 0x3C, 0xC3]) + encoded["ping"], cmds("ping")),
        ("bad_crc_then_good", bytes(bad_crc) + encoded["alarm_off"], cmds("alarm_off")),
        ("inside_long_claim", long_claim + encoded["stop"], cmds("stop")),
        ("wrong_version", bytes([0xC3, 0x3C, 0x02, 0x01, 0x00, 0x12, 0x34]) + encoded["rate_8000"],
         cmds("rate_8000")),
        ("truncated", encoded["alarm_on"][:-1], "-"),
    ]
    for name, data, expect in streams:
        lines.append(f"cmdstream {name} input={data.hex()} cmds={expect}")

    a, b = frames["extremes"], frames["overrun"]
    broken = bytearray(a)
    broken[20] ^= 0x01
    big_claim = bytes([0xA5, 0x5A, 0x01, 0x01, 0x01, 0, 0, 0x80, 0x3E, 0x00, 0x02])  # claims 512 samples
    fstreams = [
        ("two_frames", a + b, "1,4660", 0),
        ("garbage_between", a + bytes([0xA5, 0xA5, 0x5A, 0x00, 0x13]) + b, "1,4660", 0),
        ("corrupt_payload", bytes(broken) + b, "4660", 1),
        ("inside_big_claim", big_claim + a + b + bytes(1100), "1,4660", 1),
    ]
    for name, data, seqs, crc_errors in fstreams:
        lines.append(f"framestream {name} input={data.hex()} seqs={seqs} crc_errors={crc_errors}")

    for code in (0, 1, 256, 511, 512, 513, 768, 1023):
        lines.append(f"sample code_{code} code={code} float={float(sp.codes_to_float(np.array([code]))[0])!r}")

    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({len(lines)} lines)")


if __name__ == "__main__":
    main()
