"""``edge-monitor identify``: listen to a configured source and say which machine type it sounds like.

For the engineer placing the microphone: the same machine-type check the daemon runs at start-up
(``edge_monitor.machine_check``), on demand, with a one-sentence verdict (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edge_monitor.machine_check import DEFAULT_MODEL, IDENTIFY_TIMEOUT_FACTOR, MachineTypeCheck
from edge_monitor.model import ModelError, load_model
from edge_monitor.pipeline import select_channels


def add_identify_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``edge-monitor identify``."""
    p.add_argument("--config", "-c", required=True, help="machine config YAML (its source is listened to)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds of non-silent sound to listen to (default: machine.type_check_seconds)")
    p.add_argument("--model", "-m", default=None,
                   help="machine-type bundle (default: machine.type_check_model, else the shipped machine-type.tflite)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")


def run_identify(args: argparse.Namespace) -> int:
    """Listen to the configured source and say which machine type it sounds like. 0 ran, 1 source failure, 2 bad input."""
    from edge_monitor.config import ConfigError, load_config
    from edge_monitor.sources.base import SourceError
    from edge_monitor.sources.factory import make_source
    from edge_monitor.sources.pump import SourcePump

    def fail(msg: str, code: int = 2) -> int:
        print(f"edge-monitor: {msg}", file=sys.stderr)
        return code

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    seconds = cfg.machine.type_check_seconds if args.seconds is None else float(args.seconds)
    if not seconds > 0:
        return fail("--seconds must be positive")
    model_path = args.model or cfg.machine.type_check_model or str(DEFAULT_MODEL)
    try:
        runner = load_model(model_path)
        check = MachineTypeCheck(runner, cfg.machine.type, cfg.machine.id, seconds=seconds,
                                 min_confidence=cfg.machine.type_check_min_confidence,
                                 silence_dbfs=cfg.health.silence_dbfs)
    except ModelError as exc:
        return fail(str(exc))
    source = make_source(cfg.source, check.sample_rate, cfg.health.source_timeout_seconds)
    try:
        source.open()
    except SourceError as exc:
        check.close()
        return fail(str(exc), 1)
    if source.sample_rate != check.sample_rate:
        source.close()
        check.close()
        return fail(f"{cfg.source.type} source delivers {source.sample_rate} Hz but {model_path} expects "
                    f"{check.sample_rate} Hz")
    print(f"listening to {cfg.source.type} for {seconds:g} s of sound ...", file=sys.stderr)
    deadline = time.monotonic() + IDENTIFY_TIMEOUT_FACTOR * seconds + 10.0
    try:
        for block in SourcePump(source, keep_going=lambda: not check.done and time.monotonic() < deadline):
            check.process(select_channels(block.samples, cfg.source.channels, cfg.source.mix), block.t_s)
    except SourceError as exc:
        check.close()
        return fail(f"listening stopped: {exc}", 1)
    finally:
        source.close()
    if not check.done:
        check.finish(time.time())
    result = check.result
    if result is None:
        return fail(f"heard only {check.heard_seconds:.1f} s of sound above {cfg.health.silence_dbfs:g} dBFS: "
                    f"is the machine running and the microphone connected?", 1)
    if result.seconds < seconds:
        print(f"note: only {result.seconds:.1f} s of sound were heard (asked for {seconds:g} s)", file=sys.stderr)
    print(json.dumps(result.to_json()) if args.json else result.sentence())
    return 0
