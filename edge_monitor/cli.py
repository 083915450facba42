"""The ``edge-monitor`` command. Exit codes: 0 ok, 1 runtime failure, 2 bad usage, config or model."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from edge_monitor import __version__

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_LOGGER = logging.getLogger("edge_monitor")


def _setup_logging(level: str = "info") -> None:
    # journald adds timestamps; keep lines short
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused with a clean usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def channel_index(text: str) -> int:
    """argparse type: a 0-based channel index."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a channel number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: channels are numbered from 0")
    return value


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"edge-monitor: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- verbs

def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config, and (unless --skip-model) everything ``run`` and a reload check with the model."""
    from edge_monitor.config import ConfigError, load_config
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"edge-monitor: {args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    if not args.skip_model:
        from edge_monitor.daemon import check_config
        from edge_monitor.model import ModelError, load_model
        problems = check_config(cfg)
        if not problems:
            try:  # the TFLite runtime's own checks (tensor shapes, ops), as ``run`` does
                load_model(cfg.model.path).close()
            except ModelError as exc:
                problems.append(str(exc))
        if problems:
            print("\n".join(problems), file=sys.stderr)
            print(f"edge-monitor: {args.config}: {len(problems)} problem(s)", file=sys.stderr)
            return EXIT_USAGE
    print(f"{args.config}: ok (machine {cfg.machine.id}, source {cfg.source.type}, model {cfg.model.path})")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    """Score WAV files with a model."""
    from edge_monitor.model import ModelError, load_model
    from edge_monitor.scoring import ScoringError, score_file
    try:
        runner = load_model(args.model)
    except ModelError as exc:
        return _fail(str(exc))
    channel = args.channel if args.channel is not None else "mean"
    worst = EXIT_OK
    for path in args.files:
        try:
            result = score_file(runner, path, threshold=args.threshold, window_hop_seconds=args.window_hop,
                                channel=channel)
        except ScoringError as exc:
            print(f"edge-monitor: {exc}", file=sys.stderr)
            worst = EXIT_USAGE
            continue
        if args.json:
            print(json.dumps(result.to_json()))
        else:
            flag = "ANOMALOUS" if result.anomalous else "normal"
            print(f"{result.score:10.4f}  {flag:9s}  {path}  (threshold {result.threshold:.4f}, "
                  f"{len(result.windows)} windows, max {max(result.windows):.4f})")
        sys.stdout.flush()
    return worst


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the whole pipeline over a WAV and print the events the daemon would emit."""
    from edge_monitor.replay import replay
    return replay(args)


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon."""
    from edge_monitor.daemon import run_daemon
    return run_daemon(args)


def cmd_forget(args: argparse.Namespace) -> int:
    """Remove a retired machine's retained topics (Home Assistant discovery included) from the broker."""
    from edge_monitor.forget import run_forget
    return run_forget(args)


def cmd_devices(args: argparse.Namespace) -> int:
    """List audio inputs and serial ports."""
    try:
        from edge_monitor.devices import format_devices, list_audio_inputs
    except ImportError as exc:
        return _fail(f"device listing is unavailable: {exc}", EXIT_FAILURE)
    print(format_devices(list_audio_inputs()) if args.json is False else json.dumps(list_audio_inputs(), indent=2))
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    """Say which machine type the configured source sounds like."""
    from edge_monitor.identify import run_identify
    return run_identify(args)


def cmd_record(args: argparse.Namespace) -> int:
    """Capture training audio from the configured source."""
    from edge_monitor.record import record
    return record(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the pipeline on this machine."""
    from edge_monitor.bench import run_bench
    return run_bench(args)


def _training_verb(module: str, add: str, run: str) -> tuple[Callable, Callable]:
    def add_args(p: argparse.ArgumentParser) -> None:
        try:
            mod = __import__(f"edge_monitor.training.{module}", fromlist=[add])
        except ImportError as exc:
            p.set_defaults(_import_error=str(exc))
            return
        getattr(mod, add)(p)

    def call(args: argparse.Namespace) -> int:
        if getattr(args, "_import_error", None):
            return _fail(f"training needs the [train] extra (pip install 'edge-monitor[train]'): {args._import_error}",
                         EXIT_FAILURE)
        mod = __import__(f"edge_monitor.training.{module}", fromlist=[run])
        return getattr(mod, run)(args)

    return add_args, call


def add_feedback_normals(args: argparse.Namespace) -> list[str]:
    """``train --feedback``: the false alarms' clips as ``args.feedback_clips`` (normal audio that every
    calibration fold trains on and none holds out); returns notes for the user."""
    from edge_monitor.web.feedback import false_alarm_clips
    notes: list[str] = []
    extra: list[str] = []
    for state_dir in args.feedback or []:
        clips, missing = false_alarm_clips(Path(state_dir))
        extra += [str(c) for c in clips]
        notes += missing
        notes.append(f"{state_dir}: {len(clips)} false-alarm clip(s) added to the normal audio")
    args.feedback_clips = [c for c in dict.fromkeys(extra) if c not in (args.normal or [])]
    return notes


def _with_feedback(call: Callable) -> Callable:
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "feedback", None) and not getattr(args, "_import_error", None):
            for note in add_feedback_normals(args):
                print(f"edge-monitor train: {note}", file=sys.stderr)
        return call(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    p = argparse.ArgumentParser(prog="edge-monitor", description="Acoustic anomaly monitor for factory machines.")
    p.add_argument("--version", action="version", version=f"edge-monitor {__version__}")
    p.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    _add_gateway_verbs(sub)
    _add_model_verbs(sub)
    return p


def _add_gateway_verbs(sub: Any) -> None:
    """The verbs that run on a gateway: run, check-config, forget, devices, record, identify."""
    s = sub.add_parser("run", help="run the monitoring daemon")
    s.add_argument("--config", "-c", action="append", default=None,
                   help="machine config YAML (repeat for several machines on one gateway; "
                        "default: the bundled demo)")
    s.add_argument("--mqtt", default=None, metavar="HOST[:PORT]",
                   help="publish to this MQTT broker (overrides mqtt.enabled/host/port in the config)")
    s.add_argument("--print-events", action="store_true", help="also print events as JSON lines on stdout")
    s.add_argument("--demo-live", action="store_true",
                   help="play the bundled demo recording (synthetic) at real-time pace on a loop, until stopped; "
                        "with --mqtt, watch it in Home Assistant")
    s.add_argument("--max-seconds", type=positive_float, default=None,
                   help="stop after this long (seconds; for tests)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check-config", help="validate a machine config (used by ExecStartPre)")
    s.add_argument("config")
    s.add_argument("--skip-model", action="store_true", help="don't load the model")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("forget", help="remove a retired machine from the broker and Home Assistant "
                                      "(clears its retained discovery and state topics)")
    from edge_monitor.forget import add_forget_arguments
    add_forget_arguments(s)
    s.set_defaults(func=cmd_forget)

    s = sub.add_parser("devices", help="list audio inputs and serial ports")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_devices)

    s = sub.add_parser("record", help="capture training audio from the configured source")
    s.add_argument("--config", "-c", required=True)
    s.add_argument("--seconds", type=positive_float, required=True, help="total length to record (seconds)")
    s.add_argument("--out", required=True, help="output folder (one WAV per --clip-seconds)")
    s.add_argument("--clip-seconds", type=positive_float, default=10.0, help="length of each WAV (seconds)")
    s.set_defaults(func=cmd_record)

    s = sub.add_parser("identify", help="listen to the configured source and say which machine type it sounds like")
    from edge_monitor.identify import add_identify_arguments
    add_identify_arguments(s)
    s.set_defaults(func=cmd_identify)


def _add_model_verbs(sub: Any) -> None:
    """The verbs about models and recordings: train, train-classifier, evaluate, score, replay, bench."""
    for verb, module, add, run, help_text in (
        ("train", "unsupervised", "add_train_arguments", "run_train",
         "train an unsupervised model from normal recordings"),
        ("train-classifier", "classifier", "add_train_classifier_arguments", "run_train_classifier",
         "train a supervised classifier (labels = sub-folder names)"),
        ("evaluate", "evaluate", "add_evaluate_arguments", "run_evaluate",
         "AUC, pAUC, precision/recall and an HTML report with plots"),
    ):
        s = sub.add_parser(verb, help=help_text)
        add_args, call = _training_verb(module, add, run)
        add_args(s)
        if verb == "train":
            s.add_argument("--feedback", action="append", default=None, metavar="STATE_DIR",
                           help="also train on the clips of alerts marked 'false alarm' on the web page "
                                "(read from STATE_DIR/feedback-*.json; repeatable)")
            call = _with_feedback(call)
        s.set_defaults(func=call)

    s = sub.add_parser("score", help="score WAV files with a model")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("files", nargs="+")
    s.add_argument("--json", action="store_true", help="one JSON object per line per file")
    s.add_argument("--threshold", type=finite_float, default=None, help="override the model's threshold")
    s.add_argument("--window-hop", type=positive_float, default=0.5, help="seconds between scored windows")
    s.add_argument("--channel", type=channel_index, default=None, help="channel to use (default: mean of all)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("replay", help="run the whole pipeline over a WAV and print the daemon's events")
    s.add_argument("--config", "-c", required=True)
    s.add_argument("file")
    s.add_argument("--realtime", action="store_true", help="pace the file at real time")
    s.add_argument("--scores", action="store_true", help="also print every window score")
    s.add_argument("--start", default=None, help="UNIX time or ISO 8601 of the file's first sample (default now)")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("bench", help="measure throughput, latency, memory and start-up on this machine")
    s.add_argument("--json", action="store_true")
    s.add_argument("--seconds", type=positive_float, default=600.0,
                   help="audio length for the throughput run (seconds)")
    s.add_argument("--model", default=None, help="model bundle (default: the bundled demo)")
    s.set_defaults(func=cmd_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edge-monitor`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.log_level or "info")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
