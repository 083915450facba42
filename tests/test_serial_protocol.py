"""The serial protocol in Python: shared test vectors (also checked by the C tests) and fuzzing with hypothesis.

Fuzz tests are derandomized so CI is reproducible; set EM_FUZZ_EXAMPLES=5000
(for example) for a longer, randomized run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_monitor.sources import serial_protocol as sp
from edge_monitor.tools import serial_emulator as emu

VECTORS = Path(__file__).resolve().parents[1] / "firmware" / "test_vectors.txt"
_EXAMPLES = int(os.environ.get("EM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 300, derandomize=not _EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_vectors() -> list[tuple[str, str, dict[str, str]]]:
    """``(kind, name, fields)`` for every vector line."""
    out = []
    for line in VECTORS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, name, *rest = line.split()
        out.append((kind, name, dict(item.split("=", 1) for item in rest)))
    return out


def vectors(kind: str) -> list:
    """Vectors of one kind, as pytest params named after the vector."""
    return [pytest.param(fields, id=name) for k, name, fields in load_vectors() if k == kind]


def unhex(text: str) -> bytes:
    """Vector hex ('-' is empty)."""
    return b"" if text == "-" else bytes.fromhex(text)


def decode_all(data: bytes, chunk_sizes: list[int] = (1 << 30,)) -> tuple[list[sp.Frame], sp.FrameDecoder]:
    """Feed ``data`` in chunks cycling through ``chunk_sizes``."""
    decoder = sp.FrameDecoder()
    frames, pos, i = [], 0, 0
    while pos < len(data):
        size = max(1, chunk_sizes[i % len(chunk_sizes)])
        frames += decoder.feed(data[pos:pos + size])
        pos += size
        i += 1
    return frames, decoder


def is_crc_valid(raw: bytes) -> bool:
    """True if the frame bytes' trailing CRC matches their body."""
    return sp.crc16(raw[2:-2]) == int.from_bytes(raw[-2:], "little")


# ---- shared vectors -----------------------------------------------------------------------------


def test_vector_file_covers_every_kind():
    kinds = {k for k, _, _ in load_vectors()}
    assert {"crc", "audio", "reply", "command", "cmdstream", "framestream", "sample"} <= kinds


@pytest.mark.parametrize("v", vectors("crc"))
def test_crc_vectors(v):
    assert sp.crc16(unhex(v["data"])) == int(v["crc"], 16)


@pytest.mark.parametrize("v", vectors("audio"))
def test_audio_frame_vectors(v):
    codes = np.array([int(c) for c in v["samples"].split(",")], dtype=np.uint16)
    frame = unhex(v["frame"])
    assert sp.encode_frame(codes, seq=int(v["seq"]), sample_rate_hz=int(v["rate"]), flags=int(v["flags"])) == frame
    (decoded,), decoder = decode_all(frame)
    assert decoded.is_audio and decoded.seq == int(v["seq"]) and decoded.flags == int(v["flags"])
    assert decoded.sample_rate_hz == int(v["rate"]) and decoded.count == len(codes)
    np.testing.assert_array_equal(decoded.codes(), codes)
    assert decoded.to_bytes() == frame and decoder.crc_errors == 0


@pytest.mark.parametrize("v", vectors("reply"))
def test_reply_frame_vectors(v):
    payload = unhex(v["payload"])
    frame = unhex(v["frame"])
    assert sp.encode_reply(payload, seq=int(v["seq"]), sample_rate_hz=int(v["rate"]), flags=int(v["flags"])) == frame
    (decoded,), _ = decode_all(frame)
    assert decoded.kind == sp.KIND_REPLY and decoded.payload == payload


@pytest.mark.parametrize("v", vectors("command"))
def test_command_vectors(v):
    frame = unhex(v["frame"])
    assert sp.encode_command(int(v["cmd"]), unhex(v["args"])) == frame
    assert sp.CommandDecoder().feed(frame) == [sp.DecodedCommand(int(v["cmd"]), unhex(v["args"]))]


def test_command_helpers_match_vectors():
    frames = {name: unhex(f["frame"]) for k, name, f in load_vectors() if k == "command"}
    assert sp.ping_command() == frames["ping"]
    assert sp.set_alarm_command(True) == frames["alarm_on"]
    assert sp.set_alarm_command(False) == frames["alarm_off"]
    assert sp.set_rate_command(8000) == frames["rate_8000"]
    assert sp.set_rate_command(16000) == frames["rate_16000"]
    assert sp.start_command() == frames["start"] and sp.stop_command() == frames["stop"]
    with pytest.raises(ValueError, match="44100"):
        sp.set_rate_command(44100)


@pytest.mark.parametrize("v", vectors("cmdstream"))
def test_command_stream_vectors(v):
    got = sp.CommandDecoder().feed(unhex(v["input"]))
    want = [] if v["cmds"] == "-" else [
        sp.DecodedCommand(int(c.split(":")[0]), unhex(c.split(":")[1])) for c in v["cmds"].split(";")]
    assert got == want


@pytest.mark.parametrize("v", vectors("framestream"))
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_frame_stream_vectors(v, chunk):
    frames, decoder = decode_all(unhex(v["input"]), [chunk])
    assert [f.seq for f in frames] == [int(s) for s in v["seqs"].split(",")]
    assert decoder.crc_errors == int(v["crc_errors"])


@pytest.mark.parametrize("v", vectors("sample"))
def test_sample_conversion_vectors(v):
    assert float(sp.codes_to_float(np.array([int(v["code"])]))[0]) == float(v["float"])


# ---- conversion and recording encoding ----------------------------------------------------------


def test_int16_and_float_map_to_the_same_codes():
    pcm = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    np.testing.assert_array_equal(sp.int16_to_codes(pcm), sp.float_to_codes(pcm / 32768.0))
    assert sp.int16_to_codes(np.array([-32768, 0, 32767], dtype=np.int16)).tolist() == [0, 512, 1023]


def test_codes_cover_minus_one_to_just_below_one():
    x = sp.codes_to_float(np.arange(1024))
    assert x.dtype == np.float32 and x[0] == -1.0 and x[512] == 0.0 and x[-1] == 1023 / 512 - 1
    assert np.all(np.diff(x) == np.float32(1 / 512))
    assert sp.codes_to_float(np.array([4000]))[0] == x[-1]  # out-of-range codes clip
    np.testing.assert_array_equal(sp.float_to_codes(x), np.arange(1024))
    assert sp.float_to_codes(np.array([-3.0, 3.0])).tolist() == [0, 1023]


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_encode_recording_round_trips_exactly(dtype):
    rng = np.random.default_rng(3)
    n = 128 * 50 + 77  # a final partial block
    if dtype == "int16":
        x = rng.integers(-32768, 32768, n).astype(np.int16)
        expected = sp.codes_to_float(sp.int16_to_codes(x))
    else:
        x = rng.uniform(-1, 1, n).astype(np.float32)
        expected = sp.codes_to_float(sp.float_to_codes(x))
    stream = emu.encode_recording(x, 8000, start_seq=65530)
    frames, decoder = decode_all(stream, [1000, 3, 4096])
    assert [f.count for f in frames] == [128] * 50 + [77]
    assert [f.seq for f in frames] == [(65530 + i) & 0xFFFF for i in range(51)]
    assert frames[0].has(sp.Flag.BOOT) and frames[0].has(sp.Flag.RESTART) and not frames[1].has(sp.Flag.RESTART)
    assert all(f.sample_rate_hz == 8000 for f in frames)
    np.testing.assert_array_equal(np.concatenate([f.samples() for f in frames]), expected)
    assert decoder.bytes_skipped == 0


def test_encoders_refuse_what_the_wire_cannot_carry():
    with pytest.raises(ValueError, match="1..512"):
        sp.encode_frame(np.zeros(513, dtype=np.uint16), seq=0)
    with pytest.raises(ValueError, match="0..1023"):
        sp.encode_frame(np.array([1024]), seq=0)
    with pytest.raises(ValueError, match="mono"):
        emu.encode_recording(np.zeros((10, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="8 argument bytes"):
        sp.encode_command(1, bytes(9))


def test_device_info_parsing():
    info = sp.parse_device_info(bytes([1, 1, 2, 3]) + b"nano")
    assert info == sp.DeviceInfo(protocol_version=1, firmware_version="1.2.3", board_id="nano")
    with pytest.raises(ValueError, match="too short"):
        sp.parse_device_info(b"\x01")


# ---- fuzzing ------------------------------------------------------------------------------------

codes_st = st.lists(st.integers(0, 1023), min_size=1, max_size=300).map(lambda c: np.array(c, dtype=np.uint16))
frame_st = st.builds(lambda codes, seq, rate, flags: sp.encode_frame(codes, seq=seq, sample_rate_hz=rate, flags=flags),
                     codes_st, st.integers(0, 0xFFFF), st.sampled_from([8000, 16000]), st.integers(0, 0x1F))
reply_st = st.builds(lambda payload, seq: sp.encode_reply(payload, seq=seq),
                     st.binary(min_size=0, max_size=64), st.integers(0, 0xFFFF))
# garbage biased toward bytes that start false headers
garbage_st = st.lists(st.one_of(st.integers(0, 255), st.sampled_from([0xA5, 0x5A, 0x01, 0x02, 0x00])),
                      max_size=600).map(bytes)
chunks_st = st.lists(st.integers(1, 700), min_size=1, max_size=8)


@FUZZ
@given(data=st.binary(max_size=4000), chunks=chunks_st)
def test_fuzz_random_bytes_never_raise_and_never_yield_bad_frames(data, chunks):
    frames, decoder = decode_all(data, chunks)
    for f in frames:
        raw = f.to_bytes()
        assert is_crc_valid(raw) and raw in data
    assert decoder.bytes_skipped <= len(data)


@FUZZ
@given(garbage=garbage_st, frames=st.lists(st.one_of(frame_st, reply_st), min_size=2, max_size=5), chunks=chunks_st)
def test_fuzz_decoder_resynchronises_after_garbage(garbage, frames, chunks):
    decoded, decoder = decode_all(garbage + b"".join(frames), chunks)
    raws = [f.to_bytes() for f in decoded]
    # every frame after the garbage comes out, in order: resync costs no real frame
    assert raws[len(raws) - len(frames):] == frames
    for raw in raws:
        assert is_crc_valid(raw)


@FUZZ
@given(frames=st.lists(frame_st, min_size=3, max_size=6), data=st.data(), chunks=chunks_st)
def test_fuzz_bit_flips_never_yield_a_corrupted_frame(frames, data, chunks):
    stream = bytearray(b"".join(frames))
    flips = data.draw(st.lists(st.integers(0, len(stream) * 8 - 1), min_size=1, max_size=3, unique=True))
    for bit in flips:
        stream[bit // 8] ^= 1 << (bit % 8)
    decoded, _ = decode_all(bytes(stream), chunks)
    raws = [f.to_bytes() for f in decoded]
    # CRC-16/CCITT detects every error of up to 3 bits in a frame this size
    assert all(raw in frames for raw in raws)
    # frames no flip touched all come through
    starts = np.cumsum([0] + [len(f) for f in frames])
    touched = {int(np.searchsorted(starts, bit // 8, side="right") - 1) for bit in flips}
    for i, f in enumerate(frames):
        if i not in touched:
            assert f in raws


@FUZZ
@given(frames=st.lists(frame_st, min_size=2, max_size=5), data=st.data(), chunks=chunks_st)
def test_fuzz_inserted_and_deleted_bytes_never_raise(frames, data, chunks):
    stream = bytearray(b"".join(frames))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream) - 1))
        if data.draw(st.booleans()):
            del stream[at]
        else:
            stream.insert(at, data.draw(st.integers(0, 255)))
    decoded, _ = decode_all(bytes(stream), chunks)
    for f in decoded:
        assert is_crc_valid(f.to_bytes()) and f.to_bytes() in bytes(stream)
    # the last frame is intact if no edit reached it
    if len(stream) >= len(frames[-1]) and bytes(stream).endswith(frames[-1]):
        assert decoded and decoded[-1].to_bytes() == frames[-1]


command_st = st.builds(lambda cmd, args: (cmd, args), st.integers(0, 255), st.binary(max_size=8))


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_command_decoder_random_bytes(data):
    for cmd in sp.CommandDecoder().feed(data):
        assert sp.encode_command(cmd.cmd, cmd.args) in data


@FUZZ
@given(garbage=st.lists(st.one_of(st.integers(0, 255), st.sampled_from([0xC3, 0x3C, 0x01, 0x08])), max_size=60)
       .map(bytes), commands=st.lists(command_st, min_size=1, max_size=4))
def test_fuzz_command_decoder_resynchronises(garbage, commands):
    stream = garbage + b"".join(sp.encode_command(c, a) for c, a in commands)
    got = sp.CommandDecoder().feed(stream)
    assert got[len(got) - len(commands):] == [sp.DecodedCommand(c, a) for c, a in commands]
