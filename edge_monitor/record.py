"""``edge-monitor record``: capture training audio from a machine's configured source into WAV files."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_monitor.config import ConfigError, load_config
from edge_monitor.sources.base import SourceError
from edge_monitor.sources.factory import make_source
from edge_monitor.sources.pump import SourcePump
from edge_monitor.wavio import write_wav

RECORD_RATE_HZ = 16000  # the rate `edge-monitor train` expects by default


def record(args: argparse.Namespace) -> int:
    """Write ``args.seconds`` of audio as ``args.clip_seconds`` WAVs in ``args.out``. 0 ok, 1 source failure, 2 bad input."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.seconds <= 0 or args.clip_seconds <= 0:
        print("edge-monitor: --seconds and --clip-seconds must be positive", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"edge-monitor: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return 2
    source = make_source(cfg.source, RECORD_RATE_HZ)
    try:
        source.open()
    except SourceError as exc:
        print(f"edge-monitor: {exc}", file=sys.stderr)
        return 1
    rate = source.sample_rate if cfg.source.type != "microphone" else RECORD_RATE_HZ
    clip_n = int(round(args.clip_seconds * rate))
    total_n = int(round(args.seconds * rate))
    parts: list[np.ndarray] = []
    have = written = done = 0
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    print(f"recording {args.seconds:g} s from {cfg.source.type} into {out}/ ({args.clip_seconds:g} s per file)",
          file=sys.stderr)
    try:
        for block in SourcePump(source):
            rate = block.sample_rate
            chans = list(cfg.source.channels)
            samples = block.samples[:, chans] if block.samples.shape[1] > max(chans) else block.samples
            parts.append(samples)
            have += samples.shape[0]
            done += samples.shape[0]
            while have >= clip_n or (done >= total_n and have > 0):
                audio = np.concatenate(parts)
                take = min(clip_n, audio.shape[0])
                path = out / f"{cfg.machine.id}-{stamp}-{written:04d}.wav"
                write_wav(path, audio[:take], rate)
                written += 1
                parts = [audio[take:]] if audio.shape[0] > take else []
                have = audio.shape[0] - take
                print(f"  {path.name}  ({done / rate:.0f} / {args.seconds:g} s)", file=sys.stderr)
            if done >= total_n:
                break
    except SourceError as exc:
        print(f"edge-monitor: recording stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        source.close()
    print(f"wrote {written} file(s) to {out}", file=sys.stderr)
    return 0
