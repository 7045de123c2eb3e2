"""Any lab's data: word-timing TSVs + response arrays + a JSON sidecar.

Layout under ``root``::

    dataset.json                                the sidecar (below)
    stimuli/<story>_events.tsv                  BIDS events style: onset, duration, word (seconds)
    responses/<subject>/<story>.npy | .hf5      TRs x voxels (.hf5: dataset "data"), already trimmed
    responses/<subject>/<story>_repeats.npy     optional: repeats x TRs x voxels (noise ceiling)

Sidecar fields (``dataset.json``)::

    {
      "tr": 2.0,                         repetition time (s), required
      "split": {"test": ["story3"]},     test stories (train = all others) or {"train": [...], "test": [...]}
      "trim": [10, 5],                   stimulus rows dropped at start / end (default [0, 0])
      "first_volume_time": 0.0,          onset of the first volume on the events' clock (s, default 0)
      "word_join": " ",                  how words join into text: " " (English), "" (Japanese, Chinese)
      "word_column": "word",             the events column holding words (default "word")
      "language": "en",                  informative
      "name": "mylab"                    informative
    }

The TR grid of a story has ``trim[0] + R + trim[1]`` rows, ``R`` the rows of
its response file; row ``i`` is sampled at mid-volume,
``first_volume_time + (i + 0.5) TR``. Stimulus rows after trimming must equal
response rows (checked). For text written without spaces set
``"word_join": ""``: features are then read from ``"".join(words)`` and each
word is mapped to its last token by character offsets
(:func:`triphase.models.features.word_hidden_states` with ``join=""``).

Examples
--------
>>> ds = GenericDataset(root="/data/mylab")  # doctest: +SKIP
>>> ds.word_timings("story1").to_frame().head()  # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from triphase.datasets._base import Dataset, VoxelSpace, WordTimings, file_identity

SIDECAR = "dataset.json"
EVENTS_SUFFIX = "_events.tsv"
REPEATS_SUFFIX = "_repeats"
RESPONSE_KEY = "data"
#: Sidecar fields and what they must be (for error messages).
SIDECAR_FIELDS = {
    "tr": "a positive number (seconds)",
    "split": "a mapping with 'test' (and optionally 'train') story lists",
    "trim": "a pair [start, stop] of non-negative integers",
    "first_volume_time": "a number (seconds)",
    "word_join": "a string (' ' or '')",
    "word_column": "a column name of the events files",
    "language": "a language code",
    "name": "a short name",
}


class GenericDataset(Dataset):
    """A dataset given as word-timing TSVs, response arrays and a JSON sidecar (see the module docstring).

    Parameters
    ----------
    root : str or Path
        Folder holding ``dataset.json``, ``stimuli/`` and ``responses/``.
    """

    tier = "real"

    def __init__(self, root):
        if root is None:
            raise ValueError("the generic dataset needs dataset_options: {root: <folder with dataset.json>}")
        self.root = Path(root).expanduser()
        path = self.root / SIDECAR
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: a generic dataset folder needs the sidecar {SIDECAR} "
                                    f"(fields: {', '.join(SIDECAR_FIELDS)})")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        self.meta = self._validate(meta, path)
        self.name = str(self.meta.get("name", "generic"))
        self.word_join = self.meta.get("word_join", " ")
        self._timings: dict[str, WordTimings] = {}

    @staticmethod
    def _validate(meta, path) -> dict:
        if not isinstance(meta, dict):
            raise ValueError(f"{path} must hold a JSON object")
        unknown = sorted(set(meta) - set(SIDECAR_FIELDS))
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; allowed: {', '.join(SIDECAR_FIELDS)}")
        tr = meta.get("tr")
        if isinstance(tr, bool) or not isinstance(tr, (int, float)) or tr <= 0:
            raise ValueError(f"{path}: field 'tr' must be {SIDECAR_FIELDS['tr']}, got {tr!r}")
        split = meta.get("split")
        if not isinstance(split, dict) or not isinstance(split.get("test"), list) or not split["test"]:
            raise ValueError(f"{path}: field 'split' must be {SIDECAR_FIELDS['split']}, got {split!r}")
        trim = meta.get("trim", [0, 0])
        if (not isinstance(trim, list) or len(trim) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in trim)):
            raise ValueError(f"{path}: field 'trim' must be {SIDECAR_FIELDS['trim']}, got {trim!r}")
        join = meta.get("word_join", " ")
        if not isinstance(join, str):
            raise ValueError(f"{path}: field 'word_join' must be {SIDECAR_FIELDS['word_join']}, got {join!r}")
        first = meta.get("first_volume_time", 0.0)
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            raise ValueError(f"{path}: field 'first_volume_time' must be a number, got {first!r}")
        return dict(meta, trim=list(trim))

    # ------------------------------------------------------------------ files
    def _response_file(self, subject: str, story: str) -> Path:
        folder = self.root / "responses" / subject
        for suffix in (".npy", ".hf5", ".h5"):
            path = folder / f"{story}{suffix}"
            if path.exists():
                return path
        raise FileNotFoundError(f"no response file for subject {subject!r}, story {story!r}: expected "
                                f"{folder / (story + '.npy')} or {folder / (story + '.hf5')}")

    @staticmethod
    def _load_array(path: Path, mmap: bool = False) -> np.ndarray:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r" if mmap else None)

        with h5py.File(path, "r") as handle:
            if RESPONSE_KEY not in handle:
                raise KeyError(f"{path} has no dataset {RESPONSE_KEY!r}; keys: {', '.join(handle.keys())}")
            return handle[RESPONSE_KEY][...]

    # ------------------------------------------------------------------ interface
    @property
    def subjects(self) -> list[str]:
        folder = self.root / "responses"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def tr(self, subject: str) -> float:
        return float(self.meta["tr"])

    def stories(self, subject: str) -> list[str]:
        self.check_subject(subject)
        folder = self.root / "responses" / subject
        found = {p.stem for p in folder.iterdir() if p.suffix in (".npy", ".hf5", ".h5")
                 and not p.stem.endswith(REPEATS_SUFFIX)}
        return sorted(found)

    def split(self, subject: str) -> tuple[list[str], list[str]]:
        stories = self.stories(subject)
        test = list(self.meta["split"]["test"])
        missing = [s for s in test if s not in stories]
        if missing:
            raise FileNotFoundError(f"subject {subject}: test stories {missing} (sidecar 'split.test') have no "
                                    f"response file in {self.root / 'responses' / subject}")
        train = self.meta["split"].get("train")
        if train is None:
            train = [s for s in stories if s not in test]
        else:
            absent = [s for s in train if s not in stories]
            if absent:
                raise FileNotFoundError(f"subject {subject}: training stories {absent} (sidecar 'split.train') "
                                        f"have no response file")
        overlap = sorted(set(train) & set(test))
        if overlap:
            raise ValueError(f"{self.root / SIDECAR}: stories {overlap} are in both split.train and split.test")
        return list(train), test

    def _n_response_rows(self, story: str) -> int:
        counts = {}
        for subject in self.subjects:
            try:
                path = self._response_file(subject, story)
            except FileNotFoundError:
                continue
            if path.suffix == ".npy":
                counts[subject] = int(np.load(path, mmap_mode="r").shape[0])
            else:
                with h5py.File(path, "r") as handle:
                    counts[subject] = int(handle[RESPONSE_KEY].shape[0])
        if not counts:
            raise FileNotFoundError(f"story {story!r} has no response file for any subject under {self.root / 'responses'}")
        if len(set(counts.values())) != 1:
            raise ValueError(f"story {story!r}: subjects have different numbers of TRs {counts}; "
                             "responses must be on one TR grid per story")
        return next(iter(counts.values()))

    def word_timings(self, story: str) -> WordTimings:
        if story in self._timings:
            return self._timings[story]
        path = self.root / "stimuli" / f"{story}{EVENTS_SUFFIX}"
        if not path.exists():
            raise FileNotFoundError(f"word timings {path} do not exist (columns onset, duration, "
                                    f"{self.meta.get('word_column', 'word')})")
        events = pd.read_csv(path, sep="\t", dtype={self.meta.get("word_column", "word"): str},
                             keep_default_na=False, encoding="utf-8")
        column = self.meta.get("word_column", "word")
        for needed in ("onset", "duration", column):
            if needed not in events.columns:
                raise ValueError(f"{path}: missing column {needed!r}; columns: {', '.join(events.columns)}")
        try:
            onset = pd.to_numeric(events["onset"]).to_numpy(float)
            duration = pd.to_numeric(events["duration"]).to_numpy(float)
        except (ValueError, TypeError):
            raise ValueError(f"{path}: columns 'onset' and 'duration' must be numbers in seconds (no 'n/a')") from None
        if np.any(duration < 0):
            raise ValueError(f"{path}: negative durations at rows {np.flatnonzero(duration < 0)[:5].tolist()}")
        words = events[column].astype(str).str.strip().to_numpy()
        keep = words != ""
        order = np.argsort(onset[keep], kind="stable")
        n_rows = self._n_response_rows(story)
        start, stop = self.meta["trim"]
        tr = float(self.meta["tr"])
        tr_times = float(self.meta.get("first_volume_time", 0.0)) + (np.arange(start + n_rows + stop) + 0.5) * tr
        timings = WordTimings(story=story, words=tuple(words[keep][order]), onsets=onset[keep][order],
                              offsets=(onset + duration)[keep][order], tr_times=tr_times, trim=(start, stop))
        self._timings[story] = timings
        return timings

    def responses(self, subject: str, story: str) -> np.ndarray:
        path = self._response_file(subject, story)
        data = np.asarray(self._load_array(path), dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"{path}: responses must be 2-D (TRs x voxels), got shape {data.shape}")
        expected = self.word_timings(story).n_rows
        if data.shape[0] != expected:
            raise ValueError(f"story {story!r}, subject {subject}: {path.name} has {data.shape[0]} TRs but the "
                             f"stimulus has {expected} rows after trimming")
        return data

    def repeats(self, subject: str, story: str) -> np.ndarray | None:
        path = self.root / "responses" / subject / f"{story}{REPEATS_SUFFIX}.npy"
        if not path.exists():
            return None
        data = np.asarray(np.load(path), dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"{path}: repeats must be 3-D (repeats x TRs x voxels), got shape {data.shape}")
        return data

    def story_text(self, story: str) -> str:
        return self.word_join.join(self.word_timings(story).words)

    def identity(self, subject: str) -> dict:
        """The files the subject's data come from: the sidecar, its stories' events and its response files.

        Relative path, size and modification time of each (nothing is read).
        """
        stories = self.stories(subject)
        folder = self.root / "responses" / subject
        files = ([self.root / SIDECAR] + [self.root / "stimuli" / f"{story}{EVENTS_SUFFIX}" for story in stories]
                 + [p for p in folder.iterdir() if p.is_file() and p.suffix in (".npy", ".hf5", ".h5")])
        return {"dataset": self.name, "subject": subject, "files": file_identity(self.root, files)}

    def voxel_space(self, subject: str) -> VoxelSpace:
        return VoxelSpace(mask_img=None, reason=f"generic dataset {self.name!r} gives no voxel space (no mask or affine)")
