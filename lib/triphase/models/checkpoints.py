"""Checkpoints: one model state along a training run, and how to choose them.

A checkpoint series (see :mod:`triphase.models.series`) is an ordered list of
:class:`Checkpoint`; every result table carries ``checkpoint``, ``step`` and
``tokens_seen`` so perspectives can be joined.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: Pythia's dense early schedule: step0 then powers of two up to 512.
PYTHIA_EARLY_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series.

    Parameters
    ----------
    series : str
        Series name (``"organism"``, ``"pythia-160m"``, ...).
    name : str
        Revision-like name, e.g. ``"step1000"``.
    step : int
        Optimiser steps taken.
    tokens_seen : int
        Training tokens seen at this step.
    source : str
        A local folder (Hugging Face format) or a hub repo id.
    revision : str or None
        Hub revision (branch) for hub sources; None for local folders.
    tier : str
        ``"embedded"`` or ``"real"``.
    """

    series: str
    name: str
    step: int
    tokens_seen: int
    source: str
    revision: str | None = None
    tier: str = "embedded"

    def to_dict(self) -> dict:
        return asdict(self)

    def columns(self) -> dict:
        """The join columns every results table carries."""
        return {
            "series": self.series,
            "checkpoint": self.name,
            "step": int(self.step),
            "tokens_seen": int(self.tokens_seen),
            "tier": self.tier,
        }


def pythia_steps(final_step: int, every: int) -> list[int]:
    """Checkpoint steps on Pythia's schedule.

    step0, steps 1, 2, 4, ..., 512 (those below ``every`` and ``final_step``),
    then every ``every`` steps up to and including ``final_step``.

    Examples
    --------
    >>> pythia_steps(3000, 1000)
    [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    >>> len(pythia_steps(143000, 1000))
    154
    """
    if final_step < 1 or every < 1:
        raise ValueError(f"final_step and every must be >= 1, got final_step={final_step}, every={every}")
    early = [s for s in PYTHIA_EARLY_STEPS if s < min(every, final_step)]
    regular = list(range(every, final_step + 1, every))
    if not regular or regular[-1] != final_step:
        regular.append(final_step)
    return sorted(set(early + regular))


def select_checkpoints(checkpoints: Sequence[Checkpoint], spec="all") -> list[Checkpoint]:
    """Choose checkpoints: all, N log-spaced in tokens, or an explicit list.

    Parameters
    ----------
    checkpoints : sequence of Checkpoint
        The series, in training order.
    spec : "all", int or list of str/int
        ``"all"``; an integer N (N checkpoints spread evenly in log tokens seen,
        always including the first and the last); or a list of names
        (``"step1000"``) or steps (``1000``).

    Returns
    -------
    list of Checkpoint, in training order.

    Examples
    --------
    >>> cks = [Checkpoint("s", f"step{s}", s, s * 10, "x") for s in pythia_steps(4000, 1000)]
    >>> [c.name for c in select_checkpoints(cks, 3)]
    ['step0', 'step32', 'step4000']
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("the series has no checkpoints to choose from")
    if spec is None or (isinstance(spec, str) and spec == "all"):
        return checkpoints
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return _log_spaced(checkpoints, int(spec))
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, (list, tuple)):
        raise TypeError(f"checkpoints must be 'all', an integer or a list of names, got {spec!r}")
    by_name = {c.name: c for c in checkpoints}
    by_step = {c.step: c for c in checkpoints}
    chosen = []
    for item in spec:
        if isinstance(item, (int, np.integer)) and int(item) in by_step:
            chosen.append(by_step[int(item)])
        elif str(item) in by_name:
            chosen.append(by_name[str(item)])
        else:
            near = difflib.get_close_matches(str(item), list(by_name), n=5, cutoff=0.3)
            raise ValueError(
                f"unknown checkpoint {item!r} in series {checkpoints[0].series!r}; "
                f"nearest valid names: {', '.join(near) or 'none'} "
                f"(series has {len(checkpoints)} checkpoints from {checkpoints[0].name} to {checkpoints[-1].name})"
            )
    order = {c.name: i for i, c in enumerate(checkpoints)}
    return sorted(set(chosen), key=lambda c: order[c.name])


def _log_spaced(checkpoints: list[Checkpoint], n: int) -> list[Checkpoint]:
    if n < 2:
        raise ValueError(f"checkpoints={n}: ask for at least 2 log-spaced checkpoints (first and last)")
    if n >= len(checkpoints):
        return checkpoints
    tokens = np.array([c.tokens_seen for c in checkpoints], dtype=float)
    positive = tokens[tokens > 0]
    # step0 has zero tokens: give it a log position one early-checkpoint spacing before the first
    floor = positive.min() / 2 if positive.size else 1.0
    logt = np.log10(np.maximum(tokens, floor))
    targets = np.linspace(logt[0], logt[-1], n)
    chosen: list[int] = []
    for t in targets:
        for idx in np.argsort(np.abs(logt - t), kind="stable"):
            if idx not in chosen:
                chosen.append(int(idx))
                break
    chosen[0], chosen[-1] = 0, len(checkpoints) - 1
    return [checkpoints[i] for i in sorted(set(chosen))]
