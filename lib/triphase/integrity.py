"""Checkpoint integrity inside the sweeps: missing branches skipped by name, identities in every table.

Public checkpoint branches are known to be missing or to serve the wrong
weights (Pythia's issue tracker reports step0 identical to step1, branches
serving final-era weights). Every perspective's sweep therefore

* goes on when a checkpoint's branch is missing (:func:`missing_reason` tells a
  missing branch from any other error, which still stops the run), and reports
  it by name;
* adds to its results table, per checkpoint, the resolved ``commit``, the weight
  ``fingerprint`` (:func:`triphase.hub.identity_of`, cached on disk so re-runs do
  not reload weights) and ``integrity_flag`` (:func:`triphase.hub.integrity_flags`:
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

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import pandas as pd

from ._io import write_parquet

#: Columns every perspective's results table gains.
IDENTITY_COLUMNS = ("commit", "fingerprint", "integrity_flag")


class MissingCheckpointWarning(UserWarning):
    """A checkpoint's branch is missing; the sweep goes on without it."""


def missing_reason(exc: BaseException, checkpoint) -> str | None:
    """A readable reason when ``exc`` says the checkpoint's branch/files are missing, else None."""
    from .hub import _is_missing_revision_error

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
    from .hub import identity_of, integrity_flags

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
