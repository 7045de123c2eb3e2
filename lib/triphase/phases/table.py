"""The cross-perspective alignment table: where each perspective's boundaries fall on one training axis.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from triphase.phases.boundaries import (
    ACCURACY,
    BRAIN,
    INSTRUCTION,
    INTERNAL,
    JOIN_COLUMNS,
    _axis,
    _nearest_checkpoint,
    _one_tier,
    _require,
    accuracy_phases,
    brain_curve,
    brain_phases,
    instruction_following_onset,
    internal_change_points,
)
from triphase.phases.piecewise import DEFAULT_N_BOOT, DEFAULT_N_NULL

#: Most breakpoints the model search considers by default (the design's 0-4).


def alignment_table(brain_df: pd.DataFrame, tasks_df: pd.DataFrame | None = None,
                    internal_df: pd.DataFrame | None = None, threshold: float = 0.5,
                    score: str = "score_mean", region: str = "all", layer=None,
                    accuracy_metric: str = "accuracy", n_boot: int = DEFAULT_N_BOOT, n_null: int = DEFAULT_N_NULL,
                    seed: int = 0, **detect_kwargs) -> pd.DataFrame:
    """Phase boundaries of the three perspectives on one x axis, and whether they meet the brain's.

    Per series, x is :func:`log_tokens` over the union of the checkpoints of
    all three tables. Rows: the brain score's breakpoints (with bootstrap CIs,
    the curve's pattern, pattern_share and p_monotone), the onset of
    instruction following (:func:`instruction_following_onset`), accuracy
    stagnation and consolidation (:func:`accuracy_phases`) and the internal
    measures' largest changes (:func:`internal_change_points`).
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
               "dataset", "subject", "pattern", "pattern_share", "p_monotone"]
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
            result = brain_phases(grows, score=score, region=region, layer=layer, n_boot=n_boot, seed=seed, x=x,
                                  n_null=n_null, **detect_kwargs)
            for bp in result.breakpoint_frame().itertuples():
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": f"breakpoint {bp.breakpoint} ({bp.transition})", "found": True,
                                    "x": bp.x, "ci_low": bp.ci_low, "ci_high": bp.ci_high,
                                    "dataset": ident.get("dataset"), "subject": ident.get("subject"),
                                    "pattern": result.pattern, "pattern_share": result.pattern_share,
                                    "p_monotone": result.p_monotone})
            if result.n_breakpoints == 0:
                series_rows.append({"perspective": BRAIN, "source": f"{score} ({region})",
                                    "boundary": "no breakpoint", "found": False, "x": np.nan, "ci_low": np.nan,
                                    "ci_high": np.nan, "dataset": ident.get("dataset"),
                                    "subject": ident.get("subject"), "pattern": result.pattern,
                                    "pattern_share": result.pattern_share, "p_monotone": result.p_monotone})
        if trows is not None and len(trows):
            if (trows["metric"] == "instruction_following").any():
                onset = instruction_following_onset(trows, threshold=threshold)
                for r in onset.itertuples():
                    series_rows.append({"perspective": INSTRUCTION, "source": r.task,
                                        "boundary": f"onset (CI low > {threshold:g})", "found": r.found,
                                        "x": r.x, "ci_low": r.ci_low, "ci_high": r.ci_high})
            if (trows["metric"] == accuracy_metric).any():
                acc = accuracy_phases(trows, metric=accuracy_metric, n_boot=n_boot, seed=seed, **detect_kwargs)
                for r in acc.itertuples():
                    series_rows.append({"perspective": ACCURACY, "source": f"{r.task} ({accuracy_metric})",
                                        "boundary": r.boundary, "found": r.found, "x": r.x,
                                        "ci_low": r.ci_low, "ci_high": r.ci_high})
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
