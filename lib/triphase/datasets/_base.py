"""The dataset interface every brain-data source implements.

A dataset yields, per subject: story (run) names, word timings, the TR,
responses (TRs x voxels, float32), the train/test split, optional repeated test
runs (for a noise ceiling) and a voxel space for maps. The simulated participant
(embedded tier), LeBel et al. 2023 and user datasets (real tier) all implement
it, so feature and encoding code never needs to know which one it talks to.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class WordTimings:
    """Words of one story with onset/offset times in seconds (audio time).

    ``words`` is a tuple of strings; ``onsets``/``offsets`` float arrays of the
    same length. ``tr_times`` are the times (s, same clock) at which the
    stimulus is sampled onto the TR grid, one per stimulus row *before* trimming;
    ``trim`` = (start, stop) rows removed before responses align
    (``rows[trim[0]: len(rows) - trim[1]]``).
    """

    story: str
    words: tuple[str, ...]
    onsets: np.ndarray
    offsets: np.ndarray
    tr_times: np.ndarray
    trim: tuple[int, int] = (0, 0)

    def __post_init__(self):
        n = len(self.words)
        if n == 0:
            raise ValueError(f"story {self.story!r} has no words")
        for name in ("onsets", "offsets"):
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != (n,):
                raise ValueError(f"story {self.story!r}: {name} has shape {arr.shape}, expected ({n},)")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "tr_times", np.asarray(self.tr_times, dtype=float))
        if np.any(self.offsets < self.onsets):
            raise ValueError(f"story {self.story!r}: some word offsets precede their onsets")

    @property
    def midpoints(self) -> np.ndarray:
        return (self.onsets + self.offsets) / 2.0

    @property
    def n_rows(self) -> int:
        """Number of stimulus rows after trimming (must equal response rows)."""
        return len(self.tr_times) - self.trim[0] - self.trim[1]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"word": list(self.words), "onset": self.onsets, "offset": self.offsets})


@dataclass(frozen=True)
class VoxelSpace:
    """Where voxels live, for maps.

    ``mask_img`` is a nibabel image (3D boolean mask) whose True voxels, in
    C order of ``np.nonzero``, are the response columns; ``None`` for data
    without a template space (then ``reason`` says why maps fall back).
    ``regions`` maps each voxel to a region label (``"none"`` outside regions).
    """

    mask_img: object | None
    regions: np.ndarray | None = None
    reason: str = ""


class Dataset(abc.ABC):
    """Abstract brain dataset (see module docstring)."""

    #: short name used in result paths, e.g. ``"simulated"`` or ``"lebel2023"``
    name: str = "dataset"
    #: ``"embedded"`` or ``"real"``
    tier: str = "real"

    @property
    @abc.abstractmethod
    def subjects(self) -> list[str]:
        """Subject identifiers."""

    @abc.abstractmethod
    def tr(self, subject: str) -> float:
        """Repetition time in seconds."""

    @abc.abstractmethod
    def stories(self, subject: str) -> list[str]:
        """All story (run) names available for a subject."""

    @abc.abstractmethod
    def split(self, subject: str) -> tuple[list[str], list[str]]:
        """(train stories, test stories)."""

    @abc.abstractmethod
    def word_timings(self, story: str) -> WordTimings:
        """Words, onsets, offsets and the TR sampling grid of one story."""

    @abc.abstractmethod
    def responses(self, subject: str, story: str) -> np.ndarray:
        """Responses (TRs x voxels, float32); for a repeated test story the mean over repeats."""

    def repeats(self, subject: str, story: str) -> np.ndarray | None:
        """Repeated presentations (repeats x TRs x voxels) or None."""
        return None

    def voxel_space(self, subject: str) -> VoxelSpace:
        return VoxelSpace(mask_img=None, reason=f"dataset {self.name!r} defines no voxel space")

    def story_text(self, story: str) -> str:
        """The story as one string (words joined by spaces unless overridden)."""
        return " ".join(self.word_timings(story).words)

    def identity(self, subject: str) -> dict:
        """What a subject's data are, cheaply: it changes when the data change and not otherwise.

        A result computed from the subject's data (an executed notebook, a
        cached table) is keyed by it. An adapter reading files lists the files
        the subject's data come from (:func:`file_identity`: relative path,
        size, modification time, nothing read); a generated dataset gives what
        generates it. This default knows only the adapter's name: adapters with
        data override it.
        """
        return {"dataset": self.name, "subject": subject}

    def check_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            raise ValueError(
                f"unknown subject {subject!r} for dataset {self.name!r}; available: {', '.join(self.subjects)}"
            )


def file_identity(root, paths) -> list[list]:
    """``[relative path, size, mtime_ns]`` of each file, sorted; ``[path, None, None]`` for a missing one.

    A cheap identity of files (nothing is read): a file rewritten, replaced,
    added or removed changes it. Paths outside ``root`` keep their absolute form.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("abc")
    >>> [entry[:2] for entry in file_identity(root, [root / "a.txt", root / "b.txt"])]
    [['a.txt', 3], ['b.txt', None]]
    """
    root = Path(root)
    entries = []
    for path in {Path(p) for p in paths}:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.as_posix()
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            entries.append([name, None, None])
            continue
        entries.append([name, stat.st_size, stat.st_mtime_ns])
    return sorted(entries, key=lambda entry: entry[0])
