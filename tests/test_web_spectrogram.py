"""Alert clips' log-mel spectrograms on the machine page: the PNG, what it shows, placeholders, the cache."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_monitor.features import FeatureSpec, mel_filterbank
from edge_monitor.wavio import write_wav
from edge_monitor.web.spectrogram import SpectrogramCache, SpectrogramError, colour, png_rgb, spectrogram_pixels
from tests.test_web import CLIP_ID, Harness

RATE = 16000


def decode_png(data: bytes) -> np.ndarray:
    """(height, width, 3) pixels of an 8-bit RGB, filter-0 PNG, checking signature, chunk CRCs and sizes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def _tone(path: Path, hz: float, seconds: float = 4.0, rate: int = RATE) -> None:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size) * 1e-3
    write_wav(path, (0.3 * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32), rate)


def _brightness(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64).sum(axis=2)


def test_png_round_trips_exactly() -> None:
    px = np.random.default_rng(1).integers(0, 256, size=(7, 13, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(png_rgb(px)), px)
    with pytest.raises(ValueError):
        png_rgb(np.zeros((4, 4), dtype=np.uint8))


def test_colour_ramp_gets_brighter_with_level() -> None:
    ramp = _brightness(colour(np.linspace(0, 1, 50))[None])[0]
    assert (np.diff(ramp) > 0).all()
    assert np.array_equal(colour(np.array([-3.0, 7.0])), colour(np.array([0.0, 1.0])))  # clipped to the ends


@pytest.mark.parametrize("spec", [FeatureSpec(), FeatureSpec(n_mels=128), FeatureSpec(n_mels=40, n_mfcc=13)],
                         ids=["64 mels", "128 mels", "mfcc"])
def test_a_tone_is_drawn_in_its_mel_band_and_the_alert_is_marked(tmp_path: Path, spec: FeatureSpec) -> None:
    clip = tmp_path / "tone.wav"
    _tone(clip, 2000.0)
    png = SpectrogramCache().png(clip, spec, marks_s=[1.0, 3.0])
    px = decode_png(png)
    bands = spec.n_mels
    scale = max(1, 128 // bands)
    frames = 1 + (4 * RATE - spec.n_fft) // spec.hop_length
    assert px.shape == (bands * scale, frames, 3)
    # the white alert marks at 1 s and 3 s, nowhere else
    white = np.where((px == 255).all(axis=2).all(axis=0))[0]
    assert list(white) == [round(1.0 / spec.hop_seconds), round(3.0 / spec.hop_seconds)]
    # the brightest row is the mel band holding 2 kHz (rows: highest band first)
    fb = mel_filterbank(dataclasses.replace(spec, n_mfcc=0))
    band = int(np.argmax(fb[:, int(round(2000.0 * spec.n_fft / RATE))]))
    rows = _brightness(np.delete(px, white, axis=1)).mean(axis=1)
    assert (bands - 1 - int(np.argmax(rows)) // scale) == band


def test_long_clips_are_shrunk_keeping_peaks() -> None:
    db = np.full((2000, 8), -60.0, dtype=np.float32)
    db[1234, 3] = 0.0  # one loud frame
    px = spectrogram_pixels(db)
    assert px.shape[1] <= 900
    bright = _brightness(px)
    row = (8 - 1 - 3) * (128 // 8)
    assert bright[row].max() == bright.max() and bright[row].argmax() == 1234 // 3


def test_cache_computes_once_per_version_of_the_file(tmp_path: Path) -> None:
    clip = tmp_path / "c.wav"
    _tone(clip, 500.0, 2.0)
    cache = SpectrogramCache(entries=2)
    first = cache.png(clip, FeatureSpec())
    assert cache.png(clip, FeatureSpec()) == first and cache.computed == 1
    _tone(clip, 4000.0, 3.0)  # rewritten: new size and time
    assert cache.png(clip, FeatureSpec()) != first and cache.computed == 2
    for hz in (100.0, 200.0, 300.0):  # older entries fall out
        other = tmp_path / f"{hz}.wav"
        _tone(other, hz, 1.0)
        cache.png(other, FeatureSpec())
    assert len(cache._items) == 2


def test_unusable_clips_say_why(tmp_path: Path) -> None:
    cache = SpectrogramCache()
    with pytest.raises(SpectrogramError, match="gone"):
        cache.png(tmp_path / "missing.wav", FeatureSpec())
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(SpectrogramError, match="cannot be read"):
        cache.png(bad, FeatureSpec())
    slow = tmp_path / "8k.wav"
    _tone(slow, 500.0, 1.0, rate=8000)
    with pytest.raises(SpectrogramError, match="8000 Hz"):
        cache.png(slow, FeatureSpec())
    short = tmp_path / "short.wav"
    write_wav(short, np.zeros(100, dtype=np.float32), RATE)
    with pytest.raises(SpectrogramError, match="shorter"):
        cache.png(short, FeatureSpec())


def test_machine_page_shows_each_alerts_spectrogram(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.play_alert()
    _tone(h.clips / f"{CLIP_ID}.wav", 1000.0, 8.0)
    h.login()
    page = h.request("GET", "/machine/fan-1").body.decode()
    src = f"/machine/fan-1/spectrogram/{CLIP_ID}.png"
    assert f'<img class="spectrogram" loading="lazy" src="{src}"' in page
    assert f'src="{src}"' in h.request("GET", "/machine/fan-1/alerts").body.decode()  # the polled table too
    resp = h.request("GET", src)
    assert resp.status == 200 and resp.content_type == "image/png"
    px = decode_png(resp.body)
    white = list(np.where((px == 255).all(axis=2).all(axis=0))[0])
    assert white == [round(2.0 / 0.032), round(6.0 / 0.032)]  # the clip starts 2 s before the alert, which lasts 4 s
    anonymous = Harness(tmp_path / "b").request("GET", src)  # the login is needed, as for the page
    assert anonymous.status == 303 and ("Location", "/login") in anonymous.headers and not anonymous.body


def test_a_deleted_or_broken_clip_gives_a_placeholder_never_an_error(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.play_alert()  # its clip holds 44 bytes that are not a WAV
    h.login()
    src = f"/machine/fan-1/spectrogram/{CLIP_ID}.png"
    broken = h.request("GET", src)
    assert broken.status == 200 and broken.content_type == "image/svg+xml"
    assert b"No spectrogram" in broken.body and b"cannot be read" in broken.body
    (h.clips / f"{CLIP_ID}.wav").unlink()
    gone = h.request("GET", src)
    assert gone.status == 200 and b"gone" in gone.body
    for bad in ("../../secret.png", "x.png", f"{CLIP_ID}.wav", f"{CLIP_ID}"):
        assert h.request("GET", f"/machine/fan-1/spectrogram/{bad}").status == 404, bad
