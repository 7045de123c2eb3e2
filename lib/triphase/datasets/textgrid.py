"""Praat TextGrid files (interval tiers), in Praat's long and short text formats.

A TextGrid holds tiers; an interval tier is a list of ``(xmin, xmax, text)``
intervals in seconds. Forced aligners (and the LeBel et al. 2023 release)
write one tier of phones and one of words. Both text formats Praat writes are
read:

* the **long** ("ooTextFile" with ``xmin = ...`` labels, ``item [1]:``...);
* the **short** format (same header, then bare values one per line).

Strings are double-quoted, with ``""`` as an escaped quote, as Praat writes
them. Point tiers (``TextTier``) are read with ``xmin == xmax``.

Examples
--------
>>> text = '''File type = "ooTextFile"
... Object class = "TextGrid"
...
... xmin = 0
... xmax = 1.5
... tiers? <exists>
... size = 1
... item []:
...     item [1]:
...         class = "IntervalTier"
...         name = "word"
...         xmin = 0
...         xmax = 1.5
...         intervals: size = 2
...         intervals [1]:
...             xmin = 0
...             xmax = 0.5
...             text = "sp"
...         intervals [2]:
...             xmin = 0.5
...             xmax = 1.5
...             text = "hello"
... '''
>>> grid = parse_textgrid(text)
>>> grid.tiers[0].name, grid.tiers[0].intervals[1]
('word', Interval(xmin=0.5, xmax=1.5, text='hello'))
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: A token of a Praat text file: a quoted string (``""`` escapes a quote) or a bare word/number.
_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s"]+)')
INTERVAL_TIER = "IntervalTier"
POINT_TIER = "TextTier"


class Interval(NamedTuple):
    """One interval (or point, with ``xmin == xmax``) of a tier."""

    xmin: float
    xmax: float
    text: str


@dataclass(frozen=True)
class Tier:
    """A named tier: ``kind`` is ``"IntervalTier"`` or ``"TextTier"``."""

    kind: str
    name: str
    xmin: float
    xmax: float
    intervals: tuple[Interval, ...]


@dataclass(frozen=True)
class TextGrid:
    """All tiers of one TextGrid file, in file order (tier 1 first)."""

    xmin: float
    xmax: float
    tiers: tuple[Tier, ...]
    source: str = "<text>"

    def tier(self, index_or_name) -> Tier:
        """A tier by 0-based index or by name (error lists what exists)."""
        if isinstance(index_or_name, int):
            if not -len(self.tiers) <= index_or_name < len(self.tiers):
                raise IndexError(f"{self.source}: tier index {index_or_name} out of range; "
                                 f"the file has {len(self.tiers)} tier(s): {self.tier_names()}")
            return self.tiers[index_or_name]
        for tier in self.tiers:
            if tier.name == index_or_name:
                return tier
        raise KeyError(f"{self.source}: no tier named {index_or_name!r}; tiers: {self.tier_names()}")

    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]


class TextGridError(ValueError):
    """A TextGrid file could not be read (message names the file and what was expected)."""


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(value, is_string) of every value token: quoted strings, numbers and ``<exists>``/``<absent>``.

    Long-format labels (``xmin =``, ``item [1]:``, ``intervals: size =``) are
    bare words that are neither numbers nor flags, so dropping them leaves the
    same value sequence as the short format.
    """
    out = []
    for match in _TOKEN.finditer(text):
        if match.group(1) is not None:
            out.append((match.group(1).replace('""', '"'), True))
            continue
        word = match.group(2)
        if word in ("<exists>", "<absent>"):
            out.append((word, False))
            continue
        try:
            float(word)
        except ValueError:
            continue  # a label
        out.append((word, False))
    return out


def parse_textgrid(text: str, source: str = "<text>") -> TextGrid:
    """Parse the text of a TextGrid (long or short format).

    Parameters
    ----------
    text : str
    source : str
        File name for error messages.

    Returns
    -------
    TextGrid
    """
    text = text.lstrip("\ufeff")
    tokens = _tokens(text)
    pos = 0

    def take(expect: str):
        nonlocal pos
        if pos >= len(tokens):
            raise TextGridError(f"{source}: file ends early; expected {expect}")
        value = tokens[pos]
        pos += 1
        return value

    def take_number(expect: str) -> float:
        value, is_string = take(expect)
        try:
            if is_string:
                raise ValueError
            return float(value)
        except ValueError:
            raise TextGridError(f"{source}: expected {expect} (a number), found {value!r}") from None

    def take_string(expect: str) -> str:
        value, is_string = take(expect)
        if not is_string:
            raise TextGridError(f"{source}: expected {expect} (a quoted string), found {value!r}")
        return value

    file_type = take_string('File type = "ooTextFile"')
    if file_type != "ooTextFile":
        raise TextGridError(f"{source}: not a Praat text file (File type {file_type!r}, expected 'ooTextFile'); "
                            "the binary and chronological formats are not supported")
    object_class = take_string('Object class = "TextGrid"')
    if object_class != "TextGrid":
        raise TextGridError(f"{source}: object class {object_class!r}, expected 'TextGrid'")
    xmin = take_number("the file's xmin")
    xmax = take_number("the file's xmax")
    exists, _ = take("'<exists>' (tiers present)")
    if exists != "<exists>":
        return TextGrid(xmin, xmax, (), source)
    n_tiers = int(take_number("the number of tiers"))
    tiers = []
    for t in range(n_tiers):
        kind = take_string(f"the class of tier {t + 1}")
        if kind not in (INTERVAL_TIER, POINT_TIER):
            raise TextGridError(f"{source}: tier {t + 1} has class {kind!r}; expected "
                                f"{INTERVAL_TIER!r} or {POINT_TIER!r}")
        name = take_string(f"the name of tier {t + 1}")
        t_min = take_number(f"xmin of tier {t + 1}")
        t_max = take_number(f"xmax of tier {t + 1}")
        n_items = int(take_number(f"the number of intervals of tier {t + 1}"))
        items = []
        for i in range(n_items):
            where = f"tier {t + 1} ({name!r}) interval {i + 1}"
            start = take_number(f"xmin of {where}")
            if kind == INTERVAL_TIER:
                stop = take_number(f"xmax of {where}")
            else:
                stop = start
            label = take_string(f"the text of {where}")
            if stop < start:
                raise TextGridError(f"{source}: {where} ends ({stop}) before it starts ({start})")
            items.append(Interval(start, stop, label))
        tiers.append(Tier(kind, name, t_min, t_max, tuple(items)))
    return TextGrid(xmin, xmax, tuple(tiers), source)


def read_textgrid(path) -> TextGrid:
    """Read a TextGrid file (UTF-8, UTF-16 with BOM, or Latin-1 fallback).

    Examples
    --------
    >>> read_textgrid("missing.TextGrid")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: ...
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"TextGrid file {path} does not exist")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    return parse_textgrid(text, source=str(path))


def format_textgrid(tiers, xmin: float = 0.0, xmax: float | None = None, short: bool = False) -> str:
    """Write interval tiers as Praat text (long format by default, ``short=True`` for the short one).

    Parameters
    ----------
    tiers : sequence of (name, list of (xmin, xmax, text))
    xmin, xmax : float
        File time domain (``xmax`` defaults to the latest interval end).
    short : bool

    Returns
    -------
    str

    Examples
    --------
    >>> txt = format_textgrid([("word", [(0.0, 0.4, "a"), (0.4, 1.0, 'say "hi"')])])
    >>> parse_textgrid(txt).tiers[0].intervals[1].text
    'say "hi"'
    """
    tiers = [(name, [Interval(float(a), float(b), str(c)) for a, b, c in items]) for name, items in tiers]
    if xmax is None:
        xmax = max((iv.xmax for _, items in tiers for iv in items), default=xmin)

    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'

    def num(x: float) -> str:
        return repr(float(x)) if float(x) != int(x) else str(int(x))

    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', ""]
    if short:
        lines += [num(xmin), num(xmax), "<exists>", str(len(tiers))]
        for name, items in tiers:
            lines += [q(INTERVAL_TIER), q(name), num(xmin), num(xmax), str(len(items))]
            for iv in items:
                lines += [num(iv.xmin), num(iv.xmax), q(iv.text)]
        return "\n".join(lines) + "\n"
    lines += [f"xmin = {num(xmin)} ", f"xmax = {num(xmax)} ", "tiers? <exists> ", f"size = {len(tiers)} ", "item []: "]
    for t, (name, items) in enumerate(tiers, start=1):
        lines += [f"    item [{t}]:", f'        class = "{INTERVAL_TIER}" ', f"        name = {q(name)} ",
                  f"        xmin = {num(xmin)} ", f"        xmax = {num(xmax)} ",
                  f"        intervals: size = {len(items)} "]
        for i, iv in enumerate(items, start=1):
            lines += [f"        intervals [{i}]:", f"            xmin = {num(iv.xmin)} ",
                      f"            xmax = {num(iv.xmax)} ", f"            text = {q(iv.text)} "]
    return "\n".join(lines) + "\n"
