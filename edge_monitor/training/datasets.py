"""Find and label the WAV clips of a machine-sound dataset; load their audio (numpy only).

Supported layouts (see docs/datasets.md for examples):

* ``mimii``: ``<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav`` (MIMII, 8-channel extensible WAVs);
* ``dcase2020``: ``{normal,anomaly}_id_XX_NNNNNNNN.wav`` in any folder (DCASE 2020 Task 2);
* ``dcase2021``: ``section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_<key>_<value>...].wav``
  (DCASE 2021 to 2024 Task 2), attributes parsed into a dict;
* ``folders``: ``<dir>/<label>/**.wav`` (one sub-folder per label, for supervised classifiers);
* ``files``: every WAV below a folder, unlabelled (only when asked for explicitly).

File-name layouts are recognised file by file, so a tree may mix them (a folder
holding both MIMII and DCASE data loads as ``mixed``). ``folders`` is used only
when no file matches a named layout. Loading never resamples silently.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edge_monitor.wavio import read_wav

_LOGGER = logging.getLogger(__name__)

NORMAL = "normal"
"""Label of normal clips in every layout."""

ANOMALY = "anomaly"
"""Label of anomalous clips in the MIMII and DCASE layouts (MIMII's ``abnormal`` folders map to it)."""

UNKNOWN = "unknown"
"""Label of unlabelled clips (DCASE evaluation files, the ``files`` layout)."""

LAYOUTS = ("mimii", "dcase2020", "dcase2021", "folders", "files")
"""Layout names accepted by :func:`load_dataset`; :func:`detect_layout` may also answer ``mixed``."""

_EXPECTED = (
    "expected one of: MIMII '<machine>/id_XX/{normal,abnormal}/*.wav'; "
    "DCASE 2020 '{normal,anomaly}_id_XX_NNNNNNNN.wav'; "
    "DCASE 2021-2023 'section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_<attr>_<value>...].wav'; "
    "or one sub-folder per label '<dir>/<label>/*.wav'")

_DCASE2021 = re.compile(
    r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)"
    r"_(?P<index>\d+)(?:_(?P<attrs>.*))?$", re.IGNORECASE)
_DCASE2021_UNLABELLED = re.compile(
    r"^section_(?P<section>\d+)_(?:(?P<domain>source|target)_)?(?:(?P<split>train|test)_)?(?P<index>\d+)"
    r"(?:_(?P<attrs>.*))?$", re.IGNORECASE)
_DCASE2020 = re.compile(r"^(?P<label>normal|anomaly)_id_(?P<id>\d+)_(?P<index>\d+)$", re.IGNORECASE)
_MIMII_ID = re.compile(r"^id_\d+$", re.IGNORECASE)
_MIMII_LABELS = {"normal": NORMAL, "abnormal": ANOMALY, "anomaly": ANOMALY}
_STRUCTURAL = re.compile(r"^(train|test|source_test|target_test|normal|abnormal|anomaly|id_\d+|section_\d+)$",
                         re.IGNORECASE)
_SPLITS = {"train", "test"}
_NO_ATTRIBUTES = {"noattribute", "noattributes"}


class DatasetError(ValueError):
    """A folder or file is not usable as a dataset. The message names it and says what was expected."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One labelled audio file of a dataset."""

    path: Path
    """Where the WAV file is."""
    label: str
    """``normal`` / ``anomaly`` (MIMII, DCASE), the sub-folder name (``folders``), or ``unknown``."""
    machine: str
    """Machine type (``fan``, ``valve``...), from the folder names; ``""`` when nothing says."""
    machine_id: str
    """Unit or section within the machine type: ``id_00`` (MIMII, DCASE 2020), ``section_00`` (DCASE 2021+)."""
    domain: str = "source"
    """``source`` or ``target`` (DCASE 2021+ domain shift); ``source`` for the other layouts."""
    attributes: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    """Operating conditions parsed from a DCASE 2021+ name, e.g. ``{"vel": "620", "ac": "0.08"}``."""
    split: str = ""
    """``train`` / ``test`` where the dataset says (DCASE file name or folder), else ``""``."""
    layout: str = ""
    """The layout the clip was recognised by (one of ``LAYOUTS``)."""

    @property
    def is_anomaly(self) -> bool:
        """True for labelled clips whose label is not ``normal``."""
        return self.label not in (NORMAL, UNKNOWN)


# --------------------------------------------------------------------------------------------
# Recognising files


def parse_attributes(text: str) -> dict[str, str]:
    """``"vel_620_ac_0.08"`` → ``{"vel": "620", "ac": "0.08"}``; an unpaired last token maps to ``""``."""
    if not text or text.lower() in _NO_ATTRIBUTES:
        return {}
    tokens = text.split("_")
    out = {}
    for i in range(0, len(tokens), 2):
        out[tokens[i]] = tokens[i + 1] if i + 1 < len(tokens) else ""
    return out


def parse_clip(path: Union[str, Path]) -> Optional[Clip]:
    """The clip a path describes by a named layout (DCASE name, then MIMII folders), or None."""
    p = Path(path)
    if p.suffix.lower() != ".wav":
        return None
    stem = p.stem
    m = _DCASE2021.match(stem)
    if m:
        return Clip(path=p, label=m["label"].lower(), machine=_machine_type(p), machine_id=f"section_{m['section']}",
                    domain=m["domain"].lower(), attributes=parse_attributes(m["attrs"] or ""),
                    split=m["split"].lower(), layout="dcase2021")
    m = _DCASE2020.match(stem)
    if m:
        return Clip(path=p, label=m["label"].lower(), machine=_machine_type(p), machine_id=f"id_{m['id']}",
                    split=_folder_split(p), layout="dcase2020")
    m = _DCASE2021_UNLABELLED.match(stem)
    if m:
        return Clip(path=p, label=UNKNOWN, machine=_machine_type(p), machine_id=f"section_{m['section']}",
                    domain=(m["domain"] or "source").lower(), attributes=parse_attributes(m["attrs"] or ""),
                    split=(m["split"] or _folder_split(p)).lower(), layout="dcase2021")
    label_dir, id_dir = p.parent, p.parent.parent
    if label_dir.name.lower() in _MIMII_LABELS and _MIMII_ID.match(id_dir.name):
        return Clip(path=p, label=_MIMII_LABELS[label_dir.name.lower()], machine=_machine_type(p),
                    machine_id=id_dir.name.lower(), layout="mimii")
    return None


def _machine_type(path: Path) -> str:
    """The nearest enclosing folder whose name is not structural (train, id_00, normal...)."""
    for parent in path.absolute().parents:
        if parent.name and not _STRUCTURAL.match(parent.name):
            return parent.name
    return ""


def _folder_split(path: Path) -> str:
    for parent in path.parents:
        if parent.name.lower() in _SPLITS:
            return parent.name.lower()
    return ""


def _wav_files(root: Path) -> list[Path]:
    """Every ``*.wav`` below ``root`` (case-insensitive), skipping hidden files and folders, sorted."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if p.suffix.lower() == ".wav" and p.is_file():
            found.append(p)
    return sorted(found, key=natural_key)


def _check_dir(root: Path) -> None:
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; a dataset is a folder of WAV files ({_EXPECTED})")


# --------------------------------------------------------------------------------------------
# Loading datasets


def detect_layout(directory: Union[str, Path]) -> str:
    """The layout of the WAVs below ``directory``: one of ``LAYOUTS`` (never ``files``) or ``mixed``.

    Raises DatasetError naming the folder when it holds no recognisable WAVs.
    """
    root = Path(directory)
    _check_dir(root)
    wavs = _wav_files(root)
    named = {c.layout for c in (parse_clip(w) for w in wavs) if c is not None}
    if len(named) == 1:
        return named.pop()
    if named:
        return "mixed"
    _folder_clips(root, wavs)  # raises when the folders layout doesn't fit either
    return "folders"


def load_dataset(directory: Union[str, Path], layout: Optional[str] = None) -> list[Clip]:
    """Every clip below ``directory``, sorted by path; the layout is detected unless given.

    WAVs that match no named layout are skipped (with one warning) when others do.
    Raises DatasetError naming the folder when it holds no recognisable WAVs.
    """
    root = Path(directory)
    _check_dir(root)
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    wavs = _wav_files(root)
    if layout == "files":
        if not wavs:
            raise DatasetError(f"no .wav files below {root}")
        return [Clip(path=w, label=UNKNOWN, machine=_machine_type(w), machine_id="", layout="files") for w in wavs]
    if layout == "folders":
        return _folder_clips(root, wavs)
    parsed = [(w, parse_clip(w)) for w in wavs]
    clips = [c for _, c in parsed if c is not None and (layout is None or c.layout == layout)]
    if not clips:
        if layout is None:
            return _folder_clips(root, wavs)
        raise DatasetError(f"no WAV files of the {layout} layout below {root} ({len(wavs)} other .wav files); "
                           f"{_EXPECTED}")
    skipped = [w for w, c in parsed if c is None or (layout is not None and c.layout != layout)]
    if skipped:
        _LOGGER.warning("%s: skipped %d WAV files that match no dataset layout, e.g. %s",
                        root, len(skipped), skipped[0])
    return clips


def _folder_clips(root: Path, wavs: list[Path]) -> list[Clip]:
    """The ``folders`` layout: the first sub-folder below ``root`` is the label."""
    if not wavs:
        raise DatasetError(f"no .wav files below {root}; {_EXPECTED}")
    clips, loose = [], []
    for w in wavs:
        rel = w.relative_to(root).parts
        if len(rel) < 2:
            loose.append(w)
            continue
        clips.append(Clip(path=w, label=rel[0], machine="", machine_id="", layout="folders"))
    if not clips:
        raise DatasetError(f"{root} holds {len(loose)} .wav files but no label sub-folders and no file names "
                           f"of a known dataset; {_EXPECTED}")
    if loose:
        _LOGGER.warning("%s: ignored %d WAV files directly in the folder (not in a label sub-folder)",
                        root, len(loose))
    return clips


def summary(clips: Sequence[Clip]) -> dict[str, dict[str, int]]:
    """Counts of clips per layout, machine, machine_id, label, domain and split (for model metadata)."""
    out: dict[str, dict[str, int]] = {}
    for field in ("layout", "machine", "machine_id", "label", "domain", "split"):
        counts: dict[str, int] = {}
        for c in clips:
            key = getattr(c, field)
            counts[key] = counts.get(key, 0) + 1
        out[field] = dict(sorted(counts.items()))
    return out


# --------------------------------------------------------------------------------------------
# Audio


def load_audio(clip_or_path: Union[Clip, str, Path], sample_rate_hz: Optional[int] = 16000,
               channel: Union[int, str] = "mean", *, resample: bool = False) -> np.ndarray:
    """The clip's samples as (n,) float32 in [-1, 1).

    ``channel`` is a 0-based channel index or ``"mean"`` (average of all channels).
    If the file's rate differs from ``sample_rate_hz`` this raises DatasetError,
    unless ``resample=True`` asks for a conversion. ``sample_rate_hz=None`` accepts any rate.
    """
    path = clip_or_path.path if isinstance(clip_or_path, Clip) else Path(clip_or_path)
    samples, rate_hz = read_wav(path)
    channels = samples.shape[1]
    if channel == "mean":
        mono = samples.mean(axis=1, dtype=np.float64).astype(np.float32) if channels > 1 else samples[:, 0]
    elif isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not -channels <= channel < channels:
            raise DatasetError(f"{path}: channel {channel} requested but the file has {channels} channel(s) "
                               f"(0..{channels - 1})")
        mono = samples[:, int(channel)]
    else:
        raise DatasetError(f"channel={channel!r}: expected a 0-based channel index or 'mean'")
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sample_rate_hz is None or rate_hz == sample_rate_hz:
        return mono
    if not resample:
        raise DatasetError(f"{path}: sample rate is {rate_hz} Hz but {sample_rate_hz} Hz is expected; resample "
                           f"the files first (e.g. `sox in.wav -r {sample_rate_hz} out.wav`) or pass resample=True")
    from edge_monitor.sources.resample import resample as _resample

    return np.asarray(_resample(mono, rate_hz, int(sample_rate_hz)), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Splits


def natural_key(path: Union[Clip, str, Path]) -> tuple:
    """Sort key for paths in which numbers compare by value (``clip_2`` before ``clip_10``)."""
    p = path.path if isinstance(path, Clip) else Path(path)
    return tuple(tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok)
                       for tok in re.split(r"(\d+)", part) if tok != "")
                 for part in p.parts)


def sort_clips(clips: Iterable[Clip]) -> list[Clip]:
    """Clips sorted by path (numbers by value), whatever order the file system listed them in."""
    return sorted(clips, key=natural_key)


def take_first(clips: Iterable[Clip], n: int) -> tuple[list[Clip], list[Clip]]:
    """``(first n clips sorted by name, the rest)``: the "train on the first 40 of 75" protocol."""
    ordered = sort_clips(clips)
    if n < 0 or n > len(ordered):
        raise DatasetError(f"take_first: asked for the first {n} clips but there are {len(ordered)}")
    return ordered[:n], ordered[n:]


def split(clips: Iterable[Clip], sizes: Sequence[Union[int, float]], seed: int = 0) -> list[list[Clip]]:
    """Deterministic random split into ``len(sizes)`` parts, independent of the input order.

    ``sizes`` are either all counts (ints, summing to at most the number of clips)
    or all fractions (floats summing to at most 1; the last part takes the rounding
    remainder when they sum to 1). Clips are sorted by path, then shuffled by a
    permutation seeded with ``seed``; each part is returned sorted by path.
    """
    ordered = sort_clips(clips)
    total = len(ordered)
    if not sizes:
        raise DatasetError("split: sizes is empty; give counts like (40, 35) or fractions like (0.8, 0.2)")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
        counts = [int(s) for s in sizes]
        if any(c < 0 for c in counts) or sum(counts) > total:
            raise DatasetError(f"split: counts {list(sizes)} need {sum(counts)} clips but there are {total}")
    else:
        fractions = [float(s) for s in sizes]
        if any(f < 0.0 for f in fractions) or sum(fractions) > 1.0 + 1e-9:
            raise DatasetError(f"split: fractions {list(sizes)} must be >= 0 and sum to at most 1")
        bounds = np.round(np.cumsum(fractions) * total).astype(int)
        if abs(sum(fractions) - 1.0) <= 1e-9:
            bounds[-1] = total
        counts = list(np.diff(np.r_[0, bounds]))
    order = np.random.default_rng(int(seed)).permutation(total)
    parts, start = [], 0
    for c in counts:
        parts.append(sort_clips(ordered[i] for i in order[start:start + c]))
        start += c
    return parts


def parse_channel(text: str) -> Union[str, int, tuple[int, ...]]:
    """``mean`` | ``N`` | ``N,M,...`` (averaged) → the ``channel`` argument of ``load_audio``/``to_mono_float``.

    Raises ValueError naming the bad text.
    """
    t = str(text).strip().lower()
    if t == "mean":
        return "mean"
    try:
        idx = [int(x) for x in t.split(",")]
    except ValueError:
        raise ValueError(f"--channel must be 'mean', an index or a comma-separated list, got {text!r}") from None
    return idx[0] if len(idx) == 1 else tuple(idx)


def channel_arg(text: str) -> Union[str, int, tuple[int, ...]]:
    """``parse_channel`` as an argparse ``type=``."""
    import argparse

    try:
        return parse_channel(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
