"""Fuzzing the readers of untrusted bytes: WAV files, model bundles and the serial frame decoder.

Each reader may only succeed (with output that keeps its invariants) or raise its
own one-sentence error (WavError, BundleError/ModelError). Fixed budgets and seeds,
so the run is the same in CI every time.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_monitor.bundle import BundleError, load_metadata, read_metadata_bytes
from edge_monitor.model import ModelBundle, ModelError
from edge_monitor.sources import serial_protocol as sp
from edge_monitor.wavio import WavError, read_wav, read_wav_info, write_wav
from tests.helpers.daemon import DEMO_MODEL

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- WAV

def _valid_wav(tmp: Path, channels: int = 2, bits: int = 16) -> bytes:
    path = tmp / "ok.wav"
    write_wav(path, np.linspace(-0.5, 0.5, 200 * channels, dtype=np.float32).reshape(200, channels), 16000)
    return path.read_bytes()


_WAV_EDITS = st.lists(st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 79), st.integers(0, 255)),           # header bytes
    st.tuples(st.just("u16"), st.sampled_from([20, 22, 32, 34]), st.integers(0, 0xFFFF)),  # tag, channels, align, bits
    st.tuples(st.just("u32"), st.sampled_from([4, 16, 24, 28, 40]), st.integers(0, 0xFFFFFFFF)),  # sizes, rate
    st.tuples(st.just("truncate"), st.integers(0, 900)),
    st.tuples(st.just("append"), st.binary(max_size=64)),
), min_size=1, max_size=4)


def _edit_wav(blob: bytes, edits: list[tuple]) -> bytes:
    data = bytearray(blob)
    for edit in edits:
        if edit[0] == "byte" and edit[1] < len(data):
            data[edit[1]] = edit[2]
        elif edit[0] == "u16" and edit[1] + 2 <= len(data):
            struct.pack_into("<H", data, edit[1], edit[2])
        elif edit[0] == "u32" and edit[1] + 4 <= len(data):
            struct.pack_into("<I", data, edit[1], edit[2])
        elif edit[0] == "truncate":
            del data[edit[1]:]
        elif edit[0] == "append":
            data += edit[1]
    return bytes(data)


@settings(FUZZ, max_examples=400)
@given(edits=_WAV_EDITS, float_samples=st.booleans())
def test_fuzz_wav_reader_gives_wav_errors_only(tmp_path: Path, edits: list[tuple], float_samples: bool) -> None:
    if float_samples:
        # a valid IEEE float header, then mutations (NaN/inf payloads come from the byte edits)
        body = np.array([0.1, -0.2, float("nan") if edits[0][0] == "append" else 0.3] * 4, dtype="<f4").tobytes()
        fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
        blob = b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
            + b"data" + struct.pack("<I", len(body)) + body
    else:
        blob = _valid_wav(tmp_path)
    path = tmp_path / "fuzz.wav"
    path.write_bytes(_edit_wav(blob, edits))
    try:
        rate, channels, frames = read_wav_info(path)
        samples, rate2 = read_wav(path)
    except WavError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert rate == rate2 and 1 <= rate <= 1_000_000 and 1 <= channels <= 1024
    assert samples.dtype == np.float32 and samples.shape == (frames, channels)
    assert np.isfinite(samples).all()


# ---------------------------------------------------------------- bundles

DEMO_BYTES = DEMO_MODEL.read_bytes()
DEMO_META_RAW = read_metadata_bytes(DEMO_BYTES)
DEMO_META_AT = DEMO_BYTES.find(DEMO_META_RAW)


def with_metadata(meta_text: str) -> bytes:
    """The demo bundle with its metadata JSON replaced in place (padded with spaces, or cut if longer)."""
    raw = meta_text.encode("utf-8")[:len(DEMO_META_RAW)]
    raw = raw + b" " * (len(DEMO_META_RAW) - len(raw))
    return DEMO_BYTES[:DEMO_META_AT] + raw + DEMO_BYTES[DEMO_META_AT + len(DEMO_META_RAW):]


def demo_meta() -> dict:
    """The demo bundle's metadata."""
    return json.loads(DEMO_META_RAW)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=3), max_leaves=8)
_META_KEYS = ["kind", "threshold", "feature_spec", "labels", "alert_labels", "score", "input_shape", "name",
              "format_version"]
_SPEC_KEYS = ["sample_rate", "n_fft", "hop_length", "n_mels", "frames_per_window", "window", "fmin", "fmax",
              "n_mfcc", "norm_std", "mel_scale"]


@settings(FUZZ, max_examples=300)
@given(edits=st.lists(st.one_of(
    st.tuples(st.just("meta"), st.sampled_from(_META_KEYS), _JSON),
    st.tuples(st.just("spec"), st.sampled_from(_SPEC_KEYS),
              st.one_of(_JSON, st.integers(-2 ** 40, 2 ** 40), st.sampled_from([2 ** 30, 0, -1, 1.5, "hann"]))),
    st.tuples(st.just("drop"), st.sampled_from(_META_KEYS), st.none()),
    st.tuples(st.just("text"), st.sampled_from(["[" * 3000, "1" * 5000, "{\"a\": NaN}", "\xff", ""]), st.none()),
), min_size=1, max_size=3))
def test_fuzz_bundle_metadata_gives_bundle_errors_only(tmp_path: Path, edits: list[tuple]) -> None:
    meta = demo_meta()
    text = None
    for kind, key, value in edits:
        if kind == "meta":
            meta[key] = value
        elif kind == "spec" and isinstance(meta.get("feature_spec"), dict):
            meta["feature_spec"][key] = value
        elif kind == "drop":
            meta.pop(key, None)
        elif kind == "text":
            text = key
    path = tmp_path / "fuzz.tflite"
    path.write_bytes(with_metadata(text if text is not None else json.dumps(meta, separators=(",", ":"))))
    try:
        bundle = ModelBundle(path)
    except ModelError as exc:
        assert str(exc).startswith(f"model {path}") and "\n" not in str(exc), str(exc)
        return
    assert math.isfinite(bundle.threshold) and bundle.threshold > 0
    assert 16 <= bundle.spec.n_fft <= 65536 and 1000 <= bundle.spec.sample_rate <= 192000


@settings(FUZZ, max_examples=300)
@given(edits=st.lists(st.tuples(st.integers(0, len(DEMO_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(DEMO_BYTES))))
def test_fuzz_bundle_bytes_give_bundle_errors_only(tmp_path: Path, edits: list[tuple[int, int]],
                                                   cut: int | None) -> None:
    data = bytearray(DEMO_BYTES)
    for pos, value in edits:
        # most edits land in the flatbuffer tables and the metadata, where the reader walks
        data[pos % (DEMO_META_AT + len(DEMO_META_RAW))] = value
    if cut is not None:
        del data[cut:]
    path = tmp_path / "fuzz.tflite"
    path.write_bytes(bytes(data))
    try:
        meta, model = load_metadata(path)
    except BundleError as exc:
        assert str(exc).startswith(f"model {path}") and "\n" not in str(exc), str(exc)
        return
    assert isinstance(meta, dict) and model == bytes(data)


def test_bundle_with_a_huge_fft_or_bad_threshold_is_refused_at_load(tmp_path: Path) -> None:
    for key, value, words in (("n_fft", 2 ** 30, "feature_spec.n_fft"), ("sample_rate", 10 ** 9, "sample_rate"),
                              ("frames_per_window", 10 ** 7, "frames_per_window"), ("window", ["x"], "window")):
        meta = demo_meta()
        meta["feature_spec"][key] = value
        path = tmp_path / f"{key}.tflite"
        path.write_bytes(with_metadata(json.dumps(meta, separators=(",", ":"))))
        with pytest.raises(ModelError, match=words):
            ModelBundle(path)
    for threshold in (float("nan"), float("inf"), 0, -1.5, "1.0", True):
        meta = demo_meta()
        meta["threshold"] = threshold
        path = tmp_path / "threshold.tflite"
        path.write_bytes(with_metadata(json.dumps(meta, separators=(",", ":"))))
        with pytest.raises(ModelError, match="threshold"):
            ModelBundle(path)


# ---------------------------------------------------------------- serial decoder

def _frames(n: int, seq0: int) -> list[bytes]:
    rng = np.random.default_rng(seq0)
    return [sp.encode_frame(rng.integers(0, 1024, 16), seq=seq0 + i) for i in range(n)]


MAX_FRAME_BYTES = sp.FRAME_HEADER_BYTES + 2 * sp.MAX_AUDIO_SAMPLES + sp.CRC_BYTES


@settings(FUZZ, max_examples=300)
@given(garbage=st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([sp.FRAME_MAGIC, sp.FRAME_MAGIC + b"\x01",
                                                                          sp.FRAME_MAGIC + b"\x01\x01\x00\x00\x00"
                                                                          b"\x80\x3e\xff\xff"])), max_size=6),
       chunks=st.lists(st.integers(1, 300), min_size=1, max_size=20), seq0=st.integers(0, 60000))
def test_fuzz_serial_decoder_resyncs_within_one_frame(garbage: list[bytes], chunks: list[int], seq0: int) -> None:
    good = _frames(3, seq0)
    stream = b"".join(garbage) + b"".join(good)
    decoder = sp.FrameDecoder()
    got: list[sp.Frame] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = chunks[i % len(chunks)]
        got += decoder.feed(stream[pos:pos + step])
        assert len(decoder._buf) <= MAX_FRAME_BYTES + 300  # holds at most one maximal frame (plus the last chunk)
        pos, i = pos + step, i + 1
    seqs = [f.seq for f in got if f.is_audio]
    # the garbage may hide the first good frame inside a false claim, never the two after it
    assert seqs[-2:] == [(seq0 + 1) & 0xFFFF, (seq0 + 2) & 0xFFFF], seqs
    for frame in got:
        assert frame.kind in (sp.KIND_AUDIO, sp.KIND_REPLY)
        if frame.is_audio:
            assert frame.codes().shape == (frame.count,)
