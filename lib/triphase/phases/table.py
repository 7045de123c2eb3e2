"""The cross-perspective alignment table: where each perspective's boundaries fall on one training axis.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from triphase.phases.boundaries import (
    BRAIN,
    INSTRUCTION,
    INTERNAL,
    JOIN_COLUMNS,
    OVERALL_TASK,
    SOLVING,
    SOLVING_METRICS,
    TASK_FLAT_BOUND,
    _axis,
    _nearest_checkpoint,
    _one_tier,
    _require,
    brain_curve,
    brain_phases,
    instruction_following_onset,
    internal_change_points,
    solving_phases,
)
from triphase.phases.piecewise import DEFAULT_N_BOOT, DEFAULT_N_NULL

#: Circular shifts of the boundaries used for the chance rate of overlaps.
DEFAULT_N_SHIFTS = 999


def alignment_table(brain_df: pd.DataFrame, tasks_df: pd.DataFrame | None = None,
                    internal_df: pd.DataFrame | None = None, threshold: float = 0.5,
                    score: str = "score_mean", region: str = "all", layer=None,
                    solving_metrics=SOLVING_METRICS, n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                    seed: int = 0, items_df: pd.DataFrame | None = None,
                    brain_replicates_df: pd.DataFrame | None = None, flat_bound: float | None = TASK_FLAT_BOUND,
                    **detect_kwargs) -> pd.DataFrame:
    """Phase boundaries of the three perspectives on one x axis, and whether they meet the brain's.

    Per series, x is :func:`log_tokens` over the union of the checkpoints of
    all three tables. Rows: the brain score's breakpoints (with bootstrap CIs,
    the curve's pattern, pattern_stability, p_monotone and triple label), the
    onset of instruction following (:func:`instruction_following_onset`),
    stagnation and consolidation of each solving metric after the pooled
    onset (:func:`solving_phases`; task items resampled jointly when
    ``items_df`` is given) and the internal measures' largest changes
    (:func:`internal_change_points`). With ``brain_replicates_df`` the brain
    curve uses the joint replicates (``replicates="joint"``).
    ``overlaps_brain`` says whether a boundary's [ci_low, ci_high] intersects
    any brain breakpoint's CI of the same series (NA for brain rows and for
    boundaries not found); ``nearest_brain_x`` is the closest brain
    breakpoint. ``checkpoint``, ``step`` and ``tokens_seen`` name the
    checkpoint nearest the boundary; ``boundary_tokens = 10 ** x``.

    Returns
    -------
    DataFrame
        Ready to be written as ``phases.parquet``.
    """
    _require(brain_df, JOIN_COLUMNS, "brain")
    columns = ["series", "tier", "perspective", "source", "boundary", "found", "x", "ci_low", "ci_high",
               "boundary_tokens", "checkpoint", "step", "tokens_seen", "overlaps_brain", "nearest_brain_x",
               "dataset", "subject", "pattern", "pattern_stability", "p_monotone", "triple", "plateau",
               "replicates"]
    out = []
    for series, brows in brain_df.groupby("series", sort=True):
        trows = tasks_df[tasks_df["series"] == series] if tasks_df is not None else None
        irows = internal_df[internal_df["series"] == series] if internal_df is not None else None
        axis = _axis(brows, trows, irows)
        x_of = dict(zip(axis["checkpoint"], axis["x"]))
        tier = _one_tier(brows, "brain")
        series_rows = []
        group_keys = [c for c in ("dataset", "subject") if c in brows.columns]
        groups = brows.groupby(group_keys, sort=True) if group_keys else [((), brows)]
        for key, grows in groups:
            key = key if isinstance(key, tuple) else (key,)
            ident = dict(zip(group_keys, key))
            curve = brain_curve(grows, score=score, region=region, layer=layer)
            x = np.array([x_of[c] for c in curve["checkpoint"]])
            brain_options = dict(detect_kwargs)
            if brain_replicates_df is not None:
                brain_options.update(replicates="joint", replicates_df=brain_replicates_df)
            result = brain_phases(grows, score=score, region=region, layer=layer, n_boot=n_boot, seed=seed, x=x,
                                  n_null=n_null, **brain_options)
            for bp in result.breakpoint_frame().itertuples():
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": f"breakpoint {bp.breakpoint} ({bp.transition})", "found": True,
                                    "x": bp.x, "ci_low": bp.ci_low, "ci_high": bp.ci_high,
                                    "dataset": ident.get("dataset"), "subject": ident.get("subject"),
                                    "pattern": result.pattern, "pattern_stability": result.pattern_stability,
                                    "p_monotone": result.p_monotone, "triple": result.triple,
                                    "replicates": result.bootstrap})
            if result.n_breakpoints == 0:
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": "no breakpoint", "found": False, "x": np.nan, "ci_low": np.nan,
                                    "ci_high": np.nan, "dataset": ident.get("dataset"),
                                    "subject": ident.get("subject"), "pattern": result.pattern,
                                    "pattern_stability": result.pattern_stability, "p_monotone": result.p_monotone,
                                    "triple": result.triple, "replicates": result.bootstrap})
        if trows is not None and len(trows):
            onset_x = None
            if (trows["metric"] == "instruction_following").any():
                onset = instruction_following_onset(trows, threshold=threshold)
                for r in onset.itertuples():
                    series_rows.append({"perspective": INSTRUCTION, "source": r.task,
                                        "boundary": f"onset (CI low > {threshold:g})", "found": r.found,
                                        "x": r.x, "ci_low": r.ci_low, "ci_high": r.ci_high})
                pooled = onset[onset["task"] == OVERALL_TASK]
                onset_x = float(pooled["x"].iloc[0]) if len(pooled) else None
            series_items = None
            if items_df is not None:
                series_items = items_df[items_df["series"] == series] if "series" in items_df else items_df
            for metric in solving_metrics:
                if not (trows["metric"] == metric).any():
                    continue
                solving = solving_phases(trows, metric=metric, items_df=series_items, onset_x=onset_x,
                                         flat_bound=flat_bound, n_boot=n_boot, seed=seed, **detect_kwargs)
                for r in solving.itertuples():
                    series_rows.append({"perspective": SOLVING, "source": f"{r.task} ({metric})",
                                        "boundary": r.boundary, "found": r.found, "x": r.x,
                                        "ci_low": r.ci_low, "ci_high": r.ci_high, "plateau": r.plateau,
                                        "replicates": r.replicates})
        if irows is not None and len(irows):
            for r in internal_change_points(irows).itertuples():
                series_rows.append({"perspective": INTERNAL, "source": f"{r.measure} (layer {r.layer})",
                                    "boundary": r.boundary, "found": r.found, "x": r.x,
                                    "ci_low": r.ci_low, "ci_high": r.ci_high})
        brain_ci = [(r["ci_low"], r["ci_high"], r["x"]) for r in series_rows
                    if r["perspective"] == BRAIN and r["found"]]
        for r in series_rows:
            r.update(series=series, tier=tier, boundary_tokens=10.0 ** r["x"] if np.isfinite(r["x"]) else np.nan,
                     **_nearest_checkpoint(axis, r["x"]))
            if r["perspective"] == BRAIN or not r["found"] or not brain_ci:
                r["overlaps_brain"], r["nearest_brain_x"] = pd.NA, (np.nan if not brain_ci else
                                                                   min((b[2] for b in brain_ci),
                                                                       key=lambda b: abs(b - r["x"]))
                                                                   if np.isfinite(r["x"]) else np.nan)
            else:
                # a boundary without a finite CI (e.g. n_boot=0) is compared as a point
                low = r["ci_low"] if np.isfinite(r["ci_low"]) else r["x"]
                high = r["ci_high"] if np.isfinite(r["ci_high"]) else r["x"]
                r["overlaps_brain"] = any(
                    (low <= (bh if np.isfinite(bh) else bx)) and ((bl if np.isfinite(bl) else bx) <= high)
                    for bl, bh, bx in brain_ci)
                r["nearest_brain_x"] = min((b[2] for b in brain_ci), key=lambda b: abs(b - r["x"]))
        out.extend(series_rows)
    frame = pd.DataFrame(out).reindex(columns=columns)
    frame["overlaps_brain"] = frame["overlaps_brain"].astype("boolean")
    frame["found"] = frame["found"].astype(bool)
    for name in ("dataset", "subject", "source", "boundary", "checkpoint", "perspective"):
        frame[name] = frame[name].astype(object)
    return frame


def _overlap_count(intervals: np.ndarray, brain: np.ndarray) -> int:
    """How many of ``intervals`` (m, 2) meet some interval of ``brain`` (b, 2)."""
    meets = (intervals[:, None, 0] <= brain[None, :, 1]) & (brain[None, :, 0] <= intervals[:, None, 1])
    return int(meets.any(axis=1).sum())


def overlap_chance(boundaries, brain_intervals, x_range, n_shifts: int = DEFAULT_N_SHIFTS) -> dict:
    """Observed overlaps of boundary intervals with brain intervals, against circular shifts of the boundaries.

    Every boundary interval is shifted by the same distance ``d`` along the
    axis ``[x_min, x_max]``, wrapping around at the end (widths and spacing
    kept), for ``n_shifts`` equally spaced ``d``; the chance rate is the mean
    share of boundaries meeting a brain interval over the shifts, and
    ``p_value`` the share of shifts with at least the observed count (the
    unshifted position included). Wide brain intervals give a high chance
    rate, which is what makes "meets a brain interval" weak evidence.

    Parameters
    ----------
    boundaries, brain_intervals : array-like, shape (m, 2) and (b, 2)
        [low, high] of each interval (a point is [x, x]).
    x_range : (float, float)
        The axis the boundaries can fall on.

    Returns
    -------
    dict
        n_boundaries, observed, observed_rate, chance_rate, p_value, n_shifts.

    Examples
    --------
    >>> out = overlap_chance([[1.0, 1.2]], [[1.1, 1.3]], (0.0, 10.0), n_shifts=99)
    >>> out["observed"], round(out["chance_rate"], 2)  # closed form: (0.2 + 0.2) / 10
    (1, 0.04)
    """
    intervals = np.asarray(boundaries, dtype=float).reshape(-1, 2)
    brain = np.asarray(brain_intervals, dtype=float).reshape(-1, 2)
    low, high = map(float, x_range)
    if not high > low:
        raise ValueError(f"x_range must have x_max > x_min, got {x_range}")
    if n_shifts < 1:
        raise ValueError(f"n_shifts must be >= 1, got {n_shifts}")
    n = len(intervals)
    observed = _overlap_count(intervals, brain) if n and len(brain) else 0
    if n == 0 or len(brain) == 0:
        return {"n_boundaries": n, "observed": observed, "observed_rate": np.nan, "chance_rate": np.nan,
                "p_value": np.nan, "n_shifts": n_shifts}
    length = high - low
    counts = []
    for shift in np.arange(1, n_shifts + 1) * length / (n_shifts + 1):
        start = low + np.mod(intervals[:, 0] + shift - low, length)
        moved = np.column_stack([start, start + (intervals[:, 1] - intervals[:, 0])])
        wrapped = moved - length                       # the part that wrapped past x_max re-enters at x_min
        meets = np.maximum.reduce([
            (moved[:, None, 0] <= brain[None, :, 1]) & (brain[None, :, 0] <= moved[:, None, 1]),
            (wrapped[:, None, 0] <= brain[None, :, 1]) & (brain[None, :, 0] <= wrapped[:, None, 1])])
        counts.append(int(meets.any(axis=1).sum()))
    counts = np.array(counts)
    return {"n_boundaries": n, "observed": observed, "observed_rate": observed / n,
            "chance_rate": float(counts.mean() / n), "p_value": float((1 + np.sum(counts >= observed)) / (1 + n_shifts)),
            "n_shifts": n_shifts}


def table_overlap_chance(phases: pd.DataFrame, x_range, n_shifts: int = DEFAULT_N_SHIFTS) -> dict:
    """:func:`overlap_chance` for the found non-brain boundaries of an alignment table (one series).

    Boundaries without a finite interval are compared as points.
    """
    found = phases[(phases["perspective"] != BRAIN) & phases["found"].astype(bool)]
    brain = phases[(phases["perspective"] == BRAIN) & phases["found"].astype(bool)]
    return overlap_chance(_interval_bounds(found), _interval_bounds(brain), x_range, n_shifts)


def _interval_bounds(rows: pd.DataFrame) -> np.ndarray:
    """[ci_low, ci_high] of table rows, the point x where a bound is not finite; shape (n_rows, 2)."""
    low = rows["ci_low"].where(np.isfinite(rows["ci_low"].astype(float)), rows["x"]).astype(float)
    high = rows["ci_high"].where(np.isfinite(rows["ci_high"].astype(float)), rows["x"]).astype(float)
    return np.column_stack([low, high])


#: Columns of :func:`boundary_agreement`.
AGREEMENT_COLUMNS = ["perspective", "source", "boundary", "n_models", "n_found", "x_values", "common_low",
                     "common_high", "agree"]


def boundary_agreement(phases_df: pd.DataFrame, by: str = "series") -> pd.DataFrame:
    """Which phase boundaries agree across models (e.g. training seeds of one organism).

    A boundary (perspective, source, boundary name) *agrees* when every model
    found it and all their intervals share at least one point (the common
    interval ``[max ci_low, min ci_high]`` is not empty; a boundary without an
    interval counts as its point ``x``). Brain breakpoints are
    matched by their name, i.e. their order and transition (``breakpoint 1
    (rising -> falling)``), so a model with another number of breakpoints, or
    another transition, disagrees.

    Parameters
    ----------
    phases_df : DataFrame
        Rows of several models' :func:`alignment_table` (``phases.parquet``).
    by : str
        Column naming the model (``"series"``: one seed per series).

    Returns
    -------
    DataFrame
        Columns :data:`AGREEMENT_COLUMNS`, one row per boundary.

    Examples
    --------
    >>> rows = pd.DataFrame({"series": ["a", "b", "a", "b"], "perspective": "brain", "source": "score",
    ...                      "boundary": ["breakpoint 1"] * 2 + ["breakpoint 2"] * 2, "found": True,
    ...                      "x": [5.0, 5.2, 6.0, 7.5], "ci_low": [4.8, 5.1, 5.8, 7.2], "ci_high": [5.3, 5.5, 6.3, 7.9]})
    >>> boundary_agreement(rows)[["boundary", "n_found", "common_low", "common_high", "agree"]].values.tolist()
    [['breakpoint 1', 2, 5.1, 5.3, True], ['breakpoint 2', 2, 7.2, 6.3, False]]
    """
    _require(phases_df, [by, "perspective", "source", "boundary", "found", "x", "ci_low", "ci_high"], "phases")
    n_models = phases_df[by].nunique()
    out = []
    for (perspective, source, boundary), rows in phases_df.groupby(["perspective", "source", "boundary"], sort=True):
        found = rows[rows["found"].astype(bool)]
        bounds = _interval_bounds(found)  # a boundary without an interval counts as its point x
        low = float(bounds[:, 0].max()) if len(found) else np.nan
        high = float(bounds[:, 1].min()) if len(found) else np.nan
        n_found = int(found[by].nunique())
        out.append({"perspective": perspective, "source": source, "boundary": boundary, "n_models": n_models,
                    "n_found": n_found, "x_values": ", ".join(f"{x:.2f}" for x in found["x"]),
                    "common_low": low, "common_high": high,
                    "agree": bool(n_found == n_models and np.isfinite(low) and low <= high)})
    return pd.DataFrame(out, columns=AGREEMENT_COLUMNS)
