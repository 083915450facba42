"""Reading a machine config's YAML into plain values, with the line of every key.

``read_yaml`` turns the text of one config file into plain Python values (dicts,
lists, str, int, float, bool, None) and a map from every key path to its 1-based
line, so that later checks can say file:line. The YAML is composed, not loaded:
each node is converted here under limits (file size, values after alias
expansion, nesting depth, self-referring aliases), so a hostile file costs
bounded work. Oddities that do not stop the reading (unsupported tags, merge
keys, duplicate or non-scalar keys, unreadable scalars) are collected as
problems and the value stands as ``INVALID``; the schema checks in
``edge_monitor.config_check`` then report the rest in the same list.
"""

from __future__ import annotations

from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """Every problem found in one config file, each on its own line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


KeyPath = tuple[Union[str, int], ...]
"""Where a value sits in the file: mapping keys and list indices from the top."""


MAX_CONFIG_BYTES = 1_000_000
"""A machine config is a few kB; anything larger is the wrong file."""
MAX_YAML_VALUES = 10_000
"""Values a config may expand to, aliases included: bounds the work a 'billion laughs' file can cause."""
MAX_YAML_DEPTH = 32
"""Nesting levels a config may have (the schema needs three)."""

INVALID = object()
"""Stands for a value that could not be read; its problem is already recorded."""

_SCALAR_TAGS = {
    "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
}
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_COLLECTION_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def show(value: Any) -> str:
    """A value for an error message: repr, shortened, so that one problem stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def dotted(path: KeyPath) -> str:
    """A key path as the user writes it (``mqtt.tls.cert``, ``source.channels.0``)."""
    return ".".join(p if isinstance(p, str) and p.isprintable() and p else
                    (str(p) if isinstance(p, int) else repr(p)) for p in path) or "(top level)"


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


class _Converter:
    """Composed YAML nodes to plain Python values, with bounded work and a problem for every oddity."""

    def __init__(self, fname: str, lines: dict[KeyPath, int], problems: list[str]) -> None:
        self.fname = fname
        self.lines = lines
        self.problems = problems
        self.values = 0
        self._open: set[int] = set()  # nodes being converted: an alias back to one of them is a cycle
        self._constructor = yaml.constructor.SafeConstructor()

    def where(self, node: yaml.Node) -> str:
        return f"{self.fname}:{node.start_mark.line + 1}"

    def convert(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_YAML_VALUES:
            raise ConfigError([f"{self.where(node)}: the YAML expands to more than {MAX_YAML_VALUES} values "
                               "(aliases repeating aliases?); a machine config needs far fewer"])
        if depth > MAX_YAML_DEPTH:
            raise ConfigError([f"{self.where(node)}: the YAML is nested more than {MAX_YAML_DEPTH} levels deep"])
        if id(node) in self._open:
            raise ConfigError([f"{self.where(node)}: {dotted(path)}: an alias refers to itself (a recursive "
                               "structure cannot be a config value)"])
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if node.tag not in _COLLECTION_TAGS:
            self.problems.append(f"{self.where(node)}: {dotted(path)}: unsupported YAML tag {_short_tag(node.tag)}")
            return INVALID
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
            return self.mapping(node, path, depth)
        finally:
            self._open.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            self.values += 1
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                self.problems.append(f"{self.where(key_node)}: {dotted(path)}: a key must be a plain name, "
                                     f"not a {kind}")
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(f"{self.where(key_node)}: {dotted(path)}: YAML merge keys (<<) are not "
                                     "supported; write the keys out")
                continue
            key = key_node.value
            if key in out:
                self.problems.append(f"{self.where(key_node)}: {dotted(path + (key,))}: duplicate key")
            out[key] = self.convert(value_node, path + (key,), depth + 1)
            if isinstance(value_node, (yaml.MappingNode, yaml.SequenceNode)):
                self.lines[path + (key,)] = key_node.start_mark.line + 1  # a block's errors point at its key
        return out

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR_TAG or node.tag == _TIMESTAMP_TAG:
            return node.value  # no setting is a date: a date-like value stays the text that was written
        if node.tag not in _SCALAR_TAGS:
            self.problems.append(f"{self.where(node)}: {dotted(path)}: unsupported YAML tag {_short_tag(node.tag)}")
            return INVALID
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, ArithmeticError, yaml.YAMLError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.problems.append(f"{self.where(node)}: {dotted(path)}: cannot read {show(node.value)} as "
                                 f"{_short_tag(node.tag)} ({reason})")
            return INVALID


def read_yaml(text: str, fname: str) -> tuple[Any, dict[KeyPath, int], list[str]]:
    """The plain value of ``text``, the line of every key path, and the problems met while reading it.

    Raises ConfigError at once when the text cannot be read at all: too large, not YAML, empty,
    or beyond the limits on values, depth and self-referring aliases. A value that could not be
    read is ``INVALID`` (its problem is in the list).
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{fname}: the file is larger than {MAX_CONFIG_BYTES // 1000} kB; "
                           "a machine config is a few kB (is this the right file?)"])
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{fname}:{mark.line + 1}" if mark else fname
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: not valid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{fname}: the YAML is nested too deeply to read"]) from None
    if node is None:
        raise ConfigError([f"{fname}: the file is empty; expected a mapping with machine, model, source, ..."])
    lines: dict[KeyPath, int] = {}
    problems: list[str] = []
    data = _Converter(fname, lines, problems).convert(node, ())
    return data, lines, problems
