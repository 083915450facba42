"""``edge-monitor replay``: the daemon's pipeline over a WAV file, events as JSON lines on stdout."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Optional

from edge_monitor.config import Config, ConfigError, load_config
from edge_monitor.events import Event, ScoreEvent
from edge_monitor.features import FeatureError
from edge_monitor.machine import Machine
from edge_monitor.model import ModelError, ModelRunner, load_model
from edge_monitor.pipeline import Pipeline
from edge_monitor.scoring import ScoringError, check_file_rate
from edge_monitor.sinks.base import Sink
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
    # The daemon's Machine, with the console instead of MQTT: the same events by construction.
    console = ConsoleSink(sys.stdout)
    sinks: list[Sink] = [console] + ([_ScoreLines()] if args.scores else [])
    machine = Machine(cfg, pipeline, sinks)
    console.recording_offset = machine.recording_offset_s
    try:
        for block in SourcePump(source):
            machine.process(block, source)
        machine.close_episode_on_stop()  # as the daemon's stop: reason "shutdown", then state "unknown"
    except FeatureError as exc:
        return fail(str(exc))
    finally:
        source.close()
        machine.close()
    return 0


class _ScoreLines:
    """``replay --scores``: every window score as a JSON line (with label probabilities for classifiers)."""

    def handle(self, event: Event) -> None:
        """Print a score; other events are the console sink's."""
        if isinstance(event, ScoreEvent):
            print(json.dumps({"event": "score", **event.to_payload()}), flush=True)

    def close(self) -> None:
        """Nothing to release."""
