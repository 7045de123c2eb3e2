"""Checkpoint integrity inside the sweeps: missing branches skipped by name, identities in every table.

Public checkpoint branches are known to be missing or to serve the wrong
weights (Pythia's issue tracker reports step0 identical to step1, branches
serving final-era weights). Every perspective's sweep therefore

* goes on when a checkpoint's branch is missing (:func:`missing_reason` tells a
  missing branch from any other error, which still stops the run), and reports
  it by name;
* adds to its results table, per checkpoint, the resolved ``commit``, the weight
  ``fingerprint`` (:func:`triphase.models.integrity.identity_of`, cached on disk so re-runs do
  not reload weights) and ``integrity_flag`` (:func:`triphase.models.integrity.integrity_flags`:
  same weights as the previous checkpoint, as the final one; ``""`` if none);
* writes the flags of every chosen checkpoint, missing ones included, beside the
  table as ``<perspective>_integrity.parquet``, which the notebooks show with
  :func:`integrity_summary`.

Examples
--------
>>> import pandas as pd
>>> flags = pd.DataFrame({"checkpoint": ["step0", "step1"], "flag": ["", ""], "missing": [False, False]})
>>> integrity_summary(flags)
'Checkpoint integrity: all 2 checkpoints loaded; no two consecutive checkpoints share weights and none but the last has the final weights.'
"""
from __future__ import annotations

#: Columns every perspective's results table gains.
import hashlib
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from triphase._home import cache_dir
from triphase._io import stable_hash, write_json, write_parquet
from triphase._progress import tqdm
from triphase.models.hub import _COMMIT, _is_missing_revision_error, cached_commit, ensure_available, is_hub_checkpoint
from triphase.models.loading import load_checkpoint, release

#: Environment values that switch a flag on (as huggingface_hub reads them).
#: Tensors sampled for a fingerprint and values sampled per tensor (cheap for 7B models).
IDENTITY_COLUMNS = ("commit", "fingerprint", "integrity_flag")


class MissingCheckpointWarning(UserWarning):
    """A checkpoint's branch is missing; the sweep goes on without it."""


def missing_reason(exc: BaseException, checkpoint) -> str | None:
    """A readable reason when ``exc`` says the checkpoint's branch/files are missing, else None."""

    if _is_missing_revision_error(exc, checkpoint):
        return f"{checkpoint.source}@{checkpoint.revision} missing: {exc}"
    return None


class SweepLog:
    """Checkpoints a sweep skipped because their branch is missing (reported by name)."""

    def __init__(self, what: str):
        self.what = what
        self.skipped: dict[str, str] = {}

    def skip(self, checkpoint, reason: str) -> None:
        self.skipped[checkpoint.name] = reason
        warnings.warn(f"{self.what}: skipped checkpoint {checkpoint.name}: {reason}", MissingCheckpointWarning,
                      stacklevel=4)

    @contextmanager
    def skip_if_missing(self, checkpoint, required: bool = False):
        """Run the block; if it fails because the checkpoint's branch is missing, record the skip and go on.

        Any other error, or a missing branch of a ``required`` checkpoint, propagates.

        Examples
        --------
        >>> log = SweepLog("demo")
        >>> for ckpt in chosen:  # doctest: +SKIP
        ...     with log.skip_if_missing(ckpt):
        ...         results.append(work(ckpt))
        """
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - only a missing branch is skipped, anything else re-raised
            reason = missing_reason(exc, checkpoint)
            if reason is None or required:
                raise
            self.skip(checkpoint, reason)

    def check_any_done(self, chosen) -> None:
        if chosen and all(c.name in self.skipped for c in chosen):
            raise FileNotFoundError(f"{self.what}: every chosen checkpoint is missing: "
                                    + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))


def checkpoint_flags(chosen: Sequence, log: SweepLog | None = None, device: str = "auto", dtype=None) -> pd.DataFrame:
    """Identity and integrity flags of the chosen checkpoints, in training order.

    Returns
    -------
    DataFrame with ``checkpoint, step, fingerprint, commit, missing, same_as_previous,
    same_as_final, flag``; a missing checkpoint has no fingerprint and the flag
    ``missing: <reason>``.
    """

    skipped = log.skipped if log is not None else {}
    ordered = sorted(chosen, key=lambda c: c.step)
    records = []
    for ckpt in ordered:
        if ckpt.name in skipped:
            records.append({"checkpoint": ckpt.name, "fingerprint": None, "commit": None, "missing": True})
        else:
            identity = identity_of(ckpt, device=device, dtype=dtype)
            records.append({"checkpoint": ckpt.name, "fingerprint": identity["fingerprint"],
                            "commit": identity["commit"], "missing": False})
    flags = integrity_flags(records)
    flags.insert(1, "step", [c.step for c in ordered])
    for i, name in enumerate(flags["checkpoint"]):
        if name in skipped:
            flags.loc[i, "flag"] = f"missing: {skipped[name]}"
    return flags


def attach_identity(table: pd.DataFrame, flags: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the columns :data:`IDENTITY_COLUMNS` joined on ``checkpoint``."""
    identity = flags[["checkpoint", "commit", "fingerprint", "flag"]].rename(columns={"flag": "integrity_flag"})
    out = table.drop(columns=[c for c in IDENTITY_COLUMNS if c in table.columns])
    merged = out.merge(identity, on="checkpoint", how="left", validate="many_to_one")
    if merged["fingerprint"].isna().any():
        names = sorted(set(merged.loc[merged["fingerprint"].isna(), "checkpoint"]))
        raise ValueError(f"no identity for checkpoints {names} that have results")
    return merged


def flags_path(folder, perspective: str) -> Path:
    """Where a perspective's flags live: ``<folder>/<perspective>_integrity.parquet``."""
    return Path(folder) / f"{perspective}_integrity.parquet"


def write_flags(flags: pd.DataFrame, folder, perspective: str) -> Path:
    """Write the flags to :func:`flags_path` (atomically)."""
    path = flags_path(folder, perspective)
    write_parquet(flags, path)
    return path


def load_flags(folder, perspective: str) -> pd.DataFrame:
    """Read the flags written by :func:`write_flags`."""
    path = flags_path(folder, perspective)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the {perspective} notebook/pipeline first")
    return pd.read_parquet(path)


def integrity_summary(flags: pd.DataFrame) -> str:
    """One Markdown paragraph: every flagged or missing checkpoint by name, or that there is none."""
    flagged = flags[flags["flag"].astype(str) != ""]
    n = len(flags)
    n_missing = int(flags["missing"].sum()) if "missing" in flags else 0
    if flagged.empty:
        return (f"Checkpoint integrity: all {n} checkpoints loaded; no two consecutive checkpoints share weights "
                "and none but the last has the final weights.")
    lines = [f"**Checkpoint integrity: {len(flagged)} of {n} checkpoints flagged** "
             f"({n_missing} missing; results of flagged checkpoints are kept, but read them with care):"]
    lines += [f"- `{row.checkpoint}`: {row.flag}" for row in flagged.itertuples()]
    return "\n".join(lines)


FINGERPRINT_TENSORS = 6
FINGERPRINT_VALUES = 4096


# --------------------------------------------------------------------------- identity
def weight_fingerprint(model, n_tensors: int = FINGERPRINT_TENSORS, n_values: int = FINGERPRINT_VALUES) -> str:
    """A cheap hash of a model's weights: a strided sample of a few tensors.

    Tensors are chosen evenly along the state dict (embeddings, middle and last
    blocks, head); from each, ``n_values`` evenly strided values are rounded to
    bfloat16 (so a float32 and a bfloat16 load of the same weights agree) and
    hashed with their names and shapes. Two different training states share a
    fingerprint only if every sampled value agrees.

    Returns
    -------
    str (16 hex characters)
    """
    # deferred: torch and transformers take seconds to import; listing, checks and cached re-runs never need them
    import torch

    state = model.state_dict()
    names = [k for k, v in state.items() if torch.is_floating_point(v) and v.numel() > 0]
    if not names:
        raise ValueError("model has no floating-point tensors to fingerprint")
    picks = sorted(set(np.linspace(0, len(names) - 1, min(n_tensors, len(names))).round().astype(int).tolist()))
    digest = hashlib.sha256()
    for i in picks:
        tensor = state[names[i]].detach().reshape(-1)
        stride = max(1, tensor.numel() // n_values)
        sample = tensor[::stride][:n_values].to("cpu", torch.bfloat16).view(torch.int16).numpy()
        digest.update(names[i].encode())
        digest.update(str(tuple(state[names[i]].shape)).encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def checkpoint_identity(checkpoint, model) -> dict:
    """Resolved commit and weight fingerprint of a loaded checkpoint.

    ``commit`` comes from the loaded config (``_commit_hash``, set by
    ``from_pretrained`` for hub files), else the cache's ``refs/<revision>``;
    None for local folders. Add both to every results table.

    Returns
    -------
    dict(commit=str or None, fingerprint=str)
    """
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    if not (isinstance(commit, str) and _COMMIT.match(commit)):
        commit = None
        if is_hub_checkpoint(checkpoint):
            commit = cached_commit(checkpoint.source, checkpoint.revision)
    return {"commit": commit, "fingerprint": weight_fingerprint(model)}


def integrity_flags(identities) -> "pd.DataFrame":
    """Flag suspicious checkpoints of a sweep.

    Parameters
    ----------
    identities : DataFrame or iterable of dict
        In training order, each with ``checkpoint`` and ``fingerprint``
        (None/NaN for a checkpoint that could not be loaded), optionally
        ``commit`` and ``missing``.

    Returns
    -------
    pandas.DataFrame
        ``checkpoint, fingerprint, commit, missing, same_as_previous,
        same_as_final, flag`` (``flag`` is a readable reason, ``""`` if none).
        The final checkpoint is the last one loaded; ``same_as_previous``
        compares with the previous *loaded* checkpoint.

    Examples
    --------
    >>> flags = integrity_flags([{"checkpoint": "a", "fingerprint": "x"}, {"checkpoint": "b", "fingerprint": "x"},
    ...                          {"checkpoint": "c", "fingerprint": "y"}])
    >>> flags["same_as_previous"].tolist()
    [False, True, False]
    """

    frame = pd.DataFrame(list(identities) if not isinstance(identities, pd.DataFrame) else identities)
    if frame.empty:
        return pd.DataFrame(columns=["checkpoint", "fingerprint", "commit", "missing", "same_as_previous",
                                     "same_as_final", "flag"])
    for column in ("checkpoint", "fingerprint"):
        if column not in frame:
            raise ValueError(f"integrity_flags needs a column {column!r}; got {list(frame.columns)}")
    if "commit" not in frame:
        frame["commit"] = None
    fingerprints = [None if (f is None or (isinstance(f, float) and np.isnan(f))) else str(f)
                    for f in frame["fingerprint"]]
    missing = [f is None for f in fingerprints]
    if "missing" in frame:
        missing = [bool(m) or f is None for m, f in zip(frame["missing"], fingerprints)]
    loaded = [i for i, m in enumerate(missing) if not m]
    final = fingerprints[loaded[-1]] if loaded else None
    same_prev, same_final, flags = [], [], []
    previous = None
    for i, fp in enumerate(fingerprints):
        if missing[i]:
            same_prev.append(False)
            same_final.append(False)
            flags.append("missing: could not be loaded")
            continue
        is_prev = previous is not None and fp == previous[1]
        is_final = loaded and i != loaded[-1] and fp == final
        reasons = []
        if is_prev:
            reasons.append(f"identical weights to the previous checkpoint {previous[0]}")
        if is_final:
            reasons.append("identical weights to the final checkpoint")
        same_prev.append(bool(is_prev))
        same_final.append(bool(is_final))
        flags.append("; ".join(reasons))
        previous = (frame["checkpoint"].iloc[i], fp)
    return pd.DataFrame({"checkpoint": frame["checkpoint"].astype(str), "fingerprint": fingerprints,
                         "commit": frame["commit"], "missing": missing, "same_as_previous": same_prev,
                         "same_as_final": same_final, "flag": flags})


# --------------------------------------------------------------------------- sweeps
@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded by :func:`iter_loaded` (``ok`` is True)."""

    checkpoint: object
    model: object
    tokenizer: object
    identity: dict
    ok: bool = True


@dataclass
class SkippedCheckpoint:
    """A checkpoint that could not be loaded (``ok`` is False); ``reason`` says why."""

    checkpoint: object
    reason: str
    ok: bool = False

    @property
    def identity(self) -> dict:
        return {"commit": None, "fingerprint": None}


def iter_loaded(checkpoints: Iterable, device: str = "auto", dtype=None, skip_missing: bool = True,
                progress: bool = False) -> Iterator[LoadedCheckpoint | SkippedCheckpoint]:
    """Load checkpoints one at a time; a missing one is skipped by name and the sweep goes on.

    Each model is released (:func:`triphase.models.loading.release`) when the
    consumer asks for the next one, so at most one is in memory.

    Parameters
    ----------
    checkpoints : iterable of Checkpoint
    device, dtype : see :func:`triphase.models.loading.load_checkpoint`
    skip_missing : bool
        Yield a :class:`SkippedCheckpoint` for a missing branch (else raise).
    progress : bool

    Yields
    ------
    LoadedCheckpoint or SkippedCheckpoint

    Examples
    --------
    >>> for item in iter_loaded(series.checkpoints):  # doctest: +SKIP
    ...     if not item.ok:
    ...         print("skipped", item.checkpoint.name, item.reason); continue
    ...     features = word_hidden_states(item.model, item.tokenizer, words)
    """

    checkpoints = list(checkpoints)
    if progress:
        checkpoints = tqdm(checkpoints, desc="checkpoints", unit="checkpoint")
    for ckpt in checkpoints:
        try:
            ensure_available(ckpt)
            model, tokenizer = load_checkpoint(ckpt, device=device, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless a missing branch
            reason = missing_reason(exc, ckpt) if skip_missing else None
            if reason is None:
                raise
            yield SkippedCheckpoint(ckpt, reason)
            continue
        try:
            yield LoadedCheckpoint(ckpt, model, tokenizer, checkpoint_identity(ckpt, model))
        finally:
            release(model)
            del model, tokenizer


def _identity_path(checkpoint) -> Path:
    return cache_dir("identity") / checkpoint.series / f"{checkpoint.name}-{stable_hash(checkpoint.to_dict())}.json"


def remember_identity(checkpoint, model) -> dict:
    """Compute :func:`checkpoint_identity` of a loaded model and cache it on disk."""

    identity = checkpoint_identity(checkpoint, model)
    write_json(identity, _identity_path(checkpoint))
    return identity


def identity_of(checkpoint, device: str = "auto", dtype=None) -> dict:
    """Commit and fingerprint of a checkpoint: from the on-disk cache, else by loading it once.

    Pipelines whose heavy results are cached (features, scores) call this so
    every results table carries ``commit`` and ``fingerprint`` without
    re-loading weights on every re-run.
    """
    path = _identity_path(checkpoint)
    if path.exists():
        return json.loads(path.read_text())

    model, _ = load_checkpoint(checkpoint, device=device, dtype=dtype)
    try:
        return remember_identity(checkpoint, model)
    finally:
        release(model)
