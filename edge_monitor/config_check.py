"""Checking config values against the schema's dataclasses, and a loaded config against its model.

``Builder`` walks the plain values that ``edge_monitor.config_yaml`` read and
builds the frozen dataclasses of ``edge_monitor.config`` from them, field by
field: the type from the annotation, the bounds and choices from the field
metadata (``lo``, ``hi``, ``choices``), unknown keys with a "did you mean",
missing keys with the field's help. It never stops at the first problem: each
one goes into ``Builder.problems`` as ``file:line: key.path: got V; expected E``
and the build goes on, so one report lists them all.

``check_against_model`` holds the checks that need the model bundle (its
calibrated threshold and sample rate) and the source's WAV file; ``located``
words such a problem in the loader's form, using the key lines kept in the
loaded Config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

from edge_monitor.config_yaml import INVALID, KeyPath, dotted, show

if TYPE_CHECKING:
    from edge_monitor.config import Config


def type_name(tp: Any) -> str:
    """What a value of annotation ``tp`` looks like, for the 'expected' part of a problem."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)" \
            if type(None) in typing.get_args(tp) else " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _range(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return ""
    return f" between {lo:g} and {hi:g}" if lo is not None and hi is not None else \
        (f" >= {lo:g}" if lo is not None else f" <= {hi:g}")


class Builder:
    """Builds config dataclasses from plain values, recording every problem with its file:line."""

    def __init__(self, fname: str, lines: dict[KeyPath, int]) -> None:
        self.fname = fname
        self.lines = lines
        self.problems: list[str] = []

    def err(self, path: KeyPath, value: Any, expected: str) -> None:
        """Record that ``value`` at ``path`` is not what was ``expected``, at the line of the nearest known key."""
        line, probe = self.lines.get(path), path
        while line is None and probe:
            probe = probe[:-1]
            line = self.lines.get(probe)
        where = f"{self.fname}:{line}" if line else self.fname
        self.problems.append(f"{where}: {dotted(path)}: got {show(value)}; expected {expected}")

    def build(self, cls: Any, data: Any, path: KeyPath) -> Any:
        """An instance of dataclass ``cls`` from mapping ``data``, or None when it cannot be made."""
        if not isinstance(data, dict):
            self.err(path, data, f"a mapping of {', '.join(f.name for f in dataclasses.fields(cls) if not f.metadata.get('internal'))}")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        kwargs = {}
        for key, value in data.items():
            if key not in fields:
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(fields)})"
                line = self.lines.get(path + (key,))
                self.problems.append(f"{self.fname}:{line}: {dotted(path + (key,))}: unknown key{hint}")
                continue
            ok, v = self.value(hints[key], value, path + (key,), fields[key].metadata)
            if ok:
                kwargs[key] = v
        for name, f in fields.items():
            if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                line = self.lines.get(path)
                self.problems.append(f"{self.fname}:{line}: {dotted(path + (name,))}: missing; expected {type_name(hints[name])}: {f.metadata.get('help', '')}")
        try:
            return cls(**kwargs)
        except TypeError:
            return None

    def value(self, tp: Any, value: Any, path: KeyPath, meta: Mapping[str, Any]) -> tuple[bool, Any]:
        """(True, the value as type ``tp``) when ``value`` fits ``tp`` and ``meta``; else (False, None), recorded."""
        if value is INVALID:
            return False, None  # already reported where it was read
        origin = typing.get_origin(tp)
        if origin is Union:
            return self._union(tp, value, path, meta)
        if dataclasses.is_dataclass(tp):
            before = len(self.problems)
            v = self.build(tp, value, path)
            return v is not None and len(self.problems) == before, v
        if origin is tuple:
            return self._tuple(tp, value, path, meta)
        if tp is bool:
            if not isinstance(value, bool):
                self.err(path, value, "true or false")
                return False, None
            return True, value
        if tp in (int, float):
            return self._number(tp, value, path, meta)
        if tp is str:
            return self._string(value, path, meta)
        return True, value

    def _union(self, tp: Any, value: Any, path: KeyPath, meta: Mapping[str, Any]) -> tuple[bool, Any]:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return True, None
        for a in args:  # first matching alternative, without recording errors
            trial = Builder(self.fname, self.lines)
            ok, v = trial.value(a, value, path, meta)
            if ok and not trial.problems:
                return True, v
        self.err(path, value, type_name(tp))
        return False, None

    def _tuple(self, tp: Any, value: Any, path: KeyPath, meta: Mapping[str, Any]) -> tuple[bool, Any]:
        item = typing.get_args(tp)[0]
        seq = [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value
        if not isinstance(seq, list) or not seq or len(seq) > 1024:
            self.err(path, value, type_name(tp))
            return False, None
        out = []
        for i, v in enumerate(seq):
            ok, x = self.value(item, v, path + (i,), meta)
            if not ok:
                return False, None
            out.append(x)
        return True, tuple(out)

    def _number(self, tp: Any, value: Any, path: KeyPath, meta: Mapping[str, Any]) -> tuple[bool, Any]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            self.err(path, value, type_name(tp) + _range(meta))
            return False, None
        if isinstance(value, float) and not math.isfinite(value):
            self.err(path, value, "a finite " + type_name(tp)[len("a "):] + _range(meta))
            return False, None
        if (meta.get("lo") is not None and value < meta["lo"]) or \
                (meta.get("hi") is not None and value > meta["hi"]):
            self.err(path, value, type_name(tp) + _range(meta))
            return False, None
        try:
            return True, tp(value)
        except OverflowError:
            self.err(path, value, "a finite " + type_name(tp)[len("a "):] + _range(meta))
            return False, None

    def _string(self, value: Any, path: KeyPath, meta: Mapping[str, Any]) -> tuple[bool, Any]:
        if not isinstance(value, str):
            self.err(path, value, "a string")
            return False, None
        if not value.isprintable():
            self.err(path, value, "a string without control characters (newline, tab, NUL, ...)")
            return False, None
        if meta.get("choices") and value not in meta["choices"]:
            self.err(path, value, "one of " + ", ".join(meta["choices"]))
            return False, None
        return True, value


def located(cfg: Config, path: KeyPath, value: Any, expected: str) -> str:
    """One problem about a loaded config, in the loader's form: ``file:line: key.path: got V; expected E``."""
    line, probe = cfg.key_lines.get(path), path
    while line is None and probe:
        probe = probe[:-1]
        line = cfg.key_lines.get(probe)
    where = f"{cfg.source_file}:{line}" if line else (cfg.source_file or "<config>")
    return f"{where}: {dotted(path)}: got {show(value)}; expected {expected}"


def check_against_model(cfg: Config, model_threshold: float, model_rate_hz: int, model_path: str) -> list[str]:
    """Problems that only show with the model: thresholds against its own, and a serial or file source's rate.

    ``edge-monitor check-config``, ``run`` and every SIGHUP reload call this (through
    ``daemon.check_config``), so what one accepts the others accept too.
    """
    problems: list[str] = []
    d, src = cfg.detection, cfg.source
    in_force = d.threshold if d.threshold is not None else model_threshold
    if d.clear_threshold is not None and d.clear_threshold > in_force:
        origin = "detection.threshold" if d.threshold is not None else f"the calibrated threshold of {model_path}"
        problems.append(located(cfg, ("detection", "clear_threshold"), d.clear_threshold,
                                f"at most the threshold in force ({in_force:g}, {origin})"))
    if src.type == "serial" and src.sample_rate != model_rate_hz:
        problems.append(located(cfg, ("source", "sample_rate"), src.sample_rate,
                                f"{model_rate_hz} (the rate model {model_path} expects; the board streams at it)"))
    if src.type == "file" and src.path:
        from edge_monitor.wavio import WavError, read_wav_info
        try:
            rate, channels, frames = read_wav_info(src.path)
        except FileNotFoundError:
            pass  # it may be created before the start; opening it then reports a missing file in one sentence
        except (WavError, OSError) as exc:
            problems.append(located(cfg, ("source", "path"), src.path, f"a readable WAV file ({exc})"))
        else:
            if rate != model_rate_hz:
                problems.append(located(cfg, ("source", "path"), src.path,
                                        f"a WAV at {model_rate_hz} Hz like model {model_path} (the file is at "
                                        f"{rate} Hz; resample it, e.g. `sox in.wav -r {model_rate_hz} out.wav`)"))
            if max(src.channels) >= channels:
                problems.append(located(cfg, ("source", "channels"), list(src.channels),
                                        f"channels of the file, which has {channels}"))
            if frames == 0:
                problems.append(located(cfg, ("source", "path"), src.path, "a WAV with audio (it has no samples)"))
    return problems
