"""``edge-monitor replay``: the daemon's pipeline over a WAV file, events as JSON lines on stdout."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Optional

from edge_monitor.config import Config, ConfigError, load_config
from edge_monitor.events import ScoreEvent, StateEvent
from edge_monitor.features import FeatureError
from edge_monitor.model import ModelError, ModelRunner, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.scoring import ScoringError, check_file_rate
from edge_monitor.sinks.console import ConsoleSink
from edge_monitor.sources.base import SourceError
from edge_monitor.sources.pump import SourcePump
from edge_monitor.sources.wavfile import WavFileSource


def parse_start(text: Optional[str]) -> Optional[float]:
    """A UNIX time from seconds or ISO 8601 text (None → now)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        dt = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=_dt.timezone.utc)
        return dt.timestamp()


def _open_file(args: argparse.Namespace, cfg: Config, runner: ModelRunner) -> WavFileSource:
    """The opened WAV source for ``args.file``; ValueError (one sentence) when it cannot be replayed."""
    try:
        start = parse_start(args.start)
    except ValueError:
        raise ValueError(f"--start {args.start!r} is neither a UNIX time nor an ISO 8601 date") from None
    source = WavFileSource(args.file, block_seconds=cfg.source.block_seconds, realtime=args.realtime,
                           start_time_s=start)
    try:
        source.open()
        check_file_rate(runner.bundle.spec.sample_rate, source.sample_rate, args.file)
    except (SourceError, ScoringError) as exc:
        source.close()
        raise ValueError(str(exc)) from None
    needed = max(cfg.source.channels) + 1
    if source.channels < needed:
        source.close()
        raise ValueError(f"{args.file}: has {source.channels} channel(s) but source.channels asks for channel "
                         f"{needed - 1}")
    return source


def replay(args: argparse.Namespace) -> int:
    """Run the pipeline over ``args.file`` with ``args.config``; 0 ok, 2 bad input."""
    def fail(msg: str) -> int:
        print(f"edge-monitor: {msg}", file=sys.stderr)
        return 2

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        runner = load_model(cfg.model.path, threads=cfg.model.threads)
        source = _open_file(args, cfg, runner)
    except (ModelError, ValueError) as exc:
        return fail(str(exc))
    try:
        pipeline = Pipeline.from_config(cfg, runner)
    except ModelError as exc:
        source.close()
        return fail(str(exc))
    first_t_s: list[float] = []  # UNIX time of the file's first sample: alerts also say where they fall in it
    end_t_s = 0.0                # UNIX time just after the last sample read
    sink = ConsoleSink(sys.stdout, recording_offset=lambda t_s: t_s - first_t_s[0] if first_t_s else None)
    try:
        for block in SourcePump(source):
            if not first_t_s:
                first_t_s.append(block.t_s)
            end_t_s = block.t_s + block.samples.shape[0] / block.sample_rate
            for event in pipeline.process(block):
                if isinstance(event, ScoreEvent):
                    if args.scores:  # with label probabilities for classifier bundles
                        print(json.dumps({"event": "score", **event.to_payload()}), flush=True)
                    continue
                sink.handle(event)
        # The daemon ends an open episode when it stops (reason "shutdown", state "unknown"): so does replay.
        ends = pipeline.detector.close_episode(end_t_s, "shutdown")
        for event in ends:
            sink.handle(event)
        if ends:
            sink.handle(StateEvent(cfg.machine.id, "unknown", end_t_s))
    except FeatureError as exc:
        return fail(str(exc))
    finally:
        source.close()
        sink.close()
        pipeline.close()
    return 0
