"""LeBel et al. 2023 (OpenNeuro ds003020): natural-story listening fMRI, 8 subjects.

Files used, under ``root`` (default ``<data home>/datasets/ds003020``), as the
dataset lays them out::

    derivative/respdict.json                          {story: N TRs acquired}
    derivative/TextGrids/<story>.TextGrid             tier 1 phones, tier 2 words
    derivative/preprocessed_data/<UTS0X>/<story>.hf5  key "data": (N - 20) TRs x voxels

Timing follows the reference pipeline (HuthLab/deep-fMRI-dataset:
``load_simulated_trfiles``, ``TRFile.simulate``, ``DataSequence.from_grid``,
``make_word_ds``, ``apply_zscore_and_hrf``) exactly:

* the TR grid is simulated: ``N - 5`` TRs of 2.0 s, the audio starting 10 s
  after the first trigger, so TR ``i`` is sampled at mid-TR,
  ``t_i = 2.0 i - 10 + 1.0`` seconds on the audio clock (TextGrid times);
* words come from the second tier, lower-cased; after lower-casing and
  stripping braces and spaces, the markers ``sentence_start``,
  ``sentence_end``, ``br``, ``lg``, ``ls``, ``ns``, ``sp`` are dropped, and so
  are empty intervals (the reference keeps empty labels as words; they have no
  tokens for a language model, so we drop them - the only deviation);
* word times are word midpoints (``WordTimings.midpoints``);
* downsampled stimulus rows are trimmed ``[10:-5]`` (``trim=(10, 5)``), so a
  story has ``N - 5 - 15 = N - 20`` rows, the number of rows stored in the
  response file. A disagreement is an error naming the story and both counts.

Subjects, stories and the split are read from the files: a subject's stories
are its ``.hf5`` files, the test story is ``wheretheressmoke`` (the story
repeated in every session), the training stories are all others.

Examples
--------
>>> ds = LeBel2023(root="/data/ds003020")  # doctest: +SKIP
>>> ds.split("UTS03")[1]  # doctest: +SKIP
['wheretheressmoke']
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np

from triphase._home import cache_dir
from triphase.datasets._base import Dataset, VoxelSpace, WordTimings, file_identity
from triphase.datasets.textgrid import read_textgrid

DATASET_ID = "ds003020"
#: Repetition time of the acquisition (s).
TR_SECONDS = 2.0
#: Audio onset after the first trigger (s), as ``load_simulated_trfiles(start_time=10.0)``.
AUDIO_START_SECONDS = 10.0
#: TRs of the simulated grid are N - PAD (``load_simulated_trfiles(pad=5)``).
GRID_PAD_TRS = 5
#: Stimulus rows dropped before/after (``downsampled[5 + trim: -trim]`` with ``trim=5``).
TRIM_ROWS = (10, 5)
#: Markers dropped by ``make_word_ds`` (``DEFAULT_BAD_WORDS``).
DROPPED_MARKERS = frozenset({"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp"})
#: Tier indices (0-based) of words and phones in the TextGrids.
WORD_TIER, PHONE_TIER = 1, 0
TEST_STORIES = ("wheretheressmoke",)
RESPONSE_KEY = "data"


def default_root() -> Path:
    """``<data home>/datasets/ds003020``."""

    return cache_dir("datasets") / DATASET_ID


def fetch_hint(subjects=None, stories=None, root=None) -> str:
    """The command that downloads the missing files, for error messages."""
    command = "triphase fetch lebel2023 --subjects " + " ".join(subjects or ["UTS03"])
    if stories:
        command += " --stories " + " ".join(stories)
    if root is not None:
        command += f" --root {root}"
    return command


def clean_word(label: str) -> str:
    """The key ``make_word_ds`` compares with the marker list: lower-cased, braces and spaces stripped."""
    return label.lower().strip("{}").strip()


def simulated_tr_times(n_acquired: int, tr: float = TR_SECONDS, start: float = AUDIO_START_SECONDS,
                       pad: int = GRID_PAD_TRS) -> np.ndarray:
    """Mid-TR times (audio clock) of the reference pipeline's simulated grid.

    ``TRFile.simulate(N - pad)`` puts triggers at ``arange(N - pad) * tr``;
    relative to the sound (``soundstarttime = start``) and at mid-TR
    (``+ tr / 2``, ``DataSequence.from_grid``).

    Examples
    --------
    >>> simulated_tr_times(8)
    array([-9., -7., -5.])
    """
    n = int(n_acquired) - pad
    if n <= 0:
        raise ValueError(f"respdict gives {n_acquired} TRs: fewer than the {pad} padding TRs of the grid")
    return np.arange(n) * tr - start + tr / 2.0


class LeBel2023(Dataset):
    """LeBel et al. 2023 (ds003020) behind the :class:`~triphase.datasets.Dataset` interface.

    Parameters
    ----------
    root : str or Path, optional
        The dataset folder (the one holding ``derivative/``); default
        ``<data home>/datasets/ds003020``.
    lowercase : bool
        Lower-case words as the reference does (``DataSequence.from_grid``).
    test_stories : sequence of str
        Held-out stories (default ``("wheretheressmoke",)``).
    """

    name = "lebel2023"
    tier = "real"
    word_join = " "

    def __init__(self, root=None, lowercase: bool = True, test_stories=TEST_STORIES):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.lowercase = bool(lowercase)
        self.test_stories = tuple(test_stories)
        self.derivative = self.root / "derivative"
        if not self.derivative.is_dir():
            raise FileNotFoundError(
                f"LeBel et al. 2023 not found: {self.derivative} does not exist. Download it with "
                f"`{fetch_hint(root=self.root)}` (on a machine with internet; then copy the folder "
                f"{self.root} here, keeping derivative/ inside it)."
            )
        self._timings: dict[str, WordTimings] = {}

    # ------------------------------------------------------------------ files
    def _respdict(self) -> dict:
        path = self.derivative / "respdict.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; fetch it with `{fetch_hint(root=self.root)}`")
        return _read_json(str(path), path.stat().st_mtime_ns)

    def _response_path(self, subject: str, story: str) -> Path:
        return self.derivative / "preprocessed_data" / subject / f"{story}.hf5"

    # ------------------------------------------------------------------ interface
    @property
    def subjects(self) -> list[str]:
        folder = self.derivative / "preprocessed_data"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.hf5")))

    def check_subject(self, subject: str) -> None:
        if subject not in self.subjects:
            raise FileNotFoundError(
                f"subject {subject!r} has no response files in {self.derivative / 'preprocessed_data'} "
                f"(found: {', '.join(self.subjects) or 'none'}); fetch it with `{fetch_hint([subject], root=self.root)}`"
            )

    def tr(self, subject: str) -> float:
        return TR_SECONDS

    def stories(self, subject: str) -> list[str]:
        self.check_subject(subject)
        folder = self.derivative / "preprocessed_data" / subject
        return sorted(p.stem for p in folder.glob("*.hf5"))

    def split(self, subject: str) -> tuple[list[str], list[str]]:
        stories = self.stories(subject)
        test = [s for s in self.test_stories if s in stories]
        if not test:
            raise FileNotFoundError(
                f"subject {subject}: the test story {', '.join(self.test_stories)} has no response file in "
                f"{self.derivative / 'preprocessed_data' / subject}; fetch it with "
                f"`{fetch_hint([subject], list(self.test_stories), self.root)}`"
            )
        return [s for s in stories if s not in test], test

    def n_acquired(self, story: str) -> int:
        """N, the TRs acquired for a story (``respdict.json``)."""
        respdict = self._respdict()
        if story not in respdict:
            raise KeyError(f"story {story!r} is not in {self.derivative / 'respdict.json'} "
                           f"({len(respdict)} stories listed)")
        return int(respdict[story])

    def word_timings(self, story: str) -> WordTimings:
        if story in self._timings:
            return self._timings[story]
        path = self.derivative / "TextGrids" / f"{story}.TextGrid"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; fetch it with "
                                    f"`{fetch_hint(stories=[story], root=self.root)}`")
        grid = read_textgrid(path)
        if len(grid.tiers) <= WORD_TIER:
            raise ValueError(f"{path}: expected a phone tier and a word tier (tier 2), found "
                             f"{len(grid.tiers)} tier(s): {grid.tier_names()}")
        words, onsets, offsets = [], [], []
        for interval in grid.tiers[WORD_TIER].intervals:
            key = clean_word(interval.text)
            if not key or key in DROPPED_MARKERS:
                continue
            words.append(interval.text.lower() if self.lowercase else interval.text)
            onsets.append(interval.xmin)
            offsets.append(interval.xmax)
        if not words:
            raise ValueError(f"{path}: no words left in tier 2 after dropping markers")
        timings = WordTimings(story=story, words=tuple(w.strip() for w in words), onsets=np.array(onsets),
                              offsets=np.array(offsets), tr_times=simulated_tr_times(self.n_acquired(story)),
                              trim=TRIM_ROWS)
        self._timings[story] = timings
        return timings

    def phone_times(self, story: str) -> np.ndarray:
        """Midpoints (s) of the phones of a story (TextGrid tier 1), silences and markers dropped.

        The phoneme-rate regressor of the low-level baseline
        (:func:`triphase.brain.baseline.dataset_phone_times`) counts these.
        """
        path = self.derivative / "TextGrids" / f"{story}.TextGrid"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; fetch it with "
                                    f"`{fetch_hint(stories=[story], root=self.root)}`")
        grid = read_textgrid(path)
        phones = grid.tiers[PHONE_TIER].intervals
        return np.array([(i.xmin + i.xmax) / 2 for i in phones
                         if clean_word(i.text) and clean_word(i.text) not in DROPPED_MARKERS], dtype=float)

    def responses(self, subject: str, story: str) -> np.ndarray:
        path = self._response_path(subject, story)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; fetch it with "
                                    f"`{fetch_hint([subject], [story], self.root)}`")
        with h5py.File(path, "r") as handle:
            if RESPONSE_KEY not in handle:
                raise KeyError(f"{path} has no dataset {RESPONSE_KEY!r}; keys: {', '.join(handle.keys())}")
            data = np.asarray(handle[RESPONSE_KEY][...], dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"{path}: {RESPONSE_KEY!r} must be 2-D (TRs x voxels), got shape {data.shape}")
        expected = self.word_timings(story).n_rows
        if data.shape[0] != expected:
            raise ValueError(
                f"story {story!r}, subject {subject}: the response file has {data.shape[0]} TRs but the stimulus "
                f"has {expected} rows (respdict N = {self.n_acquired(story)}: N - 5 grid TRs, trimmed [10:-5] "
                f"= N - 20); the files disagree"
            )
        return data

    def identity(self, subject: str) -> dict:
        """The files the subject's data come from (``respdict.json``, its stories' TextGrids and responses).

        Relative path, size and modification time of each (nothing is read), and the reading options.
        """
        stories = self.stories(subject)
        files = ([self.derivative / "respdict.json"]
                 + [self.derivative / "TextGrids" / f"{story}.TextGrid" for story in stories]
                 + [self._response_path(subject, story) for story in stories])
        return {"dataset": self.name, "subject": subject, "lowercase": self.lowercase,
                "test_stories": list(self.test_stories), "files": file_identity(self.root, files)}

    def voxel_space(self, subject: str) -> VoxelSpace:
        return VoxelSpace(
            mask_img=None, regions=None,
            reason=("LeBel et al. 2023 responses are cortical voxels in each subject's own anatomy, with no MNI "
                    "affine; brain maps need pycortex and the subject's pycortex database "
                    "(derivative/pycortex-db), so figures show histograms and summaries instead"),
        )


@lru_cache(maxsize=8)
def _read_json(path: str, mtime_ns: int) -> dict:
    with open(path) as handle:
        values = json.load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping story -> number of TRs")
    return values
